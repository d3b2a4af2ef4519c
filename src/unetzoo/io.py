"""Reading and writing images: NIfTI for 3D and 3D+t, PNG (grey or RGB in one file) for 2D.

3D+t: a 4D NIfTI (X, Y, Z, T) of a 1-channel dataset is a sequence of T 3D frames sharing one affine
(:func:`case_frames`); readers take one frame (``frame=t``). In a C-channel dataset a 4D file holds the channels
(X, Y, Z, C) instead, as in the Medical Segmentation Decathlon.

Every reader checks what would otherwise surface later as a traceback (unreadable or truncated file,
NaN or infinite voxels) and raises :class:`UnetzooError` naming the file. Every writer writes to a
temporary name in the target folder and renames it, so a killed process never leaves a half-written file; a write
that fails (a full disk) removes its temporary file and is one line naming the file (:func:`unetzoo.errors.write_error`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetzoo.errors import UnetzooError, file_error, write_error

log = logging.getLogger(__name__)
NIFTI_ENDINGS = (".nii.gz", ".nii")
PNG_ENDINGS = (".png",)
SUPPORTED_ENDINGS = NIFTI_ENDINGS + PNG_ENDINGS
AFFINE_TOLERANCE_MM = 1e-3  # two voxel-to-world matrices that agree to this, entry by entry, are one grid


def file_ending(path: str | os.PathLike) -> str:
    """The image ending of ``path`` (``.nii.gz``, ``.nii`` or ``.png``); raises for anything else."""
    name = str(path).lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    raise file_error(path, f"unsupported file type (expected one of {', '.join(SUPPORTED_ENDINGS)})")


def strip_ending(path: str | os.PathLike) -> str:
    """File name without its image ending: ``case_0000.nii.gz`` -> ``case_0000``."""
    name = Path(path).name
    return name[: len(name) - len(file_ending(name))]


@dataclass
class Image:
    """An image as arrays plus the geometry needed to write a result back exactly.

    ``array`` is channel-first ``(C, *spatial)`` for images and ``(*spatial)`` for label maps.
    ``affine`` is the 4x4 voxel-to-world matrix (identity for PNG). ``header`` is the NIfTI header
    of the file (``None`` for PNG) so that outputs keep it.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    header: object = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[-self.spatial_dims :])

    @property
    def spatial_dims(self) -> int:
        return 2 if file_ending(self.path) in PNG_ENDINGS else 3

    @property
    def spacing(self) -> tuple[float, ...]:
        return voxel_spacing(self.affine, self.spatial_dims)


def voxel_spacing(affine: np.ndarray, spatial_dims: int = 3) -> tuple[float, ...]:
    """Voxel size along each array axis, read from the columns of the affine."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :spatial_dims], axis=0))


_warned: set[tuple[str, str]] = set()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _load_nifti(path: Path):
    """``nib.load``, with the header fixes nibabel logs without a file name (zero or negative pixdim) re-logged
    as a warning naming ``path``."""
    import nibabel as nib

    logger, collect = logging.getLogger("nibabel.global"), _Collect()
    handlers, propagate = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [collect], False
    try:
        return nib.load(str(path))
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        for message in collect.messages:
            if (str(path), message) not in _warned:  # once per file, though headers are read more than once
                _warned.add((str(path), message))
                log.warning(f"{path}: {message}")


def check_affine(path, affine: np.ndarray, spatial_dims: int = 3) -> None:
    """A voxel-to-world matrix with a zero or non-finite voxel size (or a singular one) makes spacing, resampling
    and surface distances meaningless: a one-line error naming the file."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(matrix[:, :spatial_dims], axis=0)
    if not np.all(np.isfinite(affine)) or np.any(spacing < 1e-6) or abs(np.linalg.det(matrix)) < 1e-12:
        raise file_error(
            path,
            f"the affine (sform/qform) has zero or invalid voxel spacing {[round(float(s), 6) for s in spacing]}: fix the header",
        )


def _read_nifti(path: Path, frame: int | None = None) -> tuple[np.ndarray, np.ndarray, object]:
    try:
        img = _load_nifti(path)
        if frame is not None and (len(img.shape) != 4 or not 0 <= frame < img.shape[3]):
            raise file_error(path, f"has no time frame {frame} (shape {img.shape}; a 3D+t image is X, Y, Z, T)")
        data = np.asarray(img.dataobj if frame is None else img.dataobj[..., frame], dtype=np.float32)
    except UnetzooError:
        raise
    except FileNotFoundError:
        raise file_error(path, "file not found") from None
    except Exception as exc:  # nibabel raises many types for truncated/corrupt files
        raise file_error(
            path, f"cannot read NIfTI file ({type(exc).__name__}: {exc}); the file is corrupt or truncated"
        ) from None
    affine = np.asarray(img.affine, dtype=np.float64)
    check_affine(path, affine)
    return data, affine, img.header


