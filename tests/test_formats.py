"""Your data as it is: NRRD, MetaImage, TIFF, BMP and DICOM series beside NIfTI and PNG.

The requirement: "Readers and writers through SimpleITK for .nii, .nii.gz, .nrrd, .mha, .mhd; tifffile for 2D/3D TIFF
(spacing from a .json beside it, as nnU-Net); PNG, BMP and 2D TIFF as natural images. dataset.json's file_ending picks
the reader; a prediction is written in the input's format and exact geometry (direction, origin, spacing; a round-trip
test per format, including an oblique direction). Whatever the reader, the existing checks (damaged files, shape and
grid mismatches) still give one line." And: "unetzoo predict RUN DICOM_DIR OUT accepts folders of DICOM series (one
series per case, SimpleITK's series reader, the series UID named in the output), writes NIfTI (or the format asked
for) in the series' geometry."

ITK's geometry is written here by hand from the project's RAS affine (LPS = diag(-1, -1, 1) RAS, arrays z, y, x), so
the tests state the convention independently of :mod:`unetzoo.itk_io`.
"""

import json
import locale
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from conftest import run_cli
from test_bad_input import untrained_run
from unetzoo.data.datasets import load_dataset, prediction_inputs
from unetzoo.data.plan import Plan, make_plan
from unetzoo.errors import UnetzooError
from unetzoo.io import read_image, read_label, write_array

ITK = (".nrrd", ".mha", ".mhd")
TOLERANCE = 1e-5
UID = "1.2.826.0.1.3680043.2.1125.7.20240101.1"


def oblique_affine(spacing=(0.7, 0.8, 2.5), origin=(10.5, -20.25, 30.0)) -> np.ndarray:
    """A RAS voxel-to-world affine rotated about two axes, anisotropic."""
    a, b = 0.3, 0.2
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def itk_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(direction 3x3, origin, spacing) that ITK gives the RAS ``affine``."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    return lps[:, :3] / spacing, lps[:, 3], spacing


def itk_image(array_xyz: np.ndarray, affine: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)))
    direction, origin, spacing = itk_geometry(affine)
    image.SetDirection(direction.flatten().tolist())
    image.SetOrigin(origin.tolist())
    image.SetSpacing(spacing.tolist())
    return image


def assert_itk_geometry(path: Path, affine: np.ndarray) -> None:
    """The file, read by SimpleITK itself, has the direction, origin and spacing of ``affine`` to 1e-5."""
    image = sitk.ReadImage(str(path))
    direction, origin, spacing = itk_geometry(affine)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=TOLERANCE)
    assert np.allclose(image.GetOrigin(), origin, atol=TOLERANCE)
    assert np.allclose(image.GetSpacing(), spacing, atol=TOLERANCE)


@contextmanager
def kept_locale():
    """GDCM's DICOM writer leaves the process in the C locale (Python would then read text files as ASCII in the
    tests after this one): restored."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def write_dicom_series(folder: Path, array_xyz: np.ndarray, affine: np.ndarray, uid: str = UID) -> None:
    """A DICOM series, one file per slice, as SimpleITK's "Dicom Series From Array" example writes it: the series
    UID, orientation and each slice's position in the tags."""
    folder.mkdir(parents=True)
    image = itk_image(array_xyz.astype(np.int16), affine)
    direction = image.GetDirection()
    orientation = "\\".join(f"{direction[i]:.10f}" for i in (0, 3, 6, 1, 4, 7))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with kept_locale():  # GDCM's writer leaves the C locale behind
        _write_slices(writer, image, folder, uid, orientation)


def _write_slices(writer, image, folder: Path, uid: str, orientation: str) -> None:
    for k in range(image.GetDepth()):
        slice_k = image[:, :, k]
        for tag, value in (("0020|000e", uid), ("0020|0037", orientation), ("0008|0060", "MR")):
            slice_k.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_k.SetMetaData("0020|0032", "\\".join(f"{p:.10f}" for p in position))
        slice_k.SetMetaData("0020|0013", str(k + 1))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_k)


