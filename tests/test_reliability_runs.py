"""Runs that stop, resume, share a folder or start from a damaged one: a stop (SIGTERM) is a non-zero exit said in
one line and stays resumable, a resume cannot change what the run trained with, two trainings never write into one
folder, and a bad splits file is one line before anything is written."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import torch

from conftest import tiny_config
from unetzoo.cli import main
from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.errors import Stopped, UnetzooError, exit_status
from unetzoo.experiments.compare import compare
from unetzoo.experiments.executors import ResumableJob
from unetzoo.experiments.experiment import run_folder
from unetzoo.experiments.leaderboard import leaderboard
from unetzoo.runfolder import RunFolder
from unetzoo.training.run import _stop_on_sigterm, resumed_config

CASES = [f"organs_{i:03d}" for i in range(6)]  # the case names of the `organs` phantom
TINY = ["--patch", "16", "16", "16", "--iters-per-epoch", "2", "--lr", "1e-3", "--num-workers", "0"]
TINY_SETS = ["--set", "data.cache_workers=0", "--set", "train.precision=32-true", "--device", "cpu"]


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` and its bytes (None: no folder), to assert that a command wrote nothing."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(stderr: str) -> str:
    """The one line a refused command prints (no traceback, nothing else)."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def fabricated_run(run_dir: Path, config: Config | None = None) -> RunFolder:
    """A run folder as a resume reads it before training: config.json, plan.json, splits.json and a
    checkpoint_last.pt (not a real one: what is checked before training never opens it)."""
    run_dir.mkdir(parents=True)
    run = RunFolder(run_dir)
    config = config or tiny_config()
    config.save(run.config)
    Plan.synthetic([16, 16, 16]).save(run.plan)
    run.splits.write_text(json.dumps([{"train": CASES[:4], "val": CASES[4:]}, {"train": CASES[2:], "val": CASES[:2]}]))
    run.checkpoint_file("last").write_bytes(b"not read before training")
    return run


# ---- 1. SIGTERM: a stop is a non-zero exit said in one line, resumable -------------------------------------------


def test_sigterm_raises_stopped_and_exits_143_in_one_line(capsys):
    """ "SIGTERM makes `train` exit 0 ... A stopped run exits non-zero (143 for SIGTERM), says so in one line, is
    resumable": inside the training's handler SIGTERM raises Stopped (code 143), printed as one line; outside it the
    previous handler is back."""
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stop:
        with _stop_on_sigterm():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes: the raise comes before this ends
    assert stop.value.code == 143 and str(stop.value) == "received SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == previous

    def stopped():
        raise Stopped(signal.SIGTERM, "/runs/x: training stopped (received SIGTERM); resume it with --resume")

    assert exit_status(stopped) == 143
    assert one_line(capsys.readouterr().err) == (
        "unetzoo: /runs/x: training stopped (received SIGTERM); resume it with --resume"
    )


