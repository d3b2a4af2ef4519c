"""3D+t data: the cardiac phantom, 4D NIfTI through io, datasets (both layouts), plan, training on frames,
prediction of whole sequences in the input's exact geometry, and per-frame evaluation."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from conftest import tiny_config
from unetzoo.cli import main
from unetzoo.data.datasets import load_dataset
from unetzoo.data.phantoms import write_cardiac_phantom
from unetzoo.data.plan import make_plan
from unetzoo.data.splits import make_splits
from unetzoo.errors import UnetzooError
from unetzoo.evaluation import evaluate_folder
from unetzoo.io import case_frames, read_image, read_label

SHAPE, FRAMES = (24, 24, 8), 4


@pytest.fixture(scope="module")
def hearts(tmp_path_factory):
    return write_cardiac_phantom(tmp_path_factory.mktemp("hearts"), cases=4, frames=FRAMES, seed=3, shape=SHAPE)


def _labels(hearts, case="heart_000") -> np.ndarray:
    return np.asarray(nib.load(str(hearts / "labelsTr" / f"{case}.nii.gz")).dataobj)


@pytest.mark.slow
def test_cardiac_phantom_is_a_beating_nested_heart(hearts):
    meta = json.loads((hearts / "dataset.json").read_text())
    assert meta["modality"] == {"0": "MRI"} and meta["labels"] == {
        "0": "background",
        "1": "RV cavity",
        "2": "LV myocardium",
        "3": "LV cavity",
    }
    assert [e["image"] for e in meta["training"]] == [f"./imagesTr/heart_00{i}.nii.gz" for i in range(4)]
    for i in range(4):
        image, label = nib.load(str(hearts / "imagesTr" / f"heart_00{i}.nii.gz")), _labels(hearts, f"heart_00{i}")
        assert image.shape == label.shape == (*SHAPE, FRAMES)
        assert np.array_equal(image.affine, nib.load(str(hearts / "labelsTr" / f"heart_00{i}.nii.gz")).affine)
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
        for t in range(FRAMES):
            cavity = label[..., t] == 3
            assert cavity.any() and np.isin(label[..., t][binary_dilation(cavity)], [2, 3]).all(), (
                "LV cavity inside the myocardium"
            )
        volumes = [(label[..., t] == k).sum() for t in range(FRAMES) for k in (1, 3)]
        rv, lv = volumes[0::2], volumes[1::2]
        assert lv[FRAMES // 2] < lv[1] < lv[0] and rv[FRAMES // 2] < rv[0], (
            "systole (frame T/2) is smaller than diastole (frame 0)"
        )
        assert lv[1] == lv[3], "one cycle: frames t and T - t are the same phase"
        blood, muscle = np.asarray(image.dataobj)[label == 3].mean(), np.asarray(image.dataobj)[label == 2].mean()
        assert blood > 2 * muscle, "bright blood, dark myocardium"


@pytest.mark.slow
def test_cardiac_phantom_seed_reproducible(hearts, tmp_path):
    again = write_cardiac_phantom(tmp_path / "again", cases=1, frames=FRAMES, seed=3, shape=SHAPE)
    other = write_cardiac_phantom(tmp_path / "other", cases=1, frames=FRAMES, seed=4, shape=SHAPE)
    image = np.asarray(nib.load(str(hearts / "imagesTr" / "heart_000.nii.gz")).dataobj)
    assert np.array_equal(image, np.asarray(nib.load(str(again / "imagesTr" / "heart_000.nii.gz")).dataobj))
    assert np.array_equal(_labels(hearts), _labels(again))
    assert not np.array_equal(_labels(hearts), _labels(other))


def test_phantom_cardiac_command(tmp_path, capsys):
    assert (
        main(
            [
                "phantom",
                "cardiac",
                str(tmp_path / "h"),
                "--cases",
                "1",
                "--frames",
                "2",
                "--shape",
                "12",
                "14",
                "8",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert nib.load(str(tmp_path / "h" / "imagesTr" / "heart_000.nii.gz")).shape == (12, 14, 8, 2)
    assert main(["phantom", "cardiac", str(tmp_path / "x"), "--shape", "12", "14"]) == 2
    assert (
        capsys.readouterr().err.strip() == "unetzoo: error: --shape: cardiac takes 3 sizes of at least 8, got [12, 14]"
    )


@pytest.mark.slow
def test_frames_are_read_one_at_a_time_in_both_layouts(hearts, tmp_path):
    data = np.asarray(nib.load(str(hearts / "imagesTr" / "heart_001.nii.gz")).dataobj)
    image = read_image(hearts / "imagesTr" / "heart_001.nii.gz", 3, frame=2)
    assert image.array.shape == (1, *SHAPE) and np.allclose(image.array[0], data[..., 2])
    assert np.array_equal(
        read_label(hearts / "labelsTr" / "heart_001.nii.gz", 3, frame=2).array, _labels(hearts, "heart_001")[..., 2]
    )
    with pytest.raises(UnetzooError, match="has no time frame 4"):
        read_image(hearts / "imagesTr" / "heart_001.nii.gz", 3, frame=4)
    # the same case in the nnU-Net layout (one channel file CASE_0000)
    nnunet = tmp_path / "nnunet"
    (nnunet / "imagesTr").mkdir(parents=True)
    (nnunet / "labelsTr").mkdir()
    shutil.copy(hearts / "imagesTr" / "heart_001.nii.gz", nnunet / "imagesTr" / "heart_001_0000.nii.gz")
    shutil.copy(hearts / "labelsTr" / "heart_001.nii.gz", nnunet / "labelsTr")
    (nnunet / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
                "file_ending": ".nii.gz",
            }
        )
    )
    for root in (hearts, nnunet):
        dataset = load_dataset(root)
        items = dataset.frame_items(["heart_001"])
        assert [(i["case_index"], i["frame_index"], i["num_frames"]) for i in items] == [
            (0, t, FRAMES) for t in range(FRAMES)
        ]
        assert make_plan(dataset, dataset.cases).median_shape == [float(s) for s in SHAPE]


@pytest.mark.slow
def test_splits_keep_a_subjects_frames_together(hearts):
    dataset = load_dataset(hearts)
    for split in make_splits([c.name for c in dataset.cases], folds=2, seed=0):
        train, val = dataset.frame_items(split["train"]), dataset.frame_items(split["val"])
        assert {i["name"] for i in train}.isdisjoint({i["name"] for i in val})
        for items, names in ((train, split["train"]), (val, split["val"])):
            assert [(i["name"], i["frame_index"]) for i in items] == [(n, t) for n in names for t in range(FRAMES)]
            assert [i["case_index"] for i in items] == [k for k in range(len(names)) for _ in range(FRAMES)]


@pytest.mark.slow
def test_per_epoch_validation_limit_counts_subjects(hearts):
    from unetzoo.methods import build_method
    from unetzoo.training.module import SegmentationModule

    dataset = load_dataset(hearts)
    plan = make_plan(dataset, dataset.cases)
    config = tiny_config()
    config.train.val_cases = 1
    method, config = build_method(config, plan)
    module = SegmentationModule(method, config, plan, val_items=dataset.frame_items(["heart_002", "heart_003"]))
    patches = module.val_dataloader().dataset  # the default: fixed patches, here from every frame of the one subject
    assert {(p["name"], p["frame_index"]) for p in patches} == {("heart_002", t) for t in range(FRAMES)}
    config.train.val_patches = 0  # whole frames
    assert [(i["name"], i["frame_index"]) for i in module.val_dataloader().dataset] == [
        ("heart_002", t) for t in range(FRAMES)
    ]


@pytest.mark.slow
def test_4d_image_in_a_multichannel_dataset_is_a_channel_mismatch(hearts, tmp_path):
    data = tmp_path / "two"
    shutil.copytree(hearts, data)
    meta = json.loads((data / "dataset.json").read_text())
    meta["modality"] = {"0": "MRI", "1": "MRI"}
    (data / "dataset.json").write_text(json.dumps(meta))
    dataset = load_dataset(data)
    assert case_frames(dataset.cases[0].images, 2) == 1  # with two channels a 4D file holds channels
    with pytest.raises(
        UnetzooError,
        match=r"heart_000.nii.gz: has 4 channel\(s\), dataset.json lists 2 \(a 4D image is 3D\+t only in a 1-channel dataset",
    ):
        make_plan(dataset, dataset.cases)
    # a 3D label for a 3D+t image
    one = tmp_path / "one"
    shutil.copytree(hearts, one)
    label = nib.load(str(one / "labelsTr" / "heart_000.nii.gz"))
    nib.save(
        nib.Nifti1Image(np.asarray(label.dataobj)[..., 0], label.affine), str(one / "labelsTr" / "heart_000.nii.gz")
    )
    dataset = load_dataset(one)
    with pytest.raises(UnetzooError, match="heart_000.nii.gz: has 1 time frame"):
        make_plan(dataset, dataset.cases)


def test_evaluation_is_per_frame(tmp_path):
    """Hand-computed: frame 0 predicted exactly, frame 1 with half of the reference's 8 voxels."""
    ref = np.zeros((4, 4, 4, 2), np.uint8)
    ref[:2, :2, :2] = 1
    pred = ref.copy()
    pred[:1, :2, :2, 1] = 0
    for folder, data in (("ref", ref), ("pred", pred)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / folder / "a.nii.gz"))
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    assert [(c["case"], c["frame"]) for c in summary["cases"]] == [("a", 0), ("a", 1)]
    assert [c["metrics"]["1"]["Dice"] for c in summary["cases"]] == pytest.approx([1.0, 8 / 12])
    assert summary["mean"]["1"]["Dice"] == pytest.approx((1 + 8 / 12) / 2)
    with open(tmp_path / "out" / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["frame"], r["label"]) for r in rows] == [("a", "0", "1"), ("a", "1", "1")]
    nib.save(nib.Nifti1Image(pred[..., :1], np.eye(4)), str(tmp_path / "pred" / "a.nii.gz"))
    with pytest.raises(UnetzooError, match=r"a.nii.gz: has 1 time frame\(s\), reference .* has 2"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")


def test_keep_largest_component_is_per_frame():
    from unetzoo.inference.postprocessing import keep_largest

    label = np.zeros((6, 6, 6, 2), np.uint8)
    label[:2, :2, :2, 0] = 1  # frame 0: a block of 8 and one voxel that touches frame 1's block in time
    label[4, 4, 4, 0] = 1
    label[4:, 4:, 4:, 1] = 1  # frame 1: a block of 8 and one voxel
    label[0, 0, 0, 1] = 1
    expected = np.zeros_like(label)
    expected[:2, :2, :2, 0] = 1
    expected[4:, 4:, 4:, 1] = 1
    assert np.array_equal(keep_largest(label, {1: 1}, frames=True), expected)


@pytest.mark.slow
def test_unet_trains_on_frames_and_predicts_sequences_in_the_input_geometry(hearts, tmp_path):
    from unetzoo.inference import Predictor
    from unetzoo.training.run import train

    config = tiny_config()
    config.data.folds, config.train.iters_per_epoch = 2, 2
    config.train.select = "best"  # a per-epoch validation, on the frames of an inner validation subject
    run = train(hearts, tmp_path / "run", config)
    log = next(run.glob("training_log_*.txt")).read_text()
    assert f"3D+t cases: {FRAMES} training and {FRAMES} per-epoch validation frames" in log  # a subject each
    split = json.loads((run / "splits.json").read_text())[0]
    for name in split["val"]:  # validation: every held-out subject predicted as one 4D file, evaluated per frame
        source, result = (
            nib.load(str(hearts / "imagesTr" / f"{name}.nii.gz")),
            nib.load(str(run / "validation" / f"{name}.nii.gz")),
        )
        assert result.shape == source.shape and np.array_equal(result.affine, source.affine)
        assert nib.load(str(run / "validation" / "postprocessed" / f"{name}.nii.gz")).shape == source.shape
    summary = json.loads((run / "validation" / "summary.json").read_text())
    assert sorted((c["case"], c["frame"]) for c in summary["cases"]) == [
        (n, t) for n in sorted(split["val"]) for t in range(FRAMES)
    ]

    from unetzoo.experiments.report import Slice, make_report

    assert make_report([run], tmp_path / "report").is_file()  # overlays of 3D+t cases show frame 0
    name = split["val"][0]
    cut = Slice([hearts / "imagesTr" / f"{name}.nii.gz"], hearts / "labelsTr" / f"{name}.nii.gz", axis=2)
    assert cut.where().startswith("frame 0, slice") and np.array_equal(
        cut.reference, np.rot90(_labels(hearts, name)[:, :, cut.index, 0])
    )

    predictor = Predictor(run)
    calls = []
    default = predictor.method.predict_sequence
    predictor.method.predict_sequence = lambda frames, grid=None: (
        calls.append((len(frames), grid)) or default(frames, grid)
    )
    probs = predictor.predict_probabilities([hearts / "imagesTr" / "heart_000.nii.gz"])
    assert calls == [(FRAMES, None)], "the frames of a case go to the method together"
    assert probs.shape == (4, *SHAPE, FRAMES) and np.allclose(probs.sum(0).numpy(), 1, atol=1e-4)

    fine = Predictor(run, upsample=2).predict_probabilities([hearts / "imagesTr" / "heart_000.nii.gz"])
    assert fine.shape == (4, *[2 * s for s in SHAPE], FRAMES), "another grid: every frame on it"

    # a 4D image given to a 2-channel model holds channels: a one-line error naming the file
    predictor.plan = dataclasses.replace(predictor.plan, channel_names=["MRI", "MRI"])
    with pytest.raises(
        UnetzooError, match=r"heart_000.nii.gz: has 4 channel\(s\), the model expects 2 \(a 4D image is 3D\+t only"
    ):
        predictor.predict_probabilities([hearts / "imagesTr" / "heart_000.nii.gz"])