def one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


# ---- readers: an ITK file reads as its NIfTI copy ------------------------------------------------------------------


@pytest.mark.parametrize("ending", ITK)
def test_itk_copy_of_a_nifti_reads_the_same(tmp_path, ending):
    """A volume with an oblique affine, written to .nii.gz by nibabel and to an ITK format by SimpleITK (the geometry
    converted by hand), reads through unetzoo.io as equal arrays and affines (to 1e-5): the same spacing, the same
    plan."""
    array = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    affine = oblique_affine()
    nib.save(nib.Nifti1Image(array, affine), str(tmp_path / "a.nii.gz"))
    sitk.WriteImage(itk_image(array, affine), str(tmp_path / f"a{ending}"))
    nifti, itk = read_image(tmp_path / "a.nii.gz"), read_image(tmp_path / f"a{ending}")
    assert np.array_equal(itk.array, nifti.array)
    assert np.allclose(itk.affine, nifti.affine, atol=TOLERANCE)
    assert np.allclose(itk.spacing, nifti.spacing, atol=TOLERANCE) and itk.spatial_dims == 3


def test_itk_geometry_agrees_with_itks_own_nifti_writer(tmp_path):
    """ITK's NIfTI writer converts LPS to the NIfTI header itself: its .nii.gz (read by nibabel) and its .mha of one
    image give unetzoo the same array and affine."""
    image = itk_image(np.random.default_rng(1).random((4, 5, 6)).astype(np.float32), oblique_affine())
    sitk.WriteImage(image, str(tmp_path / "b.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "b.mha"))
    nifti, mha = read_image(tmp_path / "b.nii.gz"), read_image(tmp_path / "b.mha")
    assert np.array_equal(mha.array, nifti.array) and np.allclose(mha.affine, nifti.affine, atol=TOLERANCE)


# ---- writers: a prediction keeps the geometry, per format --------------------------------------------------------


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", *ITK])
def test_label_round_trip_keeps_oblique_geometry(tmp_path, ending):
    """A label map written in each 3D format reads back with the same values and affine (to 1e-5); in the ITK formats,
    SimpleITK itself reads the direction, origin and spacing the affine stands for."""
    label = np.random.default_rng(2).integers(0, 3, (6, 5, 4)).astype(np.uint8)
    affine = oblique_affine()
    path = write_array(label, tmp_path / f"p{ending}", affine)
    back = read_label(path)
    assert np.array_equal(back.array, label) and np.allclose(back.affine, affine, atol=TOLERANCE)
    if ending in ITK:
        assert_itk_geometry(path, affine)
    if ending == ".mhd":  # its data file is named for the header, no temporary name left
        data_file = next(line for line in path.read_text().splitlines() if line.startswith("ElementDataFile"))
        assert data_file.endswith("= p.zraw") and sorted(p.name for p in tmp_path.iterdir()) == ["p.mhd", "p.zraw"]


def test_3d_tiff_spacing_from_the_json_beside_it(tmp_path):
    """A 3D TIFF's spacing lies in NAME.json beside it ({"spacing": [z, y, x]}, nnU-Net's Tiff3DIO; CASE.json for
    CASE_0000.tif); the TIFF holds (z, y, x). Written back, the spacing file comes with it."""
    stack = np.random.default_rng(3).integers(0, 3, (4, 5, 6)).astype(np.uint8)  # (z, y, x)
    tifffile.imwrite(tmp_path / "c_0000.tif", stack, photometric="minisblack")
    (tmp_path / "c.json").write_text(json.dumps({"spacing": [3.0, 0.5, 0.25]}))
    image = read_image(tmp_path / "c_0000.tif")
    assert image.spatial_dims == 3 and image.array.shape == (1, 6, 5, 4)
    assert np.array_equal(image.array[0], stack.transpose(2, 1, 0)) and image.spacing == (0.25, 0.5, 3.0)
    out = write_array(image.array[0].astype(np.uint8), tmp_path / "out" / "c.tif", image.affine)
    assert json.loads((tmp_path / "out" / "c.json").read_text()) == {"spacing": [3.0, 0.5, 0.25]}
    assert np.array_equal(tifffile.imread(out), stack)
    back = read_label(out)
    assert np.array_equal(back.array, image.array[0]) and np.allclose(back.affine, image.affine)


def test_tiff_stack_without_spacing_file_refused_in_one_line(tmp_path):
    """A 3D TIFF without its spacing file is refused in one line naming the file (not given a made-up spacing)."""
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, np.zeros((10, 5, 6), np.uint8))
    with pytest.raises(UnetzooError) as exc:
        read_image(path)
    assert "v.json" in one_line(exc, path)


@pytest.mark.parametrize("ending", [".png", ".bmp", ".tif"])
def test_2d_natural_images_round_trip(tmp_path, ending):
    """PNG, BMP and 2D TIFF are natural images: 2D, no geometry (identity affine); a label written in the input's
    format reads back equal, and an RGB image is three channels."""
    label = np.random.default_rng(4).integers(0, 3, (7, 9)).astype(np.uint8)
    path = write_array(label, tmp_path / f"l{ending}")
    back = read_label(path)
    assert back.spatial_dims == 2 and np.array_equal(back.array, label) and np.array_equal(back.affine, np.eye(4))
    rgb = np.random.default_rng(5).integers(0, 255, (7, 9, 3)).astype(np.uint8)
    write_array(rgb, tmp_path / f"rgb{ending}")
    image = read_image(tmp_path / f"rgb{ending}")
    assert image.array.shape == (3, 7, 9) and np.array_equal(image.array, np.moveaxis(rgb, -1, 0))


# ---- the existing checks, whatever the reader --------------------------------------------------------------------


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_truncated_itk_file_is_one_line_naming_it(tmp_path, ending):
    """A damaged .mha/.nrrd (truncated) is one line naming the file, not ITK's multi-line exception."""
    path = tmp_path / f"t{ending}"
    sitk.WriteImage(itk_image(np.random.default_rng(6).random((20, 20, 20)).astype(np.float32), np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnetzooError) as exc:
        read_image(path)
    assert "corrupt or truncated" in one_line(exc, path)


def _dataset(root: Path, ending: str, layout: str, shift_label: bool = False) -> Path:
    """Two cases with an oblique affine in ``ending``: MSD (a 'training' list) or nnU-Net (``file_ending``)."""
    rng, training = np.random.default_rng(7), []
    for i in range(2):
        image = rng.random((12, 10, 8)).astype(np.float32) + 1
        label = (image > 1.5).astype(np.uint8)
        name = f"case{i}_0000" if layout == "nnunet" else f"case{i}"
        label_affine = oblique_affine(origin=(11.5, -20.25, 30.0)) if shift_label and i == 1 else oblique_affine()
        write_array(image, root / "imagesTr" / f"{name}{ending}", oblique_affine())
        write_array(label, root / "labelsTr" / f"case{i}{ending}", label_affine)
        training.append({"image": f"./imagesTr/{name}{ending}", "label": f"./labelsTr/case{i}{ending}"})
    if layout == "nnunet":
        meta = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "x": 1}, "file_ending": ending}
    else:
        meta = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("ending, layout", [(".nrrd", "nnunet"), (".mhd", "nnunet"), (".mha", "msd")])
