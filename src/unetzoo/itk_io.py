"""Images through SimpleITK, ITK's readers: NRRD (``.nrrd``), MetaImage (``.mha``, or ``.mhd`` with its data file)
and DICOM series (a folder of slices), in the project's geometry.

ITK's world frame is LPS and its arrays are (z, y, x); the project's is nibabel's: arrays (x, y, z) and a 4x4
voxel-to-world affine in RAS+. So ``affine = diag(-1, -1, 1, 1) @ [[direction @ diag(spacing), origin], [0, 1]]`` and
the array is transposed: a NIfTI file and its ``.mha`` copy read as the same array and the same affine, and a
prediction written back keeps the input's direction, origin and spacing. A multi-component (vector) image gives its
components as a last axis (channels last, as an MSD 4D NIfTI). Problems are one-line :class:`UnetzooError` s naming
the file; :mod:`unetzoo.io` dispatches to this module by file ending.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from unetzoo.errors import file_error

ITK_ENDINGS = (".nrrd", ".mha", ".mhd")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def affine_of(image) -> np.ndarray:
    """The RAS+ voxel-to-world affine of a 3D SimpleITK image."""
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def set_affine(image, affine: np.ndarray) -> None:
    """Give a 3D SimpleITK image the direction, origin and spacing of the RAS+ ``affine``."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())


def _array(image, path) -> np.ndarray:
    """The voxels of a 3D SimpleITK image as float32 (x, y, z), components last."""
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise file_error(path, f"a {image.GetDimension()}D image: expected a 3D image (components as channels)")
    data = sitk.GetArrayFromImage(image)  # (z, y, x[, C]), a copy: a view dies with the image
    return np.asarray(data.transpose(2, 1, 0, *range(3, data.ndim)), dtype=np.float32)


def _reason(exc: RuntimeError) -> str:
    """ITK's message on one line: its last line that says something (not the source location, not errno)."""
    lines = [
        re.sub(r"^(ITK ERROR: |sitk::ERROR: )?(\w+\(0x[0-9a-f]+\): )?(\[\w+\] )?", "", line.strip())
        for line in str(exc).splitlines()[1:]
    ]
    lines = [line for line in lines if line and not line.startswith("Reason:")]
    return lines[-1] if lines else str(exc).strip()


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` of an ITK image file: data (x, y, z[, C]) float32, affine RAS+."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(Path(path).resolve()))  # a link's .mhd names a data file beside its target
    except RuntimeError as exc:
        raise file_error(
            path, f"cannot read {path.suffix} file ({_reason(exc)}); the file is corrupt or truncated"
        ) from None
    return _array(image, path), affine_of(image)


def write(data: np.ndarray, affine: np.ndarray, tmp: Path, out_path: Path) -> None:
    """Write a 3D array (x, y, z) with ``affine`` to ``tmp`` in ``out_path``'s format (compressed), ready to be
    renamed to ``out_path``; a ``.mhd``'s data file is renamed for ``out_path`` here, the header last."""
    import SimpleITK as sitk

    if data.ndim != 3:
        raise file_error(out_path, f"cannot write an array of shape {data.shape} as {out_path.suffix}: 3D only")
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    set_affine(image, affine)
    try:
        sitk.WriteImage(image, str(tmp), True)
    except RuntimeError as exc:
        raise OSError(_reason(exc)) from None
    if out_path.suffix == ".mhd":  # the header names its data file: point it at the final name
        header = tmp.read_text()
        data_file = re.search(r"^ElementDataFile = (.*)$", header, re.M).group(1).strip()
        final = out_path.stem + Path(data_file).suffix
        (tmp.parent / data_file).replace(out_path.parent / final)
        tmp.write_text(header.replace(f"ElementDataFile = {data_file}", f"ElementDataFile = {final}"))


def dicom_series(folder: Path) -> tuple[str, ...]:
    """The SeriesInstanceUIDs of the DICOM series in ``folder`` (its own files, not its sub-folders)."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # a folder without DICOM files is no news here
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` of the one DICOM series in ``folder``, in the series' geometry (slices ordered and spaced
    by their positions, as ITK's series reader does)."""
    import SimpleITK as sitk

    series = dicom_series(folder)
    if len(series) != 1:
        found = f"{len(series)} DICOM series ({', '.join(series)})" if series else "no DICOM series"
        raise file_error(folder, f"holds {found}: give one series per folder")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise file_error(folder, f"cannot read the DICOM series {series[0]} ({_reason(exc)})") from None
    return _array(image, folder), affine_of(image)
