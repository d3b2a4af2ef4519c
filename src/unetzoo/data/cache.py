"""Preprocessed cases cached on disk per dataset and plan (MONAI ``PersistentDataset``), like nnU-Net's
preprocessed folder: another run on the same data and plan (another fold, another model), a ``--resume`` and the
final validation read the resampled cases instead of computing them again.

The cache lives in ``config.data.cache_dir`` (default ``$UNETZOO_CACHE``, else ``~/.cache/unetzoo``), one folder
per plan and preprocessing code (a hash of ``plan.json`` and of the reading and transform modules' source), one
file per case (or 3D+t frame) named by a hash of its files' paths, sizes and modification times: a case whose files change is
preprocessed again. Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from multiprocessing.pool import ThreadPool
from pathlib import Path

from monai.data import PersistentDataset

from unetzoo import io
from unetzoo.data import transforms
from unetzoo.data.plan import Plan
from unetzoo.data.transforms import preprocessing
from unetzoo.errors import DISK_FULL, file_error

LOADED_KEYS = ("image", "label", "frame_index", "num_frames")  # what preprocessing reads (LoadCased)


def cache_root(configured: str = "") -> Path:
    """The cache folder: the configured one, else ``$UNETZOO_CACHE``, else ``~/.cache/unetzoo``."""
    return Path(configured or os.environ.get("UNETZOO_CACHE") or Path.home() / ".cache" / "unetzoo").expanduser()


def plan_folder(plan: Plan, root: Path) -> Path:
    """The sub-folder of ``root`` for cases preprocessed with ``plan`` by this preprocessing code."""
    key = hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode())
    for module in (io, transforms):
        key.update(Path(module.__file__).read_bytes())
    return root / f"plan_{key.hexdigest()[:16]}"


def files_hash(item: dict) -> bytes:
    """Hash of what a case's preprocessing reads: path, size and modification time of every image and label
    file, and the frame of a 3D+t case."""
    paths = [*item["image"], *([item["label"]] if "label" in item else [])]
    stats = [(str(Path(p).resolve()), st.st_size, st.st_mtime_ns) for p in paths for st in [os.stat(p)]]
    return (
        hashlib.sha256(json.dumps([stats, item.get("frame_index"), item.get("num_frames")]).encode())
        .hexdigest()
        .encode()
    )


def preprocessed_cases(items: list[dict], plan: Plan, root: Path, workers: int = 0) -> list[dict]:
    """``items`` (``{"image": [files], "label": file, ...}``) preprocessed with ``plan``: read from the disk cache
    under ``root`` when there, else computed and stored; the items' other keys are kept."""
    folder = plan_folder(plan, root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(
            folder,
            f"cannot create the preprocessing cache ({exc.strerror}); choose another with --set data.cache_dir=DIR",
        ) from None
    disk = PersistentDataset(
        [{k: item[k] for k in LOADED_KEYS if k in item} for item in items],
        preprocessing(plan),
        cache_dir=folder,
        hash_func=files_hash,
        track_meta=True,
        weights_only=False,
    )
    try:
        if workers > 0:
            with ThreadPool(workers) as pool:
                cases = pool.map(disk.__getitem__, range(len(items)))
        else:
            cases = [disk[i] for i in range(len(items))]
    except (OSError, RuntimeError) as exc:
        if not _write_failed(exc):
            raise
        raise file_error(
            folder,
            f"cannot write the preprocessing cache ({_reason(exc)}); MONAI writes each case to {tempfile.gettempdir()} "
            "first: free some space there and here, or choose another cache with --set data.cache_dir=DIR",
        ) from None
    return [{**item, **case} for item, case in zip(items, cases)]


def _write_failed(exc: BaseException) -> bool:
    """A full disk under the cache: the system's ENOSPC, or torch's file writer (inline_container.cc), which reports
    any failed write as a RuntimeError of its own."""
    return exc.errno in DISK_FULL if isinstance(exc, OSError) else "inline_container" in str(exc)


def _reason(exc: BaseException) -> str:
    return (
        "the disk is full"
        if isinstance(exc, OSError)
        else f"torch's file writer failed, as on a full disk: {str(exc).strip()[:80]}"
    )