def test_dataset_in_another_format_plans_as_its_nifti_copy(tmp_path, ending, layout):
    """dataset.json's file_ending (nnU-Net) or the listed files (MSD) pick the reader; the dataset plans as its NIfTI
    copy does (the same shape, patch and batch; the same spacing to 1e-5, NIfTI storing its affine in float32)."""
    dataset = load_dataset(_dataset(tmp_path / "data", ending, layout))
    nifti = load_dataset(_dataset(tmp_path / "nifti", ".nii.gz", layout))
    assert dataset.file_ending == ending and [c.name for c in dataset.cases] == ["case0", "case1"]
    plan, reference = make_plan(dataset, dataset.cases), make_plan(nifti, nifti.cases)
    assert plan.file_ending == ending
    assert np.allclose(plan.target_spacing, reference.target_spacing, atol=TOLERANCE)
    for field in ("spatial_dims", "median_shape", "patch_size", "batch_size", "slice_axis"):
        assert getattr(plan, field) == getattr(reference, field), field


def test_label_off_the_image_grid_is_one_line_in_itk_files(tmp_path):
    """A label whose origin is 1 mm off its image's is refused in one line naming it, .mha as NIfTI."""
    dataset = load_dataset(_dataset(tmp_path / "data", ".mha", "msd", shift_label=True))
    with pytest.raises(UnetzooError) as exc:
        make_plan(dataset, dataset.cases)
    assert "not on the image's grid" in one_line(exc, tmp_path / "data" / "labelsTr" / "case1.mha")


