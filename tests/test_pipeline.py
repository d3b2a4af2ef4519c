"""End to end: dataset folder -> train -> predict -> evaluate, resume after SIGKILL, DDP, bad inputs."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, run_cli, tiny_config
from unetzoo.inference import predict
from unetzoo.training.run import train


@pytest.mark.slow
def test_run_folder_holds_nnunet_outputs(trained_run):
    for name in (
        "config.json",
        "plan.json",
        "splits.json",
        "inner_split.json",
        "checkpoint_last.pt",
        "progress.png",
        "history.json",
    ):
        assert (trained_run / name).is_file(), name
    assert not (trained_run / "checkpoint_best.pt").exists()  # the default, select=last: no per-epoch validation
    assert list(trained_run.glob("training_log_*.txt"))
    with open(trained_run / "logs" / "csv" / "version_0" / "metrics.csv", newline="") as f:  # Lightning's CSVLogger
        rows = list(csv.DictReader(f))
    epoch_rows = [r for r in rows if r["train_loss"]]
    history = json.loads((trained_run / "history.json").read_text())
    assert len(epoch_rows) == len(history) == 1
    assert float(epoch_rows[0]["train_loss"]) == pytest.approx(history[0]["train_loss"])
    assert {"epoch", "lr", "train_loss"} <= set(rows[0]) and "val_dice" not in rows[0]
    summary = json.loads((trained_run / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2", "3"}
    assert {"Dice", "IoU", "NSD", "HD95"} <= set(summary["mean"]["1"])
    splits = json.loads((trained_run / "splits.json").read_text())
    assert len(splits) == 5
    validation = sorted(p.name for p in (trained_run / "validation").glob("*.nii.gz"))
    assert validation == sorted(f"{n}.nii.gz" for n in splits[0]["val"])
    config = json.loads((trained_run / "config.json").read_text())
    plan = json.loads((trained_run / "plan.json").read_text())
    assert (
        config["model_args"]["strides"] == plan["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    )  # 16^3: 16 -> 8 -> 4, recorded
    assert (
        config["model_args"]["kernel_sizes"] == plan["kernel_sizes"]
        and config["train"]["batch_size"] == plan["batch_size"] >= 2
    )
    from unetzoo.device import resolve_precision

    # what ran, not "auto": the precision auto chose on this CPU, and the device
    assert (
        config["train"]["precision"] == resolve_precision("auto", torch.device("cpu"))[0]
        and config["train"]["device"] == "cpu"
    )


@pytest.mark.slow
def test_fold_all_trains_on_every_case_without_held_out_validation(tmp_path):
    """nnU-Net's fold "all", even on a dataset with fewer cases than cross-validation folds."""
    from unetzoo.data.phantoms import write_organs_phantom

    data = write_organs_phantom(tmp_path / "data", cases=3, seed=2, shape=(20, 20, 16))
    run = tmp_path / "run"
    result = run_cli(
        "train",
        data,
        "--out",
        run,
        "--fold",
        "all",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "2",
        "--patch",
        "16",
        "16",
        "16",
        "--num-workers",
        "0",
        "--set",
        "data.cache_workers=0",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "checkpoint_last.pt").is_file() and json.loads((run / "config.json").read_text())["fold"] == "all"
    assert not (run / "splits.json").exists() and not (run / "validation").exists()
    log = next(run.glob("training_log_*.txt")).read_text()
    assert "fold all: 3 training, 3 validation" in log and "no held-out cases" in log
    # nothing held out to choose post-processing on: the run says so, and how to get one
    assert "no post-processing chosen" in log and "copy its postprocessing.json" in log
    assert "predict --keep-largest" in log
    assert not (run / "postprocessing.json").exists()
    bad = run_cli("train", data, "--out", tmp_path / "other", "--fold", "first")
    assert bad.returncode == 2 and "a fold number or 'all'" in bad.stderr


