"""Reading and writing images, the format chosen by the file ending: NIfTI (nibabel) for 3D and 3D+t; NRRD, MetaImage
and DICOM series folders (SimpleITK, :mod:`unetzoo.itk_io`, in the same RAS geometry); TIFF (tifffile,
:mod:`unetzoo.tiff_io`: a volume with its spacing file, else 2D); PNG and BMP (Pillow) for 2D, grey or RGB in one
file. A TIFF without a spacing file, a PNG and a BMP are natural images: no geometry (identity affine).

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

from unetzoo import itk_io, tiff_io
from unetzoo.errors import UnetzooError, file_error, write_error
from unetzoo.itk_io import ITK_ENDINGS
from unetzoo.tiff_io import TIFF_ENDINGS, spacing_file

log = logging.getLogger(__name__)
NIFTI_ENDINGS = (".nii.gz", ".nii")
PILLOW_ENDINGS = (".png", ".bmp")  # 2D natural images
SUPPORTED_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS + TIFF_ENDINGS + PILLOW_ENDINGS
FORMAT_NAMES = {
    **dict.fromkeys(NIFTI_ENDINGS, "NIfTI"),
    **{".nrrd": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage", ".png": "PNG", ".bmp": "BMP"},
    **dict.fromkeys(TIFF_ENDINGS, "TIFF"),
}
DICOM_OUTPUT_ENDING = ".nii.gz"  # a DICOM series' prediction is written as NIfTI unless another format is asked for
AFFINE_TOLERANCE_MM = 1e-3  # two voxel-to-world matrices that agree to this, entry by entry, are one grid
NIFTI2_HEADER_SIZE = 540  # the first field of a NIfTI-2 header (348 for NIfTI-1)


def file_ending(path: str | os.PathLike) -> str:
    """The image ending of ``path`` (one of :data:`SUPPORTED_ENDINGS`); raises for anything else."""
    name = str(path)
    for ending in SUPPORTED_ENDINGS:
        if name.lower().endswith(ending):
            if not name.endswith(ending):  # matched by one reader and missed by the next: refused everywhere alike
                given = name[len(name) - len(ending) :]
                raise file_error(path, f"the ending {given!r} is not lower case: rename the file to end in {ending!r}")
            return ending
    raise file_error(path, f"unsupported file type (expected one of {', '.join(SUPPORTED_ENDINGS)})")


def strip_ending(path: str | os.PathLike) -> str:
    """File name without its image ending: ``case_0000.nii.gz`` -> ``case_0000``."""
    name = Path(path).name
    return name[: len(name) - len(file_ending(name))]


def format_name(path: str | os.PathLike) -> str:
    """The name of the format of an image file (or of an ending), for messages: ``NIfTI``, ``MetaImage``, ``PNG``,
    ``DICOM series`` ..."""
    if Path(path).is_dir():
        return "DICOM series"
    return FORMAT_NAMES[file_ending(path)]


def image_dims(path: str | os.PathLike) -> int:
    """Spatial dimensions of an image file: 2 for a natural image (PNG, BMP, a TIFF without a spacing file), 3 for
    the rest (NIfTI, NRRD, MetaImage, a TIFF volume, a folder holding a DICOM series)."""
    if Path(path).is_dir():
        return 3
    ending = file_ending(path)
    if ending in TIFF_ENDINGS:
        return 3 if spacing_file(path) else 2
    return 2 if ending in PILLOW_ENDINGS else 3


def ending_dims(ending: str) -> tuple[int, ...]:
    """The spatial dimensions a file of this ending holds: 2 (PNG, BMP), 3 (NIfTI, NRRD, MetaImage) or either (TIFF)."""
    return (2, 3) if ending in TIFF_ENDINGS else (2,) if ending in PILLOW_ENDINGS else (3,)


def output_ending(path: str | os.PathLike, asked: str | None = None) -> str:
    """The ending a prediction of the image ``path`` is written with: ``asked`` (``--output-format``), else the
    input's own (NIfTI for a DICOM series)."""
    return asked or (DICOM_OUTPUT_ENDING if Path(path).is_dir() else file_ending(path))