def test_prediction_inputs_take_the_new_endings(tmp_path):
    """predict's input discovery lists .mhd headers (not their data files) and TIFFs (not their spacing files)."""
    affine = oblique_affine()
    write_array(np.ones((4, 4, 4), np.float32), tmp_path / "mhd" / "a.mhd", affine)
    assert prediction_inputs(tmp_path / "mhd", 1) == {"a": [tmp_path / "mhd" / "a.mhd"]}
    write_array(np.ones((4, 4, 4), np.float32), tmp_path / "tif" / "b_0000.tif", np.diag([1, 1, 2.0, 1]))
    (tmp_path / "tif" / "b.json").write_text(json.dumps({"spacing": [2.0, 1.0, 1.0]}))
    assert prediction_inputs(tmp_path / "tif", 1) == {"b": [tmp_path / "tif" / "b_0000.tif"]}


@pytest.mark.parametrize("ending", [".mhd", ".tif"])
def test_linked_label_reads_through_its_target(tmp_path, ending):
    """Validation and compare link the reference labels under the case names: a linked .mhd (whose data file lies
    beside its target) and a linked 3D TIFF (whose spacing file does) read as the file itself."""
    label = np.random.default_rng(10).integers(0, 3, (6, 5, 4)).astype(np.uint8)
    path = write_array(label, tmp_path / "labelsTr" / f"case{ending}", np.diag([0.5, 0.5, 2.0, 1.0]))
    link = tmp_path / "references" / f"case{ending}"
    link.parent.mkdir()
    link.symlink_to(path)
    back = read_label(link)
    assert np.array_equal(back.array, label) and np.allclose(back.affine, read_label(path).affine)


# ---- DICOM series ------------------------------------------------------------------------------------------------


def test_dicom_series_is_one_case_in_its_geometry(tmp_path):
    """A folder whose sub-folders hold DICOM series: one case per series, named with its series UID, read by ITK's
    series reader in the series' geometry (oblique direction, slice spacing from the positions)."""
    array = np.random.default_rng(8).integers(0, 1000, (8, 7, 5)).astype(np.int16)
    affine = oblique_affine()
    write_dicom_series(tmp_path / "dicom" / "patient1", array, affine)
    cases = prediction_inputs(tmp_path / "dicom", 1)
    assert cases == {f"patient1_{UID}": [tmp_path / "dicom" / "patient1"]}
    image = read_image(cases[f"patient1_{UID}"])
    assert np.array_equal(image.array[0], array) and np.allclose(image.affine, affine, atol=TOLERANCE)


def test_folder_of_two_dicom_series_refused_in_one_line(tmp_path):
    """A folder holding two series is refused in one line naming it (one series per case), not mixed into one."""
    folder = tmp_path / "dicom"
    write_dicom_series(folder / "a", np.zeros((4, 4, 3)), oblique_affine())
    write_dicom_series(folder / "b", np.zeros((4, 4, 3)), oblique_affine(), uid=UID + "2")
    for path in (folder / "b").iterdir():
        path.rename(folder / "a" / f"b_{path.name}")
    with pytest.raises(UnetzooError) as exc:
        prediction_inputs(folder, 1)
    assert "2 DICOM series" in one_line(exc, folder / "a")


