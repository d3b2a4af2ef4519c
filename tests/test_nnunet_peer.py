"""nnU-Net v2 itself as a compare peer (`nnunet`, `nnunet-2d`): the one-line refusals, its raw layout of links, and a
2-fold phantom through `compare` with a few steps (skipped, with its reason, when the `nnunet` extra is missing)."""

from __future__ import annotations

import json
import sys

import pytest

from unetzoo.config import Config
from unetzoo.data.datasets import load_dataset
from unetzoo.errors import UnetzooError
from unetzoo.experiments.experiment import Experiment, run_folder
from unetzoo.experiments.nnunet_peer import DATASET, check_peer, configuration, image_order, write_raw
from unetzoo.runfolder import RunFolder


def test_missing_extra_is_one_line_saying_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # an import of it now fails
    with pytest.raises(UnetzooError, match=r'needs nnU-Net v2, an optional extra: pip install -e "\.\[nnunet\]"'):
        check_peer("nnunet", 3)


def test_nnunet_2d_is_for_3d_data_and_nnunet_takes_the_data_s_configuration(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", object())
    with pytest.raises(UnetzooError, match="on 2D data use nnunet"):
        check_peer("nnunet-2d", 2)
    assert configuration("nnunet", 3) == "3d_fullres"
    assert configuration("nnunet", 2) == "2d"
    assert configuration("nnunet-2d", 3) == "2d"


def test_nnunet_shapes_are_given_in_the_image_axis_order():
    """nnU-Net's arrays are SimpleITK's (z, y, x) permuted by transpose_forward; unetzoo's are nibabel's (x, y, z)."""
    assert image_order([10, 20, 30], {"transpose_backward": [0, 1, 2]}, 3) == [30, 20, 10]
    # transpose_forward [2, 0, 1]: internal axes are SimpleITK's x, z, y; transpose_backward [1, 2, 0]
    assert image_order([30, 10, 20], {"transpose_backward": [1, 2, 0]}, 3) == [30, 20, 10]
    assert image_order([20, 30], {"transpose_backward": [0, 1, 2]}, 3) == [30, 20, 1]  # 2d: one slice
    assert image_order([20, 30], {"transpose_backward": [0, 1]}, 2) == [20, 30]


def test_raw_layout_links_the_training_cases_only(organs, tmp_path):
    dataset = load_dataset(organs)
    train = [c.name for c in dataset.cases[:4]]
    folder = tmp_path / DATASET
    write_raw(dataset, train, folder)
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert images == sorted(f"{n}_0000.nii.gz" for n in train)
    for name in train:  # links to the user's files, not copies
        link = folder / "labelsTr" / f"{name}.nii.gz"
        assert link.is_symlink() and link.resolve() == dataset.case(name).label.resolve()
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["file_ending"] == ".nii.gz"
    assert meta["labels"]["background"] == 0 and sorted(meta["labels"].values()) == sorted(dataset.labels)
    assert meta["channel_names"] == {"0": dataset.channel_names[0]}


def test_labels_with_a_gap_are_refused_in_one_line(organs, tmp_path):
    dataset = load_dataset(organs)
    dataset.labels = {0: "background", 1: "a", 3: "b"}
    with pytest.raises(UnetzooError, match=r"labels 0\.\.K without gaps; this dataset has \[0, 1, 3\]"):
        write_raw(dataset, [dataset.cases[0].name], tmp_path / DATASET)


def test_files_nnunet_cannot_read_as_they_are_are_refused_in_one_line(organs, tmp_path):
    dataset = load_dataset(organs)
    case = dataset.cases[0]
    case.label = tmp_path / f"{case.name}.tif"  # TIFF needs nnU-Net's own spacing files
    case.label.write_bytes(b"")
    with pytest.raises(UnetzooError, match=r"\.tif: the nnunet peer links files of one ending among \.nii\.gz"):
        write_raw(dataset, [case.name], tmp_path / DATASET)


def test_a_peer_run_is_not_taken_for_a_unetzoo_run(tmp_path):
    (tmp_path / "nnunet").mkdir()
    with pytest.raises(UnetzooError, match="a run of nnU-Net itself.*nnUNetv2_predict"):
        RunFolder(tmp_path).require()


@pytest.mark.slow
def test_two_fold_phantom_through_compare(organs, tmp_path):
    """nnU-Net's planning, preprocessing, training (2 epochs of 1 step), prediction and the leaderboard row, beside
    unetzoo's unet on the same folds and budget."""
    pytest.importorskip("nnunetv2", reason='the nnunet extra is not installed (pip install -e ".[nnunet]")')
    from unetzoo.experiments.compare import compare
    from unetzoo.experiments.executors import LocalExecutor
    from unetzoo.experiments.leaderboard import leaderboard

    config = Config()
    for assignment in ("data.folds=3", "train.iters_per_epoch=1", "data.num_workers=0", "data.cache_workers=0"):
        config.set(assignment)
    out = tmp_path / "out"
    executor = LocalExecutor(jobs=2)  # one thread per job: nnU-Net's planner and augmentation on one thread
    compare(organs, ["unet", "nnunet"], out, folds=(0, 1), config=config, steps=2, executor=executor, log=print)
    experiment = Experiment.load(out)
    splits = json.loads((out / "splits.json").read_text())
    for fold in (0, 1):
        run = run_folder(out, "nnunet", fold, 0)
        assert run.is_finished()
        raw = run.path / "nnunet" / "raw" / DATASET / "labelsTr"
        assert sorted(p.name.removesuffix(".nii.gz") for p in raw.iterdir()) == sorted(splits[fold]["train"])
        summary = json.loads(run.summary.read_text())
        assert sorted(c["case"] for c in summary["cases"]) == sorted(splits[fold]["val"])
        trained = json.loads((run.path / "nnunet_training.json").read_text())
        assert trained["steps"] == 2  # the step budget as epochs x iterations
        # saved as nnU-Net saves its own model, so that nnUNetv2_predict finds it
        assert trained["folder"].endswith(f"{DATASET}/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_all")
        assert [s["fraction"] for s in json.loads(run.snapshots.read_text())] == [0.25, 0.5, 1.0]
        config_json = json.loads(run.config.read_text())
        assert config_json["model_args"]["configuration"] == "3d_fullres" and config_json["train"]["select"] == "last"
    measured = json.loads(run_folder(out, "nnunet", 0, 0).benchmark.read_text())
    assert measured["cpu_count"] > 0 and "load_average" in measured  # the machine's load, as every model's records
    bench = measured["models"][0]
    assert bench["params"] > 0 and bench["macs"] > 0 and bench["train_step_s"] > 0 and bench["infer_s"] > 0
    unet_patch = json.loads(run_folder(out, "unet", 0, 0).config.read_text())["data"]["patch_size"]
    assert sorted(bench["patch"]) == sorted(unet_patch)  # the phantom's whole volume, in the image's axis order
    board = leaderboard(out)
    row = next(m for m in board["models"] if m["model"] == "nnunet")
    assert row["complete"] and row["cases"] == sum(len(splits[f]["val"]) for f in experiment.folds)
    assert row["cost"]["params"] == bench["params"] and row["reported"] == ["last"]
    assert board["ensemble"] is None  # nnU-Net keeps no probabilities: no pair with it, and one model is left
