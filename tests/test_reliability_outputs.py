"""Outputs that never destroy or fake data, and bad options refused in one line (exit 2) before anything is
written: predict into a folder it did not fill, phantom into a dataset, report over datasets, checkpoints that do not
fit their run, evaluate/overlay/demo/phantom options."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from test_bad_input import untrained_run
from unetzoo.cli import main
from unetzoo.config import Config
from unetzoo.data.datasets import load_dataset
from unetzoo.data.phantoms import write_organs_phantom
from unetzoo.data.plan import make_plan
from unetzoo.errors import UnetzooError
from unetzoo.inference import predict
from unetzoo.inference.predictor import PREDICTION_RECORD


@pytest.fixture(scope="module")
def run(organs, tmp_path_factory) -> Path:
    """An untrained unet run on the organs phantom (config, plan, checkpoint_last.pt)."""
    dataset = load_dataset(organs)
    plan = make_plan(dataset, dataset.cases, [16, 16, 16])
    return untrained_run(tmp_path_factory.mktemp("run") / "unet", plan)


def _cli(capsys, *args) -> tuple[int, list[str]]:
    """``unetzoo ARGS`` in this process: its exit status and its stderr lines."""
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err.strip().splitlines()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- predict into a folder of references ----------------------------------------------------------------------


def test_predict_refuses_a_folder_it_did_not_write(run, organs, tmp_path, capsys):
    """`predict` must refuse an output folder holding files it did not write (references taken for finished
    predictions, or overwritten with --overwrite): one line naming one such file and how many, before any work."""
    refs = tmp_path / "refs"
    shutil.copytree(organs / "labelsTr", refs)
    before = _files(refs)
    for overwrite in ([], ["--overwrite"]):
        status, err = _cli(capsys, "predict", run, organs / "imagesTr", refs, "--device", "cpu", *overwrite)
        assert status == 2
        assert err[-1] == (
            f"unetzoo: error: {refs}: holds 6 image file(s) that predict did not write (e.g. organs_000.nii.gz): "
            "predict into an empty or new folder"
        )
    assert _files(refs) == before  # no reference overwritten, no record, no prediction


def test_predict_skips_only_its_own_finished_outputs(run, organs, tmp_path):
    """predict keeps a record of what it wrote (written atomically as each prediction lands, so a killed predict
    resumes) and skips only its own finished outputs; an empty folder is fine; a file changed since is not its own."""
    out = tmp_path / "pred"
    out.mkdir()  # an empty existing folder is fine
    written = predict(run, organs / "imagesTr", out, device="cpu")
    record = json.loads((out / PREDICTION_RECORD).read_text())
    assert record == {"files": {p.name: p.stat().st_size for p in written}}

    stamps = {p.name: p.stat().st_mtime_ns for p in written}
    killed = dict(record["files"], **{written[0].name: None})  # killed while writing the first case
    (out / PREDICTION_RECORD).write_text(json.dumps({"files": killed}))
    again = predict(run, organs / "imagesTr", out, device="cpu")
    assert again == written
    assert written[0].stat().st_mtime_ns != stamps[written[0].name]  # redone
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in written[1:])  # finished: skipped
    assert json.loads((out / PREDICTION_RECORD).read_text())["files"][written[0].name] == written[0].stat().st_size

    shutil.copy(organs / "labelsTr" / "organs_002.nii.gz", out / "organs_002.nii.gz")  # someone's file in its place
    with pytest.raises(
        UnetzooError, match=rf"^{out}: holds 1 image file\(s\) that predict did not write \(e\.g\. organs_002"
    ):
        predict(run, organs / "imagesTr", out, device="cpu", overwrite=True)
    assert (out / "organs_002.nii.gz").read_bytes() == (organs / "labelsTr" / "organs_002.nii.gz").read_bytes()


# ---- phantom ---------------------------------------------------------------------------------------------------


def test_phantom_refuses_a_non_empty_folder(tmp_path, capsys):
    """`phantom` into an existing dataset overwrites its dataset.json and cases; refuse a non-empty folder."""
    data = write_organs_phantom(tmp_path / "data", cases=1, seed=0, shape=(12, 12, 12), n_structures=1)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    status, err = _cli(capsys, "phantom", "organs", data, "--cases", "2")
    assert status == 2
    assert err == [f"unetzoo: error: {data}: is not an empty folder: write the phantom into a new or empty one"]
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def test_phantom_with_no_cases_is_refused(tmp_path, capsys):
    """`phantom --cases 0`: one line, exit 2, nothing written."""
    for kind in ("organs", "nuclei", "vessels", "cardiac"):
        status, err = _cli(capsys, "phantom", kind, tmp_path / kind, "--cases", "0")
        assert status == 2 and err == ["unetzoo: error: a phantom needs at least one case, got --cases 0"]
        assert not (tmp_path / kind).exists()


# ---- report ----------------------------------------------------------------------------------------------------


def test_report_refuses_runs_of_different_datasets(run, tmp_path, capsys):
    """`report` over runs of different datasets puts different labels in one column: refuse, naming the runs."""
    other = shutil.copytree(run, tmp_path / "liver")
    plan = json.loads((other / "plan.json").read_text())
    plan["labels"] = {"0": "background", "1": "liver", "2": "tumour", "3": "vessel"}
    (other / "plan.json").write_text(json.dumps(plan))
    status, err = _cli(capsys, "report", run, other, "--out", tmp_path / "report")
    assert status == 2 and len(err) == 1
    assert err[0].startswith(
        f"unetzoo: error: runs of different datasets: {other} has labels {{'0': 'background', '1': 'liver'"
    )
    assert f", {run} has {{'0': 'background', '1': 'organ1'" in err[0]
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("content", ['{"models": 3}', "[1, 2]", '{"models": [{"model": "unet"}]}', '"text"'])
def test_report_benchmark_of_the_wrong_shape(run, tmp_path, capsys, content):
    """`report --benchmark` with JSON of the wrong shape: one line, exit 2, before any work, nothing written."""
    bench = tmp_path / "benchmark.json"
    bench.write_text(content)
    status, err = _cli(capsys, "report", run, "--out", tmp_path / "report", "--benchmark", bench)
    assert status == 2 and len(err) == 1
    assert err[0].startswith(f"unetzoo: error: {bench}: not a benchmark.json of `unetzoo benchmark`")
    assert not (tmp_path / "report").exists()


# ---- checkpoints that do not fit their run ------------------------------------------------------------------------


def _narrowed(run: Path, folder: Path) -> Path:
    """A copy of ``run`` whose config.json asks for half the network width its checkpoint holds."""
    copy = shutil.copytree(run, folder)
    config = json.loads((copy / "config.json").read_text())
    config["model_args"]["base_features"] = 16  # the checkpoint's unet has 32
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_predict_and_benchmark_refuse_a_checkpoint_that_does_not_fit(run, organs, tmp_path, capsys):
    """A config.json whose model_args no longer match the checkpoint (predict / benchmark --run): one line naming
    the checkpoint and the mismatch, not a torch load_state_dict traceback; nothing written."""
    bad = _narrowed(run, tmp_path / "bad")
    expected = (
        f"unetzoo: error: {bad / 'checkpoint_last.pt'}: does not fit the model of the run's config.json (46 tensor(s) "
        "of another shape, e.g. encoder.stages.0.0.0.weight: (32, 1, 3, 3, 3) in the checkpoint, (16, 1, 3, 3, 3) in "
        "the model): were its model_args changed after training?"
    )
    status, err = _cli(capsys, "predict", bad, organs / "imagesTr", tmp_path / "pred", "--device", "cpu")
    assert status == 2 and err[-1] == expected and "Traceback" not in "".join(err)
    status, err = _cli(capsys, "benchmark", "--run", bad, "--out", tmp_path / "bench", "--device", "cpu")
    assert status == 2 and err[-1] == expected
    assert not (tmp_path / "pred").exists() and not (tmp_path / "bench").exists()
    assert not (bad / "benchmark.json").exists()


def test_checkpoint_without_state_dict(run, organs, tmp_path, capsys):
    """A checkpoint without `state_dict`: one line naming it, exit 2."""
    bad = shutil.copytree(run, tmp_path / "bad")
    torch.save({"epoch": 3}, bad / "checkpoint_last.pt")
    status, err = _cli(capsys, "predict", bad, organs / "imagesTr", tmp_path / "pred", "--device", "cpu")
    assert status == 2
    assert err[-1] == (
        f"unetzoo: error: {bad / 'checkpoint_last.pt'}: holds no 'state_dict' (the model weights): not a checkpoint "
        "of a unetzoo run"
    )
    assert not (tmp_path / "pred").exists()


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_that_does_not_fit(trained_run, organs, tmp_path):
    """A config.json whose model_args no longer match the checkpoint (resume): one line naming the checkpoint and
    the mismatch, not a traceback from Lightning's load_state_dict."""
    from unetzoo.training.run import train

    bad = _narrowed(trained_run, tmp_path / "bad")
    with pytest.raises(UnetzooError) as error:
        train(organs, bad, Config.load(bad / "config.json"), resume=True)
    assert str(error.value).startswith(f"{bad / 'checkpoint_last.pt'}: does not fit the model of the run's config.json")
    assert "tensor(s) of another shape" in str(error.value)


