import gzip

import nibabel as nib
import numpy as np
import pytest

from unetzoo.errors import UnetzooError
from unetzoo.io import read_image, read_label, strip_ending, write_array


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, affine if affine is not None else np.diag([1.5, 1, 2, 1])), str(path))
    return path


def test_nifti_round_trip_keeps_geometry(tmp_path):
    affine = np.array([[0, -1.5, 0, 10], [2, 0, 0, -4], [0, 0, 1, 3], [0, 0, 0, 1.0]])
    data = np.random.default_rng(0).integers(0, 3, (5, 6, 7)).astype(np.uint8)
    src = _nifti(tmp_path / "a.nii.gz", data, affine)
    image = read_label(src)
    out = write_array(image.array.astype(np.uint8), tmp_path / "b.nii.gz", image.affine, image.header)
    back = nib.load(str(out))
    assert np.array_equal(np.asarray(back.dataobj), data)
    assert np.allclose(back.affine, affine)
    assert image.spacing == pytest.approx((2.0, 1.5, 1.0))
    assert not list(tmp_path.glob(".tmp_*"))  # nothing half-written left behind


def test_image_channels_first(tmp_path):
    a = _nifti(tmp_path / "c_0000.nii.gz", np.zeros((4, 5, 6), np.float32))
    b = _nifti(tmp_path / "c_0001.nii.gz", np.ones((4, 5, 6), np.float32))
    image = read_image([a, b])
    assert image.array.shape == (2, 4, 5, 6)
    assert image.array[1].min() == 1


def test_rgb_png_is_three_channels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (9, 11, 3)).astype(np.uint8)
    path = write_array(rgb, tmp_path / "x_0000.png")
    image = read_image(path)
    assert image.array.shape == (3, 9, 11)
    assert np.array_equal(image.array[2], rgb[..., 2])
    assert strip_ending(path) == "x_0000"


def test_truncated_nifti_names_file(tmp_path):
    path = _nifti(tmp_path / "t.nii.gz", np.random.rand(20, 20, 20).astype(np.float32))
    raw = gzip.open(path).read()
    path.write_bytes(gzip.compress(raw)[:300])
    with pytest.raises(UnetzooError, match="t.nii.gz.*(corrupt|truncated)"):
        read_image(path)


def test_nan_voxels_are_an_error(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(UnetzooError, match="n.nii.gz: contains 1 NaN"):
        read_image(_nifti(tmp_path / "n.nii.gz", data))


def test_non_integer_labels_are_an_error(tmp_path):
    with pytest.raises(UnetzooError, match="non-integer"):
        read_label(_nifti(tmp_path / "l.nii.gz", np.full((3, 3, 3), 0.5, np.float32)))