@pytest.mark.slow
def test_sigterm_stops_train_with_143_and_resume_finishes(organs, tmp_path):
    """ "SIGTERM makes `train` exit 0 ... A stopped run exits non-zero (143 for SIGTERM), says so in one line, is
    resumable": `unetzoo train` killed by SIGTERM after its first checkpoint exits 143 with one line naming the stop
    and --resume, and `train --resume` then finishes the run, recording the changed epoch count."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "unetzoo.cli", "train", str(organs), "--out", str(out), "--epochs", "1000"]
        + TINY
        + TINY_SETS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    last = out / "checkpoint_last.pt"
    try:
        deadline = time.time() + 240
        while not last.is_file() and process.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert process.poll() is None and last.is_file(), "the run ended or took too long before its first checkpoint"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"unetzoo: {out}: training stopped (received SIGTERM)") and "--resume" in line, line
    assert not (out / ".lock").exists() and not RunFolder(out).is_finished()
    logs = sorted(out.glob("training_log_*.txt"))
    assert "training stopped: " in logs[-1].read_text()

    epochs = torch.load(last, map_location="cpu", weights_only=False)["epoch"] + 2  # one more epoch than it finished
    resumed = subprocess.run(
        [sys.executable, "-m", "unetzoo.cli", "train", str(organs), "--out", str(out), "--resume"]
        + ["--epochs", str(epochs), "--num-workers", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert RunFolder(out).is_finished() and not (out / ".lock").exists()
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == epochs
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == list(range(epochs))


class NoTraining:
    """An executor whose train jobs end at once with no error: the first leaves its run with a checkpoint (killed
    after it), the others leave nothing (killed before it)."""

    def __init__(self):
        self.jobs = []

    def describe(self) -> dict:
        return {"executor": "none"}

    def run(self, out, jobs, log=print, exclusive: bool = False) -> dict:
        jobs = list(jobs)
        self.jobs += jobs
        for job in jobs[:1]:
            if job.kind == "train":
                run = run_folder(out, job.model, job.fold)
                run.path.mkdir(parents=True, exist_ok=True)
                run.checkpoint_file("last").write_bytes(b"checkpoint")
        return {}


def test_compare_counts_an_unfinished_run_as_failed_and_resumes_it(organs, tmp_path):
    """ "`compare` treats it as unfinished (resumes it on the next invocation ...)": a job that ended without its run
    finished is reported as failed, the model is not ranked, and the next invocation resumes the run that has a
    checkpoint and starts the one that has none."""
    out, lines = tmp_path / "exp", []
    config = tiny_config()
    with pytest.raises(UnetzooError) as error:
        compare(organs, ["unet"], out, folds=(0, 1), config=config, executor=NoTraining(), log=lines.append)
    message = str(error.value)
    assert message.startswith("2 job(s) failed (") and "run the same command again to finish" in message
    for fold in (0, 1):
        assert (
            f"train_unet_fold{fold}_seed0: ended before its run finished ({run_folder(out, 'unet', fold)})" in message
        )
    board = leaderboard(out)
    assert [(m["model"], m["complete"]) for m in board["models"]] == [("unet", False)]
    assert "Not ranked" in (out / "leaderboard.md").read_text()

    lines.clear()
    executor = NoTraining()
    with pytest.raises(UnetzooError, match="2 job"):
        compare(organs, ["unet"], out, folds=(0, 1), config=config, executor=executor, log=lines.append)
    assert "0 finished, 1 to resume, 1 to start" in lines[0]
    assert [j.name for j in executor.jobs] == ["train_unet_fold0_seed0", "train_unet_fold1_seed0"]


def test_slurm_job_is_checkpointable_so_slurm_requeues_it(monkeypatch):
    """ "on SLURM, requeues it: submitit's checkpointing does this": the job a SLURM executor submits is submitit
    Checkpointable, whose checkpoint() resubmits the same job with the same arguments; a stop inside it is the
    job's error in one line."""
    job = ResumableJob()
    assert isinstance(job, submitit.helpers.Checkpointable)
    again = job.checkpoint("/exp", "train", "unet", "0")
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is job and again.args == ("/exp", "train", "unet", "0") and again.kwargs == {}

    def stopped(*args):
        raise Stopped(signal.SIGTERM, "/exp/runs/unet/fold0: training stopped (received SIGTERM); resume it")

    monkeypatch.setattr("unetzoo.experiments.jobs.run_job", stopped)
    with pytest.raises(UnetzooError, match=r"^/exp/runs/unet/fold0: training stopped \(received SIGTERM\)"):
        job("/exp", "train", "unet", "0")