def _read_png(path: Path, label: bool = False) -> np.ndarray:
    """A PNG as an array: colours for an image; for a ``label`` map stored with a palette (mode P, the common way
    label PNGs are saved), its indices, which are the label values."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as pil:
            pil.load()
            if pil.mode in ("RGBA", "LA", "P", "CMYK") and not (label and pil.mode == "P"):
                pil = pil.convert("RGB" if pil.mode != "LA" else "L")
            data = np.asarray(pil)
    except FileNotFoundError:
        raise file_error(path, "file not found") from None
    except Exception as exc:
        raise file_error(
            path, f"cannot read PNG file ({type(exc).__name__}: {exc}); the file is corrupt or truncated"
        ) from None
    return data.astype(np.float32)


def case_frames(paths: list[str | os.PathLike], channels: int) -> int:
    """Time frames of a case (header only): T for a 1-channel case stored as one 4D NIfTI (X, Y, Z, T), else 1
    (a 3D or 2D image; a 4D file of a C-channel dataset holds channels, see the module docstring)."""
    if channels != 1 or len(paths) != 1 or file_ending(paths[0]) not in NIFTI_ENDINGS:
        return 1
    _check_openable(paths[0])
    try:
        shape = _load_nifti(Path(paths[0])).shape
    except FileNotFoundError:
        raise file_error(paths[0], "file not found") from None
    except Exception as exc:
        raise file_error(paths[0], f"cannot read NIfTI header ({type(exc).__name__}: {exc})") from None
    return int(shape[3]) if len(shape) == 4 else 1


def label_frames(path: str | os.PathLike) -> int:
    """Time frames of a label map (header only): T for a 4D NIfTI (labels never have channels), else 1."""
    return case_frames([path], 1)


def _check_openable(path) -> None:
    """nibabel and PIL report any failure to open as a corrupt file: say what is wrong first (permissions ...)."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise file_error(path, "file not found") from None
    except OSError as exc:
        raise file_error(path, f"cannot open the file ({exc.strerror or type(exc).__name__})") from None


def read_array(
    path: str | os.PathLike, frame: int | None = None, label: bool = False
) -> tuple[np.ndarray, np.ndarray, object]:
    """Read one file as ``(data, affine, header)``; data is spatial-first (channels, if any, last). ``frame`` t
    reads only frame t of a 4D NIfTI (X, Y, Z, T); ``label``: a palette PNG gives its indices, not its colours."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, "file not found")
    _check_openable(path)
    if file_ending(path) in NIFTI_ENDINGS:
        data, affine, header = _read_nifti(path, frame)
    elif frame is not None:
        raise file_error(path, "a PNG has no time frames")
    else:
        data, affine, header = _read_png(path, label), np.eye(4), None
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise file_error(path, f"contains {bad} NaN or infinite voxel(s)")
    return data, affine, header


def read_image(
    paths: list[str | os.PathLike] | str | os.PathLike, spatial_dims: int | None = None, frame: int | None = None
) -> Image:
    """Read one case's image as channel-first ``(C, *spatial)``.

    ``paths`` is one file per channel (nnU-Net ``CASE_0000``, ``CASE_0001`` ...) or a single file whose
    extra trailing axis holds the channels (MSD 4D NIfTI, RGB PNG). All channel files must share one shape.
    ``frame`` t reads frame t of a 3D+t image (one 4D file (X, Y, Z, T) per channel).
    """
    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    channels, affine, header = [], None, None
    for path in paths:
        data, file_affine, file_header = read_array(path, frame)
        dims = spatial_dims or (2 if file_ending(path) in PNG_ENDINGS else 3)
        if data.ndim == dims:
            data = data[None]
        elif data.ndim == dims + 1:
            data = np.moveaxis(data, -1, 0)
        else:
            raise file_error(
                path, f"expected a {dims}D image (optionally with channels), got an array of shape {data.shape}"
            )
        if channels and data.shape[1:] != channels[0].shape[1:]:
            raise file_error(
                path, f"shape {data.shape[1:]} differs from the first channel's shape {channels[0].shape[1:]}"
            )
        channels.append(data)
        if affine is None:
            affine, header = file_affine, file_header
    return Image(np.concatenate(channels, axis=0), affine, paths[0], header)


def read_label(path: str | os.PathLike, spatial_dims: int | None = None, frame: int | None = None) -> Image:
    """Read a label map as integers ``(*spatial)`` (``frame`` t: frame t of a 4D label map (X, Y, Z, T); a palette
    PNG: its indices); non-integer values are an error."""
    path = Path(path)
    data, affine, header = read_array(path, frame, label=True)
    return _label_image(data, affine, path, header, spatial_dims)


def read_label_frames(path: str | os.PathLike, spatial_dims: int | None = None) -> list[Image]:
    """Every frame of a label map, the file read once: ``[label]`` for a 2D or 3D map, T 3D maps sharing one
    affine for a 4D NIfTI (X, Y, Z, T)."""
    path = Path(path)
    data, affine, header = read_array(path, label=True)
    if data.ndim != 4 or file_ending(path) not in NIFTI_ENDINGS:
        return [_label_image(data, affine, path, header, spatial_dims)]
    return [_label_image(data[..., t], affine, path, header, spatial_dims) for t in range(data.shape[-1])]


def _label_image(data: np.ndarray, affine: np.ndarray, path: Path, header, spatial_dims: int | None) -> Image:
    dims = spatial_dims or (2 if file_ending(path) in PNG_ENDINGS else 3)
    if data.ndim == dims + 1 and file_ending(path) in PNG_ENDINGS:
        data = data[..., 0]  # an RGB-saved mask: the channels are copies
    if data.ndim != dims:
        raise file_error(path, f"expected a {dims}D label map, got an array of shape {data.shape}")
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise file_error(path, "label map has non-integer values")
    return Image(rounded.astype(np.int16), affine, path, header)


def output_folder(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` if needed and check that it can be written, so that a command fails before
    its work, with one line naming the folder, instead of at its first write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise file_error(path, "exists and is not a folder: give a folder for the outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(path, f"cannot create the output folder ({exc.strerror or type(exc).__name__})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise file_error(path, "the output folder is not writable")
    return path


LEFTOVER_AGE_S = 3600  # a temporary file this old is a leftover even if its pid is running (a reused pid)


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.tmp_<pid>_*``) that a killed write left in ``folder``; returns them. A file
    whose process still runs (another command writing into the same folder) stays, unless it is over an hour old."""
    leftovers = []
    for path in sorted(Path(folder).glob(".tmp_*")):
        pid = path.name.split("_")[1]
        try:
            if _running(pid) and time.time() - path.stat().st_mtime < LEFTOVER_AGE_S:
                continue
            path.unlink()
        except FileNotFoundError:  # its writer renamed it meanwhile
            continue
        leftovers.append(path)
    return leftovers


