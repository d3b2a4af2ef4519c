"""The synthetic datasets: nnU-Net layout, geometry, label values and reproducibility."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unetzoo.data.phantoms import write_nuclei_phantom, write_organs_phantom
from unetzoo.io import read_image, read_label

SHAPE = (32, 36, 28)
SPACING = (2.0, 1.0, 1.25)


@pytest.fixture(scope="module")
def organs(tmp_path_factory):
    return write_organs_phantom(tmp_path_factory.mktemp("organs"), cases=3, seed=7, shape=SHAPE, spacing=SPACING)


def test_organs_layout_and_dataset_json(organs):
    dataset = json.loads((organs / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "MRI"}
    assert dataset["labels"] == {"background": 0, "organ1": 1, "organ2": 2, "organ3": 3}
    assert dataset["numTraining"] == 3
    assert dataset["file_ending"] == ".nii.gz"
    assert {"name", "description"} <= set(dataset)
    assert sorted(p.name for p in (organs / "imagesTr").iterdir()) == [f"organs_00{i}_0000.nii.gz" for i in range(3)]
    assert sorted(p.name for p in (organs / "labelsTr").iterdir()) == [f"organs_00{i}.nii.gz" for i in range(3)]


@pytest.mark.parametrize("case", ["organs_000", "organs_001", "organs_002"])
def test_organs_case_contents(organs, case):
    import nibabel as nib

    image = read_image(organs / "imagesTr" / f"{case}_0000.nii.gz")
    label = read_label(organs / "labelsTr" / f"{case}.nii.gz")
    assert nib.load(str(organs / "imagesTr" / f"{case}_0000.nii.gz")).get_data_dtype() == np.float32
    assert nib.load(str(organs / "labelsTr" / f"{case}.nii.gz")).get_data_dtype() == np.uint8
    assert image.array.shape == (1, *SHAPE) and label.array.shape == SHAPE
    assert set(np.unique(label.array).tolist()) == {0, 1, 2, 3}
    counts = np.bincount(label.array.ravel(), minlength=4)
    assert counts[1:].min() >= 300  # every organ present and big enough to learn
    np.testing.assert_allclose(image.affine, label.affine)
    assert not np.allclose(image.affine[:3, :3], np.diag(image.affine[:3, :3].diagonal()))  # rotated
    assert not np.allclose(image.affine[:3, 3], 0)
    np.testing.assert_allclose(label.spacing, SPACING, rtol=1e-5)
    means = [image.array[0][label.array == k].mean() for k in range(4)]
    assert np.all(np.diff(means) > 20)  # distinct, well separated intensities


def test_organs_reproducible_from_seed(organs, tmp_path):
    again = write_organs_phantom(tmp_path / "again", cases=2, seed=7, shape=SHAPE, spacing=SPACING)
    other = write_organs_phantom(tmp_path / "other", cases=1, seed=8, shape=SHAPE, spacing=SPACING)
    for name in ("imagesTr/organs_001_0000.nii.gz", "labelsTr/organs_001.nii.gz"):
        first, second = read_image(organs / name), read_image(again / name)
        assert first.array.tobytes() == second.array.tobytes()
        np.testing.assert_array_equal(first.affine, second.affine)
    for name in ("imagesTr/organs_000_0000.nii.gz", "labelsTr/organs_000.nii.gz"):
        assert read_image(organs / name).array.tobytes() != read_image(other / name).array.tobytes()
    assert (organs / "labelsTr/organs_000.nii.gz").read_bytes() != (organs / "labelsTr/organs_001.nii.gz").read_bytes()


def test_organs_number_of_structures(tmp_path):
    out = write_organs_phantom(tmp_path, cases=1, seed=0, n_structures=5)
    assert len(json.loads((out / "dataset.json").read_text())["labels"]) == 6
    assert set(np.unique(read_label(out / "labelsTr/organs_000.nii.gz").array).tolist()) == set(range(6))


def test_nuclei_layout_values_and_reproducibility(tmp_path):
    out = write_nuclei_phantom(tmp_path / "a", cases=2, seed=3, shape=(64, 80))
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert dataset["labels"] == {"background": 0, "nucleus": 1}
    assert (dataset["numTraining"], dataset["file_ending"]) == (2, ".png")
    from PIL import Image as PILImage

    with PILImage.open(out / "imagesTr/nuclei_000_0000.png") as png:
        assert (png.mode, png.size) == ("RGB", (80, 64))
    with PILImage.open(out / "labelsTr/nuclei_000.png") as png:
        assert png.mode == "L"
    image = read_image(out / "imagesTr/nuclei_000_0000.png")
    label = read_label(out / "labelsTr/nuclei_000.png")
    assert image.array.shape == (3, 64, 80) and label.array.shape == (64, 80)
    assert set(np.unique(label.array).tolist()) == {0, 1}
    assert image.array[:, label.array == 1].mean() > image.array[:, label.array == 0].mean() + 50  # bright on dark

    again = write_nuclei_phantom(tmp_path / "b", cases=1, seed=3, shape=(64, 80))
    other = write_nuclei_phantom(tmp_path / "c", cases=1, seed=4, shape=(64, 80))
    assert (again / "imagesTr/nuclei_000_0000.png").read_bytes() == (out / "imagesTr/nuclei_000_0000.png").read_bytes()
    assert read_label(again / "labelsTr/nuclei_000.png").array.tobytes() == label.array.tobytes()
    assert read_label(other / "labelsTr/nuclei_000.png").array.tobytes() != label.array.tobytes()


def test_vessels_sparse_tubes_among_distractors_reproducible(tmp_path):
    from unetzoo.data.phantoms import write_vessels_phantom

    shape = (32, 64, 48)
    data = write_vessels_phantom(tmp_path / "a", cases=2, seed=3, shape=shape)
    assert json.loads((data / "dataset.json").read_text())["labels"] == {"background": 0, "vessel": 1}
    for i in range(2):
        image = read_image(data / "imagesTr" / f"vessels_00{i}_0000.nii.gz").array[0]
        label = read_label(data / "labelsTr" / f"vessels_00{i}.nii.gz").array
        assert image.shape == label.shape == shape
        assert 0.002 <= label.mean() <= 0.0035  # the paper's sparsity (0.24 % foreground), plus at most one last ball
        vessel = label > 0
        assert image[vessel].mean() > image[~vessel].mean() + 30  # thin: partial volume dims them
        bright = image > np.median(image[vessel])  # a threshold at the vessels' median catches distractors too
        assert (bright & ~vessel).sum() > (bright & vessel).sum()
    again = write_vessels_phantom(tmp_path / "b", cases=1, seed=3, shape=shape)
    other = write_vessels_phantom(tmp_path / "c", cases=1, seed=4, shape=shape)
    name = "labelsTr/vessels_000.nii.gz"
    assert read_label(data / name).array.tobytes() == read_label(again / name).array.tobytes()
    assert read_label(data / name).array.tobytes() != read_label(other / name).array.tobytes()
