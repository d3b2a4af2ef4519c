"""TIFF images through tifffile: a 2D image (grey, or RGB in one file) as a natural image, or a 3D volume whose voxel
spacing lies in a JSON file beside it, as nnU-Net's ``Tiff3DIO`` reads them.

The spacing file of ``CASE_0000.tif`` (an nnU-Net channel file) is ``CASE.json``, that of ``NAME.tif`` is
``NAME.json``: ``{"spacing": [z, y, x]}``, one entry per axis of the array in the file. A TIFF with a spacing file is a
volume, one without is a 2D image; a stack of slices without one is refused rather than given a made-up spacing. A
volume is read like an ITK image (:mod:`unetzoo.itk_io`): the file's (z, y, x) transposed to (x, y, z), its affine
``diag(spacing_x, spacing_y, spacing_z)`` (a TIFF has no orientation or origin); written back the same way, spacing
file included. :mod:`unetzoo.io` dispatches to this module by file ending and reads the spacing file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from unetzoo.errors import file_error

TIFF_ENDINGS = (".tif", ".tiff")


def spacing_file(path: str | Path) -> Path | None:
    """The spacing file of a TIFF that has one (``NAME.json``, or nnU-Net's ``CASE.json`` for ``CASE_0000.tif``),
    beside the file or, for a link (the references of a validation), beside its target."""
    for file in dict.fromkeys([Path(path), Path(path).resolve()]):
        stem = file.name[: file.name.lower().rfind(".tif")]
        for name in (stem, re.sub(r"_\d{4}$", "", stem)):
            if (file.parent / f"{name}.json").is_file():
                return file.parent / f"{name}.json"
    return None


def _tiff(path: Path) -> tuple[np.ndarray, str]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return series.asarray(), series.axes
    except Exception as exc:  # tifffile raises many types for truncated/corrupt files
        raise file_error(
            path, f"cannot read TIFF file ({type(exc).__name__}: {exc}); the file is corrupt or truncated"
        ) from None


def read_image(path: Path) -> np.ndarray:
    """A 2D TIFF as a float32 array (H, W), or (H, W, S) for its samples (RGB)."""
    data, axes = _tiff(path)
    if "S" in axes:
        data = np.moveaxis(data, axes.index("S"), -1)
    if data.ndim - ("S" in axes) != 2:
        raise file_error(
            path,
            f"a stack of shape {data.shape}: a 3D TIFF needs its voxel spacing in {Path(path).stem}.json beside it "
            '({"spacing": [z, y, x]}, as nnU-Net)',
        )
    return data.astype(np.float32)


def read_volume(path: Path, spacing: list) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` of a 3D TIFF given its ``spacing`` (z, y, x, as in its spacing file): data (x, y, z)."""
    data, _ = _tiff(path)
    if data.ndim != 3:
        raise file_error(path, f"expected a 3D TIFF (its spacing file makes it a volume), got shape {data.shape}")
    good = isinstance(spacing, list) and len(spacing) == 3
    if not good or not all(isinstance(s, (int, float)) and s > 0 for s in spacing):
        raise file_error(spacing_file(path), f'"spacing" must be 3 positive numbers [z, y, x], got {spacing!r}')
    return data.transpose(2, 1, 0).astype(np.float32), np.diag([*spacing[::-1], 1.0]).astype(np.float64)


def write(data: np.ndarray, tmp: Path, volume: bool) -> None:
    """Write ``data`` to ``tmp`` as a TIFF: a ``volume`` (x, y, z) as the file's (z, y, x) stack, else a 2D image."""
    import tifffile

    if volume:
        stack = np.ascontiguousarray(data.transpose(2, 1, 0))  # (z, y, x), as nnU-Net's Tiff3DIO reads it
        tifffile.imwrite(tmp, stack, photometric="minisblack", compression="zlib")
    else:
        tifffile.imwrite(tmp, data, compression="zlib")


def volume_spacing(affine: np.ndarray) -> list[float]:
    """The spacing file's entry of a volume written with ``affine``: its voxel sizes (z, y, x)."""
    return [float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)[::-1]]