# ---- evaluate ----------------------------------------------------------------------------------------------------


def test_evaluate_negative_nsd_tolerance(organs, tmp_path, capsys):
    """`evaluate --nsd-tolerance -1`: one line, exit 2, before any work (no empty --out left)."""
    for tolerance in ("-1", "nan"):
        status, err = _cli(
            capsys,
            "evaluate",
            organs / "labelsTr",
            organs / "labelsTr",
            "--out",
            tmp_path / "ev",
            "--nsd-tolerance",
            tolerance,
        )
        assert status == 2 and err == [
            f"unetzoo: error: --nsd-tolerance: expected a distance in mm >= 0, got {float(tolerance)}"
        ]
        assert not (tmp_path / "ev").exists()


def test_evaluate_a_subset_of_label_ids(organs, tmp_path, capsys):
    """`evaluate --label-ids 1` on 3-class maps: evaluate only those ids rather than refusing."""
    status, err = _cli(
        capsys, "evaluate", organs / "labelsTr", organs / "labelsTr", "--out", tmp_path / "ev", "--label-ids", "1"
    )
    assert status == 0, err
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["label_ids"] == [1] and list(summary["mean"]) == ["1"]
    assert summary["mean"]["1"]["Dice"] == 1.0
    status, err = _cli(
        capsys, "evaluate", organs / "labelsTr", organs / "labelsTr", "--out", tmp_path / "e0", "--label-ids", "0", "1"
    )
    assert status == 2 and err == [
        "unetzoo: error: --label-ids: expected distinct label ids >= 1 (0 is the background), got [0, 1]"
    ]
    assert not (tmp_path / "e0").exists()


