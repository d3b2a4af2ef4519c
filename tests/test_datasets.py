import json

import nibabel as nib
import numpy as np
import pytest

from unetzoo.data.datasets import load_dataset, prediction_inputs
from unetzoo.data.plan import make_plan
from unetzoo.data.splits import make_splits
from unetzoo.data.topology import divisor
from unetzoo.errors import UnetzooError
from unetzoo.io import write_array


def _msd(root, n=3, shape=(6, 7, 8)):
    """A tiny MSD-layout dataset (dataset.json with a training list, labels id -> name)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        name = f"hip_{i:03d}.nii.gz"
        label = np.zeros(shape, np.uint8)
        label[1:3, 1:3, 1:3] = 1
        label[3:5, 3:5, 3:5] = 2
        nib.save(
            nib.Nifti1Image(np.random.rand(*shape).astype(np.float32) + 1, np.eye(4)), str(root / "imagesTr" / name)
        )
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_layout(tmp_path):
    dataset = load_dataset(_msd(tmp_path / "msd"))
    assert dataset.layout == "msd"
    assert dataset.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert dataset.channel_names == ["MRI"]
    assert [c.name for c in dataset.cases] == ["hip_000", "hip_001", "hip_002"]
    assert dataset.spatial_dims == 3 and dataset.num_classes == 3


def test_nnunet_layout(organs):
    dataset = load_dataset(organs)
    assert dataset.layout == "nnunet"
    assert len(dataset.cases) == 6
    assert all(len(c.images) == 1 and c.images[0].name.endswith("_0000.nii.gz") for c in dataset.cases)
    assert dataset.labels[0] == "background" and dataset.num_classes == 4


def test_png_layout_rgb_in_one_file(tmp_path):
    root = tmp_path / "png"
    for i in range(2):
        write_array(np.zeros((8, 9, 3), np.uint8), root / "imagesTr" / f"c{i}_0000.png")
        write_array(np.zeros((8, 9), np.uint8), root / "labelsTr" / f"c{i}.png")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "R", "1": "G", "2": "B"},
                "labels": {"background": 0, "n": 1},
                "file_ending": ".png",
            }
        )
    )
    dataset = load_dataset(root)
    assert dataset.spatial_dims == 2 and len(dataset.cases) == 2


@pytest.mark.skipif(not (__import__("conftest").SHARED_DATA / "nuclei").is_dir(), reason="shared data not present")
def test_real_layouts_load():
    from conftest import SHARED_DATA

    hippocampus = load_dataset(SHARED_DATA / "hippocampus")
    nuclei = load_dataset(SHARED_DATA / "nuclei")
    assert hippocampus.layout == "msd" and len(hippocampus.cases) == 200
    assert nuclei.layout == "nnunet" and nuclei.spatial_dims == 2 and len(nuclei.cases) == 564


def test_missing_dataset_json(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(UnetzooError, match="dataset.json: missing dataset.json"):
        load_dataset(tmp_path)


def test_splits_are_kfold_and_reproducible():
    names = [f"c{i}" for i in range(11)]
    splits = make_splits(names, folds=5, seed=3)
    assert len(splits) == 5
    validation = [n for s in splits for n in s["val"]]
    assert sorted(validation) == sorted(names)  # every case validated exactly once
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 11
    assert make_splits(names, 5, 3) == splits
    assert make_splits(names, 5, 4) != splits


def test_fewer_cases_than_folds_is_a_clear_error():
    with pytest.raises(UnetzooError, match="2 case.*fewer than the 5 folds"):
        make_splits(["a", "b"], folds=5)


def test_plan_median_spacing_and_patch(organs):
    dataset = load_dataset(organs)
    plan = make_plan(dataset, dataset.cases)
    spacings = []
    for case in dataset.cases:
        img = nib.load(str(case.images[0]))
        axes = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)
        s = np.array(img.header.get_zooms()[:3])
        ras = np.empty(3)
        ras[axes] = s
        spacings.append(ras)
    assert plan.target_spacing == pytest.approx(np.median(spacings, axis=0).tolist(), rel=1e-4)
    multiples = divisor(plan.strides)
    assert all(p % m == 0 for p, m in zip(plan.patch_size, multiples))
    assert plan.num_classes == 4 and plan.n_channel_files == 1


def test_plan_rejects_unlisted_label_values(tmp_path):
    root = _msd(tmp_path / "msd")
    label = root / "labelsTr" / "hip_001.nii.gz"
    data = np.asarray(nib.load(str(label)).dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(label))
    dataset = load_dataset(root)
    with pytest.raises(UnetzooError, match=r"hip_001.nii.gz: label values \[7\] are not listed"):
        make_plan(dataset, dataset.cases)


def test_plan_rejects_shape_mismatch(tmp_path):
    root = _msd(tmp_path / "msd")
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(root / "labelsTr" / "hip_002.nii.gz"))
    dataset = load_dataset(root)
    with pytest.raises(
        UnetzooError, match=r"hip_002.nii.gz: label shape \(5, 5, 5\) differs from image shape \(6, 7, 8\)"
    ):
        make_plan(dataset, dataset.cases)


def test_prediction_inputs_folder_and_file(organs, tmp_path):
    cases = prediction_inputs(organs / "imagesTr", 1)
    assert sorted(cases) == [f"organs_{i:03d}" for i in range(6)]
    one = prediction_inputs(organs / "imagesTr" / "organs_002_0000.nii.gz", 1)
    assert list(one) == ["organs_002"]
    msd = _msd(tmp_path / "msd")
    assert sorted(prediction_inputs(msd / "imagesTr", 1)) == ["hip_000", "hip_001", "hip_002"]