@dataclass
class Image:
    """An image as arrays plus the geometry needed to write a result back exactly.

    ``array`` is channel-first ``(C, *spatial)`` for images and ``(*spatial)`` for label maps.
    ``affine`` is the 4x4 voxel-to-world matrix (identity for a 2D natural image). ``header`` is the NIfTI header
    of the file (``None`` for other formats) so that outputs keep it.
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
        return image_dims(self.path)

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


def _load_nifti(path: Path, stream: bytes | None = None):
    """``nib.load`` (of the decompressed ``stream`` of ``path`` when given), with the header fixes nibabel logs
    without a file name (zero or negative pixdim) re-logged as a warning naming ``path``."""
    import nibabel as nib

    logger, collect = logging.getLogger("nibabel.global"), _Collect()
    handlers, propagate = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [collect], False
    try:
        if stream is None:
            return nib.load(str(path))
        nifti2 = stream[:4] in (NIFTI2_HEADER_SIZE.to_bytes(4, "little"), NIFTI2_HEADER_SIZE.to_bytes(4, "big"))
        return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(stream)
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        for message in collect.messages:
            if (str(path), message) not in _warned:  # once per file, though headers are read more than once
                _warned.add((str(path), message))
                log.warning(f"{path}: {message}")


def check_same_grid(path, affine: np.ndarray, reference: np.ndarray, what: str, against: str, meaning: str) -> None:
    """``affine`` (of the file ``path``) is ``reference``'s grid to ``AFFINE_TOLERANCE_MM`` per entry; otherwise one
    line naming the file: ``{what} differs from {against} by up to X mm: {meaning} (flipped, shifted or
    rescaled?)``. A label against its image, a channel against the first channel: one check for both."""
    if not np.allclose(affine, reference, rtol=0, atol=AFFINE_TOLERANCE_MM):
        raise file_error(
            path,
            f"{what} differs from {against} by up to {np.abs(affine - reference).max():.4g} mm: {meaning} "
            "(flipped, shifted or rescaled?)",
        )


def check_affine(path, affine: np.ndarray, spatial_dims: int = 3) -> None:
    """A voxel-to-world matrix with a zero or non-finite voxel size (or a singular one) makes spacing, resampling
    and surface distances meaningless: a one-line error naming the file."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(matrix[:, :spatial_dims], axis=0)
    axes = np.linalg.norm(matrix, axis=0)  # a real small spacing (1e-4 mm) is a grid; only a zero one, or axes
    singular = abs(np.linalg.det(matrix)) <= 1e-6 * np.prod(axes)  # along one line, is not
    if not np.all(np.isfinite(affine)) or not np.all(spacing > 0) or singular:
        raise file_error(
            path,
            f"the affine (sform/qform) has zero or invalid voxel spacing {[round(float(s), 6) for s in spacing]}: fix the header",
        )


def _gunzip(path: Path) -> bytes:
    """The whole decompressed stream of a ``.nii.gz``, its gzip CRC and length checked: nibabel stops reading at the
    last voxel, so bytes damaged mid-stream would otherwise be read as voxels without an error."""
    import gzip
    import zlib

    try:
        return gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise file_error(path, f"the file is damaged or truncated (gzip check failed: {exc})") from None


def _read_nifti(path: Path, frame: int | None = None) -> tuple[np.ndarray, np.ndarray, object]:
    try:
        img = _load_nifti(path, _gunzip(path) if file_ending(path) == ".nii.gz" else None)
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


def _read_pillow(path: Path, label: bool = False) -> np.ndarray:
    """A PNG or BMP as an array: colours for an image; for a ``label`` map stored with a palette (mode P, the common
    way label PNGs are saved), its indices, which are the label values."""
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
        kind = path.suffix.upper()[1:]
        raise file_error(
            path, f"cannot read {kind} file ({type(exc).__name__}: {exc}); the file is corrupt or truncated"
        ) from None
    return data.astype(np.float32)