@pytest.mark.slow
def test_predictions_keep_input_geometry_and_skip_done_cases(trained_run, organs, tmp_path):
    out = tmp_path / "pred"
    written = predict(trained_run, organs / "imagesTr", out)
    assert len(written) == 6
    for path in written:
        source = nib.load(str(organs / "imagesTr" / path.name.replace(".nii.gz", "_0000.nii.gz")))
        result = nib.load(str(path))
        assert result.shape == source.shape
        assert np.array_equal(result.affine, source.affine)
        assert set(np.unique(np.asarray(result.dataobj)).tolist()) <= {0, 1, 2, 3}
    stamp = written[0].stat().st_mtime_ns
    predict(trained_run, organs / "imagesTr", out)
    assert written[0].stat().st_mtime_ns == stamp  # already predicted: skipped
    predict(trained_run, organs / "imagesTr", out, overwrite=True)
    assert written[0].stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_cli_predict_one_file_then_evaluate(trained_run, organs, tmp_path):
    result = run_cli(
        "predict", trained_run, organs / "imagesTr" / "organs_001_0000.nii.gz", tmp_path / "p", "--save-probabilities"
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p" / "organs_001.nii.gz").is_file()
    probabilities = np.load(tmp_path / "p" / "organs_001.npz")["probabilities"]
    assert probabilities.shape == (4, *nib.load(str(tmp_path / "p" / "organs_001.nii.gz")).shape)
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(organs / "labelsTr" / "organs_001.nii.gz", labels)
    result = run_cli("evaluate", tmp_path / "p", labels, "--out", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert [c["case"] for c in summary["cases"]] == ["organs_001"]
    assert (tmp_path / "eval" / "cases.csv").read_text().startswith("case,label,Dice")


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(organs, tmp_path):
    run = tmp_path / "run"
    train(organs, run, tiny_config(epochs=1))
    first = torch.load(run / "checkpoint_last.pt", weights_only=False)
    config = tiny_config(epochs=2)
    train(organs, run, config, resume=True)
    last = torch.load(run / "checkpoint_last.pt", weights_only=False)
    assert first["epoch"] == 0 and last["epoch"] == 1
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [0, 1]


@pytest.mark.slow
def test_resume_after_the_last_epoch_restores_its_history(organs, tmp_path):
    """Killed after the last epoch's checkpoint, before history.json: the resumed run has no epoch left to train, and
    still writes the history its checkpoint holds."""
    run = tmp_path / "run"
    train(organs, run, tiny_config(epochs=1))
    (run / "history.json").write_text("[]")  # as the kill left it: the checkpoint written, the history not yet
    train(organs, run, tiny_config(epochs=1), resume=True)
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [0]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(organs, tmp_path):
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "unetzoo.cli",
        "train",
        str(organs),
        "--model",
        "unet",
        "--out",
        str(run),
        "--epochs",
        "3",
        "--iters-per-epoch",
        "40",
        "--patch",
        "16",
        "16",
        "16",
        "--num-workers",
        "0",
        "--set",
        "data.cache_workers=0",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoint_last.pt").exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert (run / "checkpoint_last.pt").exists(), "no checkpoint after the first epoch"
        time.sleep(1.0)  # now inside the second epoch
        assert process.poll() is None, "training ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert not list(run.glob(".tmp_*")), "a half-written checkpoint was left behind"
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["epoch"] == 0
    logs_before = set(run.glob("training_log_*.txt"))
    time.sleep(1.1)  # a new timestamped log for the resumed process
    result = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    new_log = (set(run.glob("training_log_*.txt")) - logs_before).pop().read_text()
    assert "epoch 0:" not in new_log and "epoch 1:" in new_log and "epoch 2:" in new_log
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["epoch"] == 2


@pytest.mark.slow
def test_ddp_over_two_cpu_processes(organs, tmp_path):
    run = tmp_path / "ddp"
    result = run_cli(
        "train",
        organs,
        "--model",
        "unet",
        "--out",
        run,
        "--epochs",
        "1",
        "--iters-per-epoch",
        "2",
        "--patch",
        "16",
        "16",
        "16",
        "--devices",
        "2",
        "--num-workers",
        "0",
        "--set",
        "data.cache_workers=0",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "checkpoint_last.pt").is_file() and (run / "validation" / "summary.json").is_file()
    logs = list(run.glob("training_log_*.txt"))
    assert len(logs) == 1  # only global rank 0 opens a log
    assert logs[0].read_text().count("epoch 0:") == 1


# ---- bad input: one line naming the file, exit status 2, no traceback, nothing written lost -------------


def _broken_copy(organs, tmp_path, breaker):
    data = tmp_path / "data"
    shutil.copytree(organs, data)
    return breaker(data)


def _truncate(data):
    path = data / "imagesTr" / "organs_003_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    return data, "organs_003_0000.nii.gz"


def _shape_mismatch(data):
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(data / "labelsTr" / "organs_002.nii.gz"))
    return data, "organs_002.nii.gz: label shape"


def _unknown_label(data):
    path = data / "labelsTr" / "organs_004.nii.gz"
    image = nib.load(str(path))
    label = np.asarray(image.dataobj).copy()
    label[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(label, image.affine), str(path))
    return data, "organs_004.nii.gz: label values [9]"


def _no_dataset_json(data):
    (data / "dataset.json").unlink()
    return data, "dataset.json: missing"


def _nan_voxels(data):
    path = data / "imagesTr" / "organs_005_0000.nii.gz"
    image = nib.load(str(path))
    array = np.asarray(image.dataobj, dtype=np.float32).copy()
    array[2, 3, 4] = np.nan
    nib.save(nib.Nifti1Image(array, image.affine), str(path))
    return data, "organs_005_0000.nii.gz: contains 1 NaN"


def _assert_one_line_error(result, expected):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("unetzoo: error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("breaker", [_truncate, _shape_mismatch, _unknown_label, _no_dataset_json, _nan_voxels])
def test_train_rejects_bad_dataset(organs, tmp_path, breaker):
    data, expected = _broken_copy(organs, tmp_path, breaker)
    result = run_cli(
        "train",
        data,
        "--model",
        "unet",
        "--out",
        tmp_path / "run",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "1",
        "--patch",
        "16",
        "16",
        "16",
    )
    _assert_one_line_error(result, expected)


@pytest.mark.slow
@pytest.mark.parametrize("breaker", [_truncate, _nan_voxels])
def test_predict_rejects_bad_input_and_keeps_earlier_predictions(trained_run, organs, tmp_path, breaker):
    data, expected = _broken_copy(organs, tmp_path, breaker)
    out = tmp_path / "pred"
    result = run_cli("predict", trained_run, data / "imagesTr", out)
    _assert_one_line_error(result, expected)
    done = sorted(p.name for p in out.glob("*.nii.gz"))
    assert done, "cases before the bad one should be kept"
    for path in out.glob("*.nii.gz"):
        nib.load(str(path)).get_fdata()  # every file written is whole
    assert not list(out.glob(".tmp_*"))


@pytest.mark.slow
def test_evaluate_leaves_unlisted_label_values_out(organs, tmp_path):
    """Given label ids are evaluated, a value outside them is not (a subset of the classes may be evaluated)."""
    data, expected = _broken_copy(organs, tmp_path, _unknown_label)
    result = run_cli(
        "evaluate", data / "labelsTr", organs / "labelsTr", "--out", tmp_path / "eval", "--labels-ids", "1", "2", "3"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["label_ids"] == [1, 2, 3]


@pytest.mark.slow
def test_evaluate_rejects_truncated_prediction(organs, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(organs / "labelsTr", pred)
    path = pred / "organs_000.nii.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()))[:150])
    result = run_cli("evaluate", pred, organs / "labelsTr", "--out", tmp_path / "eval")
    _assert_one_line_error(result, "organs_000.nii.gz")


# ---- real data: predictions in the input's exact geometry ----------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "ct-example").is_dir(), reason="shared data not present")
def test_real_ct_and_hippocampus_predictions_keep_geometry(organs, tmp_path):
    config = tiny_config()
    config.data.target_spacing = [3.0, 3.0, 3.0]  # coarse, so the CT predicts in seconds
    run = train(organs, tmp_path / "coarse", config)
    inputs = [
        SHARED_DATA / "ct-example" / "imagesTr" / "abdomen_001_0000.nii.gz",
        SHARED_DATA / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz",
    ]
    for source in inputs:
        [written] = predict(run, source, tmp_path / "pred")
        expected, result = nib.load(str(source)), nib.load(str(written))
        assert result.shape == expected.shape[:3]
        assert np.array_equal(result.affine, expected.affine)
        assert np.array_equal(result.header.get_zooms()[:3], expected.header.get_zooms()[:3])


@pytest.mark.slow
def test_phantom_command(tmp_path):
    result = run_cli("phantom", "organs", tmp_path / "ph", "--cases", "2", "--seed", "4")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "ph" / "labelsTr").iterdir()) == [
        "organs_000.nii.gz",
        "organs_001.nii.gz",
    ]


@pytest.mark.slow
def test_models_command_lists_every_model():
    from unetzoo import list_models

    result = run_cli("models")
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.splitlines()]
    assert listed == list_models()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("UNETZOO_SKIP_2D") == "1", reason="2D pipeline skipped")
def test_2d_png_pipeline_writes_masks_of_input_size(tmp_path):
    from unetzoo.data.phantoms import write_nuclei_phantom

    data = write_nuclei_phantom(tmp_path / "nuclei", cases=5, seed=0, shape=(40, 52))
    config = tiny_config()
    config.data.patch_size = [32, 32]
    run = train(data, tmp_path / "run2d", config)
    written = predict(run, data / "imagesTr", tmp_path / "pred")
    from PIL import Image

    for path in written:
        with Image.open(path) as mask, Image.open(data / "imagesTr" / path.name.replace(".png", "_0000.png")) as image:
            assert mask.size == image.size and mask.mode == "L"