def test_evaluate_warns_when_predictions_are_the_references(organs, tmp_path, caplog):
    """`evaluate DIR DIR` (warn: the predictions folder is the references folder)."""
    from unetzoo.evaluation import evaluate_folder

    with caplog.at_level(logging.WARNING, logger="unetzoo.evaluation"):
        evaluate_folder(organs / "labelsTr", organs / "labelsTr", tmp_path / "ev")
    assert [r.getMessage() for r in caplog.records if r.name == "unetzoo.evaluation"] == [
        f"{organs / 'labelsTr'}: the predictions folder is the references folder: every case is compared with itself"
    ]


# ---- overlay, demo ----------------------------------------------------------------------------------------------


def test_overlay_alpha_outside_zero_one(organs, tmp_path, capsys):
    """`overlay --alpha 5` (refuse outside [0, 1])."""
    case = [organs / "imagesTr" / "organs_000_0000.nii.gz", organs / "labelsTr" / "organs_000.nii.gz"]
    for alpha in ("5", "-0.1"):
        status, err = _cli(capsys, "overlay", *case, case[1], "--alpha", alpha, "--out", tmp_path / "o.png")
        assert status == 2 and err == [f"unetzoo: error: --alpha: expected an opacity in [0, 1], got {float(alpha)}"]
    assert not (tmp_path / "o.png").exists()
    status, _ = _cli(capsys, "overlay", *case, case[1], "--alpha", "1", "--out", tmp_path / "o.png")
    assert status == 0 and (tmp_path / "o.png").is_file()


def test_demo_with_zero_epochs_writes_nothing(tmp_path, capsys):
    """`demo --epochs 0` (check before writing data)."""
    status, err = _cli(capsys, "demo", tmp_path / "demo", "--epochs", "0")
    assert status == 2 and err == ["unetzoo: error: train.epochs (--epochs): expected an integer >= 1, got 0"]
    assert not (tmp_path / "demo").exists()