def _read_other(path: Path, label: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` of a file that is not NIfTI (or of a DICOM series folder), by its ending."""
    ending = None if path.is_dir() else file_ending(path)
    spacing = spacing_file(path) if ending in TIFF_ENDINGS else None
    if ending is None:
        data, affine = itk_io.read_dicom_series(path)
    elif ending in ITK_ENDINGS:
        data, affine = itk_io.read(path)
    elif spacing:
        meta = read_json(spacing)
        data, affine = tiff_io.read_volume(path, meta.get("spacing") if isinstance(meta, dict) else None)
    elif ending in TIFF_ENDINGS:
        return tiff_io.read_image(path), np.eye(4)
    else:
        return _read_pillow(path, label), np.eye(4)
    check_affine(path, affine)
    return data, affine


def case_frames(paths: list[str | os.PathLike], channels: int) -> int:
    """Time frames of a case (header only): T for a 1-channel case stored as one 4D NIfTI (X, Y, Z, T), else 1
    (a 3D or 2D image; a 4D file of a C-channel dataset holds channels, see the module docstring)."""
    if channels != 1 or len(paths) != 1 or Path(paths[0]).is_dir() or file_ending(paths[0]) not in NIFTI_ENDINGS:
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
    """Read one file (or the DICOM series of a folder) as ``(data, affine, header)``; data is spatial-first
    (channels, if any, last). ``frame`` t reads only frame t of a 4D NIfTI (X, Y, Z, T); ``label``: a palette PNG
    gives its indices, not its colours."""
    path = Path(path)
    if not path.exists():
        raise file_error(path, "file not found")
    if not path.is_dir():
        _check_openable(path)
    if not path.is_dir() and file_ending(path) in NIFTI_ENDINGS:
        data, affine, header = _read_nifti(path, frame)
    elif frame is not None:
        raise file_error(path, "has no time frames (a 3D+t image is a 4D NIfTI)")
    else:
        (data, affine), header = _read_other(path, label), None
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
        dims = spatial_dims or image_dims(path)
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
        if channels:
            against = f"the first channel's ({paths[0].name})"
            check_same_grid(path, file_affine, affine, "affine", against, "the channels are not on one grid")
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
    natural = image_dims(path) == 2
    dims = spatial_dims or (2 if natural else 3)
    if data.ndim == dims + 1 and natural:
        data = data[..., 0]  # an RGB-saved mask: the channels are copies
    if data.ndim != dims:
        raise file_error(path, f"expected a {dims}D label map, got an array of shape {data.shape}")
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise file_error(path, "label map has non-integer values")
    small = rounded.size == 0 or np.iinfo(np.int16).min <= rounded.min() and rounded.max() <= np.iinfo(np.int16).max
    return Image(rounded.astype(np.int16 if small else np.int32), affine, path, header)


def label_dtype(label_ids) -> np.dtype:
    """The smallest unsigned integer type holding every id of ``label_ids``: what a label map is written as (uint8
    up to 255, uint16 up to 65535, else uint32), so that no id wraps (300 as uint8 is 44)."""
    top = max(int(i) for i in label_ids)
    return next(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(t).max)


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
            if process_running(pid) and time.time() - path.stat().st_mtime < LEFTOVER_AGE_S:
                continue
            path.unlink()
        except FileNotFoundError:  # its writer renamed it meanwhile
            continue
        leftovers.append(path)
    return leftovers


def die_with_parent() -> None:
    """Linux, as a child process's ``preexec_fn``: the child is killed when its parent dies, even by SIGKILL
    (``prctl(PR_SET_PDEATHSIG)``), so that a killed ``compare`` leaves no training running into the run folders that
    the next invocation resumes."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: an interrupted compare may leave its children running
        pass


def process_running(pid: str) -> bool:
    """Whether the process ``pid`` (its number as text) runs on this machine."""
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
    """Write ``data`` (spatial-first) in the format of the ending, atomically. A NIfTI ``header`` (the input's) is
    kept whole, qform and sform with their codes, when ``affine`` is its own. NRRD and MetaImage keep the affine as
    ITK's direction, origin and spacing; a 3D array written as TIFF is a volume, its spacing file written first."""
    out_path = Path(out_path)
    ending = file_ending(out_path)
    tmp = _atomic_target(out_path)  # same folder, same ending: the rename is atomic
    try:
        if ending in NIFTI_ENDINGS:
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
        elif ending in ITK_ENDINGS:
            itk_io.write(data, affine if affine is not None else np.eye(4), tmp, out_path)
        elif ending in TIFF_ENDINGS:
            volume = data.ndim == 3 and affine is not None
            if volume:
                spacing = {"spacing": tiff_io.volume_spacing(affine)}
                write_text(out_path.parent / f"{strip_ending(out_path)}.json", json.dumps(spacing) + "\n")
            tiff_io.write(data, tmp, volume)
        else:
            from PIL import Image as PILImage

            PILImage.fromarray(data).save(tmp, format=ending[1:].upper())
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