def _running(pid: str) -> bool:
    if not pid.isdigit() or int(pid) == 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _atomic_target(out_path: Path):
    """An empty temporary file beside ``out_path`` (same folder, so the final rename is atomic), with the
    permissions a plainly created file would get (mkstemp makes it private)."""
    output_folder(out_path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp_{os.getpid()}_", suffix="_" + out_path.name, dir=out_path.parent)
    except OSError as exc:
        raise write_error(out_path, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def write_array(data: np.ndarray, out_path: str | os.PathLike, affine: np.ndarray | None = None, header=None) -> Path:
    """Write ``data`` (spatial-first) to NIfTI or PNG according to the ending, atomically. A NIfTI ``header`` (the
    input's) is kept whole, qform and sform with their codes, when ``affine`` is its own."""
    out_path = Path(out_path)
    tmp = _atomic_target(out_path)  # same folder, same ending: the rename is atomic
    try:
        if file_ending(out_path) in NIFTI_ENDINGS:
            import nibabel as nib

            affine = affine if affine is not None else np.eye(4)
            img = nib.Nifti1Image(data, affine, header=header.copy() if header is not None else None)
            img.set_data_dtype(data.dtype)
            img.header.set_slope_inter(1, 0)  # labels/probabilities are stored unscaled
            if header is not None and not np.allclose(affine, header.get_best_affine(), rtol=0, atol=1e-6):
                # another grid than the header's (--upsample): the new affine in both forms, with the header's codes;
                # on the header's own grid its qform and sform (and codes) stay as they are, however they differ
                img.set_qform(affine, code=int(header["qform_code"]) or 1)
                img.set_sform(affine, code=int(header["sform_code"]) or 1)
            nib.save(img, str(tmp))
        else:
            from PIL import Image as PILImage

            PILImage.fromarray(data).save(tmp, format="PNG")
        os.replace(tmp, out_path)
    except OSError as exc:  # a full disk: one line naming the file; the old file, if any, stays
        raise write_error(out_path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write a file (PNG plot, serialised checkpoint) atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file (JSON, CSV, Markdown) atomically."""
    return write_bytes(path, text.encode())


def read_json(path: str | os.PathLike, default=None, missing: str | None = None):
    """The JSON in ``path``. Without the file: ``default``, or, given ``missing``, the one-line error ``path: missing``.
    A file that is not JSON is one line naming it."""
    path = Path(path)
    if not path.is_file():
        if missing is not None:
            raise file_error(path, missing)
        return default
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise file_error(path, f"invalid JSON ({exc})") from None
