"""Preprocessed cases cached on disk per dataset and plan, like nnU-Net's preprocessed folder: another run on the
same data and plan (another fold, another model), a ``--resume`` and the final validation read the resampled cases
instead of computing them again.

The cache lives in ``config.data.cache_dir`` (default ``$UNETZOO_CACHE``, else ``~/.cache/unetzoo``), one folder
per plan and preprocessing code (a hash of ``plan.json`` and of the reading and transform modules' source), one
file per case (or 3D+t frame) named by a hash of its files' paths and contents: a case whose files change is
preprocessed again, even when its size and modification time are kept. An entry is written under a temporary name
and renamed, so a full disk or a killed run leaves no partial entry; an entry that cannot be read (damaged by hand,
or by an older version) is preprocessed again and rewritten, with a warning; a cache folder that cannot be created or
written is done without, with a warning. Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from multiprocessing.pool import ThreadPool
from pathlib import Path

import torch
from monai.transforms.utils import reset_ops_id

from unetzoo import io
from unetzoo.data import transforms
from unetzoo.data.datasets import file_digest
from unetzoo.data.plan import Plan
from unetzoo.data.transforms import preprocessing
from unetzoo.errors import DISK_FULL, file_error

log = logging.getLogger(__name__)

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


def files_hash(item: dict, digests: dict[str, str]) -> str:
    """Hash of what a case's preprocessing reads: path and content of every image and label file (``digests``: the
    SHA-256 of each, by resolved path), and the frame of a 3D+t case."""
    files = [(path, digests[path]) for path in _files(item)]
    return hashlib.sha256(json.dumps([files, item.get("frame_index"), item.get("num_frames")]).encode()).hexdigest()


def _files(item: dict) -> list[str]:
    return [str(Path(p).resolve()) for p in [*item["image"], *([item["label"]] if "label" in item else [])]]


def preprocessed_cases(items: list[dict], plan: Plan, root: Path, workers: int = 0) -> list[dict]:
    """``items`` (``{"image": [files], "label": file, ...}``) preprocessed with ``plan``: read from the disk cache
    under ``root`` when there, else computed and stored; the items' other keys are kept. ``workers`` threads."""
    cache = _DiskCache(plan_folder(plan, root), preprocessing(plan))
    loaded = [{k: item[k] for k in LOADED_KEYS if k in item} for item in items]
    pool = ThreadPool(workers) if workers > 0 else None
    each = pool.map if pool else lambda function, args: list(map(function, args))
    try:
        paths = sorted({path for item in loaded for path in _files(item)})  # each file read once, whatever its frames
        digests = dict(zip(paths, each(file_digest, paths)))
        cases = each(lambda item: cache.case(item, files_hash(item, digests)), loaded)
    except (OSError, RuntimeError) as exc:
        if not _write_failed(exc):
            raise
        raise file_error(
            cache.folder,
            f"cannot write the preprocessing cache ({_reason(exc)}): free some space there, or choose another cache "
            "with --set data.cache_dir=DIR",
        ) from None
    finally:
        if pool:
            pool.terminate()
    return [{**item, **case} for item, case in zip(items, cases)]


class _DiskCache:
    """One plan's folder of preprocessed cases; ``folder`` None: no cache (it could not be created)."""

    def __init__(self, folder: Path, transform):
        self.folder, self.transform, self.lock = folder, transform, threading.Lock()
        self.writable = True
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._without(exc)
        else:
            io.remove_leftovers(folder)  # the temporary entries of a killed run

    def case(self, item: dict, key: str) -> dict:
        """The preprocessed ``item``: its entry when readable, else computed (and stored while the folder takes it)."""
        path = self.folder / f"{key}.pt"
        if path.is_file():
            try:
                return torch.load(path, weights_only=False)
            except Exception as exc:  # truncated, empty or otherwise damaged: a miss
                log.warning(
                    f"{path}: unreadable preprocessing cache entry ({type(exc).__name__}: {str(exc)[:80]}); "
                    "preprocessing the case again"
                )
        case = self.transform(item, threading=True)
        reset_ops_id(case)
        if self.writable:
            self._store(case, path)
        return case

    def _store(self, case: dict, path: Path) -> None:
        """``case`` written to a temporary name beside ``path`` (``io.remove_leftovers`` knows it), then renamed. The
        file is opened here, not by torch, whose writer says a failed open or write as a RuntimeError without errno."""
        tmp = path.with_name(f".tmp_{os.getpid()}_{threading.get_ident()}_{path.name}")
        try:
            with open(tmp, "wb") as file:
                torch.save(case, file)
            os.replace(tmp, path)
        except OSError as exc:
            if _write_failed(exc):
                raise
            self._without(exc)  # a read-only folder or file system
        finally:
            tmp.unlink(missing_ok=True)

    def _without(self, exc: OSError) -> None:
        with self.lock:
            if self.writable:
                log.warning(
                    f"{self.folder}: cannot write the preprocessing cache ({exc.strerror or type(exc).__name__}); "
                    "going on without it (choose another with --set data.cache_dir=DIR)"
                )
            self.writable = False


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