# ---- 6. a resume cannot change what the run trained with; a new run makes its own plan and splits ------------------


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("train.lr", 0.01, "train.lr: 0.001 -> 0.01"),
        ("data.patch_size", [24, 24, 24], "data.patch_size: [16, 16, 16] -> [24, 24, 24]"),
        ("data.folds", 3, "data.folds: 5 -> 3"),
        ("data.group_by", r"organs_\d", r"data.group_by: '' -> 'organs_\\d'"),
    ],
)
def test_resume_refuses_a_changed_option_naming_it(tmp_path, field, value, expected):
    """ "`--resume` with a changed `--lr`, `--patch`, `--folds` or `--group-by` silently keeps the old values while
    `config.json` records the new ones ... Refuse a resume whose options differ (one line naming each difference)"."""
    saved, new = tiny_config(), tiny_config()
    section, name = field.split(".")
    setattr(getattr(new, section), name, value)
    path = tmp_path / "config.json"
    with pytest.raises(UnetzooError) as error:
        resumed_config(saved, new, path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: --resume cannot change {expected} ")


def test_resume_refusal_names_every_difference_and_writes_nothing(organs, tmp_path, capsys):
    """ "Refuse a resume whose options differ (one line naming each difference)": through `unetzoo train --resume`,
    before anything is read or written."""
    run = fabricated_run(tmp_path / "run")
    before = snapshot(run.path)
    status = main(["train", str(organs), "--out", str(run.path), "--resume", "--lr", "0.01", "--folds", "3"])
    line = one_line(capsys.readouterr().err)
    assert status == 2
    assert line.startswith(f"unetzoo: error: {run.config}: --resume cannot change ")
    assert "data.folds: 5 -> 3" in line and "train.lr: 0.001 -> 0.01" in line
    assert snapshot(run.path) == before


def test_resume_takes_a_changed_epoch_count_and_device():
    """ "... or apply them and record them": how long and on what a run trains may change on a resume; the config it
    continues with (recorded in its config.json when it restarts) holds the new values and the run's own others."""
    saved, new = tiny_config(epochs=2), tiny_config(epochs=2)  # the CLI starts a resume from the run's config.json
    new.data.patch_size = None  # an option left to the data keeps the run's value
    new.train.epochs, new.train.device = 7, "cpu"
    config = resumed_config(saved, new, Path("config.json"))
    assert (config.train.epochs, config.train.device) == (7, "cpu")
    assert (config.train.lr, config.data.patch_size, config.train.iters_per_epoch) == (1e-3, [16, 16, 16], 3)


@pytest.mark.slow
def test_new_train_replaces_the_plan_and_splits_of_a_run_killed_before_its_checkpoint(organs, tmp_path):
    """ "a new `train` into the folder of a run killed before its first checkpoint silently reuses that run's
    `plan.json` and `splits.json`": a new run makes its own, for its own patch size and folds."""
    from unetzoo.training.run import train

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    Plan.synthetic([32, 32, 32]).save(run.plan)
    stale = [{"train": CASES[:3], "val": CASES[3:]}, {"train": CASES[3:], "val": CASES[:3]}]
    run.splits.write_text(json.dumps(stale))
    config = tiny_config()
    config.data.folds = 3
    train(organs, run.path, config)
    assert Plan.load(run.plan).patch_size == [16, 16, 16]
    splits = json.loads(run.splits.read_text())
    assert len(splits) == 3 and splits != stale
    assert sorted(n for fold in splits for n in fold["val"]) == CASES
    assert any("removed plan.json, left by a run stopped" in p.read_text() for p in run.path.glob("training_log_*"))


# ---- 7. one training at a time in a run folder -------------------------------------------------------------------


def test_second_lock_on_a_run_folder_names_the_first_process(tmp_path):
    """ "Two `train` runs started into one `--out` both crash and leave a mixed folder: lock the run folder; the
    second gets one line naming the first's process"; the lock goes when the first ends, even by an error."""
    run = RunFolder(tmp_path / "run")
    with run.locked():
        assert run.lock_file.read_text() == f"{os.getpid()} {socket.gethostname()}"
        with pytest.raises(UnetzooError) as error:
            with run.locked():
                pass
        assert str(error.value) == (
            f"{run.path}: in use: process {os.getpid()} on {socket.gethostname()} is training into it; wait for it to "
            "end or choose another --out"
        )
        assert run.lock_file.is_file()
    assert not run.lock_file.exists()
    with pytest.raises(RuntimeError):
        with run.locked():
            raise RuntimeError("the training failed")
    assert not run.lock_file.exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    """ "lock the run folder": a lock left by a process of this machine that no longer runs (killed) is taken over,
    with a warning naming it, and removed on exit."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.lock_file.write_text(f"{dead.pid} {socket.gethostname()}")
    with caplog.at_level(logging.WARNING, logger="unetzoo.runfolder"):
        with run.locked():
            assert run.lock_file.read_text() == f"{os.getpid()} {socket.gethostname()}"
    assert f"{run.lock_file}: left by process {dead.pid}, which no longer runs: taken over" in caplog.text
    assert not run.lock_file.exists()


def test_train_into_a_folder_another_process_trains_into(organs, tmp_path, capsys):
    """ "the second gets one line naming the first's process": `unetzoo train` into a folder a running process holds
    exits 2 with one line naming it, and writes nothing into the folder."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = RunFolder(tmp_path / "run")
        run.path.mkdir()
        run.lock_file.write_text(f"{other.pid} {socket.gethostname()}")
        before = snapshot(run.path)
        status = main(["train", str(organs), "--out", str(run.path), "--epochs", "1", *TINY])
        line = one_line(capsys.readouterr().err)
    finally:
        other.kill()
        other.wait()
    assert status == 2
    assert line == (
        f"unetzoo: error: {run.path}: in use: process {other.pid} on {socket.gethostname()} is training into it; "
        "wait for it to end or choose another --out"
    )
    assert snapshot(run.path) == before


# ---- bad splits: one line, exit 2, nothing written ---------------------------------------------------------------


def test_corrupt_splits_json_on_resume(organs, tmp_path, capsys):
    """ "a corrupt `splits.json` on resume": one line naming the file, exit 2, nothing written."""
    run = fabricated_run(tmp_path / "run")
    run.splits.write_text('[{"train": ["organs_000"], "val": ')
    before = snapshot(run.path)
    status = main(["train", str(organs), "--out", str(run.path), "--resume"])
    line = one_line(capsys.readouterr().err)
    assert status == 2 and line.startswith(f"unetzoo: error: {run.splits}: ")
    assert snapshot(run.path) == before


@pytest.mark.parametrize(
    "splits, expected",
    [
        ([{"train": [], "val": CASES}], "fold 0 has no training case"),
        (
            [{"train": CASES[:4], "val": ["organs_004", "organs_005", "organs_004"]}],
            "fold 0 lists case 'organs_004' twice in val",
        ),
        (None, "is a folder: give a splits file (nnU-Net's splits_final.json)"),
    ],
    ids=["empty-training-list", "case-twice-in-val", "folder"],
)
def test_bad_splits_file_is_one_line_before_anything_is_written(organs, tmp_path, capsys, splits, expected):
    """ "a `--splits` fold with an empty training list"; "`--splits` naming a folder"; "a case listed twice in `val`":
    each one line, exit 2, nothing written."""
    path = tmp_path / "splits_final.json"
    if splits is None:
        path.mkdir()
    else:
        path.write_text(json.dumps(splits))
    out = tmp_path / "run"
    status = main(["train", str(organs), "--out", str(out), "--splits", str(path), "--epochs", "1", *TINY])
    assert status == 2
    assert one_line(capsys.readouterr().err) == f"unetzoo: error: {path}: {expected}"
    assert not out.exists()