# ---- predict: the output's format and geometry --------------------------------------------------------------------


@pytest.fixture(scope="module")
def run3d(tmp_path_factory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("runs") / "3d", Plan.synthetic([16, 16, 16]))


def test_output_format_the_run_cannot_hold_is_refused_first(run3d, tmp_path):
    """--output-format names a format that cannot hold the run's images (PNG for a 3D run): one line, nothing
    written."""
    from unetzoo.inference import predict

    write_array(np.ones((8, 8, 8), np.float32), tmp_path / "in" / "x.mha", oblique_affine())
    with pytest.raises(UnetzooError, match="--output-format .png: a PNG file cannot hold the 3D images"):
        predict(run3d, tmp_path / "in", tmp_path / "out", device="cpu", output_format=".png")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_prediction_of_an_itk_file_keeps_its_format_and_geometry(run3d, tmp_path, ending):
    """A prediction is written in the input's format with the input's exact direction, origin and spacing."""
    from unetzoo.inference import predict

    affine = oblique_affine()
    image = np.random.default_rng(9).random((12, 10, 8)).astype(np.float32)
    (tmp_path / "in").mkdir()
    sitk.WriteImage(itk_image(image, affine), str(tmp_path / "in" / f"x{ending}"))
    written = predict(run3d, tmp_path / "in", tmp_path / "out", device="cpu")
    assert written == [tmp_path / "out" / f"x{ending}"]
    assert_itk_geometry(written[0], affine)
    assert read_label(written[0]).array.shape == image.shape


@pytest.mark.slow
@pytest.mark.parametrize("ending, spatial", [(".bmp", (16, 16)), (".tif", (16, 16)), (".tif", (12, 10, 8))])
def test_prediction_of_tiff_and_bmp_keeps_their_format(tmp_path, ending, spatial):
    """2D BMP and TIFF predictions are written as BMP and TIFF of the input's size; a 3D TIFF's with its spacing file."""
    from unetzoo.inference import predict

    run = untrained_run(tmp_path / "run", Plan.synthetic([16] * len(spatial)))
    affine = np.diag([0.5, 0.5, 2.0, 1.0]) if len(spatial) == 3 else None
    image = np.random.default_rng(11).integers(0, 255, spatial).astype(np.uint8)
    write_array(image, tmp_path / "in" / f"x{ending}", affine)
    written = predict(run, tmp_path / "in", tmp_path / "out", device="cpu")
    assert written == [tmp_path / "out" / f"x{ending}"] and read_label(written[0]).array.shape == spatial
    if affine is not None:
        assert json.loads((tmp_path / "out" / "x.json").read_text()) == {"spacing": [2.0, 0.5, 0.5]}


@pytest.mark.slow
def test_predict_dicom_series_writes_nifti_in_the_series_geometry(run3d, tmp_path):
    """`unetzoo predict RUN DICOM_DIR OUT`: one output per series, named with its UID, NIfTI by default, on the
    series' grid; `--output-format .mha` writes MetaImage with the series' direction, origin and spacing."""
    from unetzoo.inference import predict

    affine = oblique_affine()
    write_dicom_series(tmp_path / "dicom" / "p1", np.zeros((12, 10, 8)), affine)
    written = predict(run3d, tmp_path / "dicom", tmp_path / "out", device="cpu")
    assert written == [tmp_path / "out" / f"p1_{UID}.nii.gz"]
    output = nib.load(str(written[0]))
    assert output.shape == (12, 10, 8) and np.allclose(output.affine, affine, atol=TOLERANCE)

    result = run_cli(
        "predict", run3d, tmp_path / "dicom", tmp_path / "mha", "--device", "cpu", "--output-format", ".mha"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "mha").iterdir() if not p.name.startswith(".")) == [f"p1_{UID}.mha"]
    assert_itk_geometry(tmp_path / "mha" / f"p1_{UID}.mha", affine)
