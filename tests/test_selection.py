"""No peeking: the reported weights (train.select), the inner validation split that the per-epoch signal comes from,
snapshots of the budget (train.snapshots) and the held-out probabilities (train.keep_probabilities)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from conftest import tiny_config
from unetzoo import io
from unetzoo.config import Config, PredictConfig
from unetzoo.data.splits import inner_split
from unetzoo.errors import UnetzooError
from unetzoo.methods import Method, method_class
from unetzoo.runfolder import RunFolder, snapshot_name
from unetzoo.training import run as run_module
from unetzoo.training.budget import Snapshots, TimeBudget
from unetzoo.training.progress import plot_progress


# ---- the inner split ---------------------------------------------------------------------------------------------
def test_inner_split_draws_whole_subjects_from_the_seed():
    names = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 11) for f in (1, 12)]  # 10 subjects, 2 cases each
    train, inner = inner_split(names, r"patient\d+", seed=3, fraction=0.2)
    assert len(inner) == 4 and len({n[:10] for n in inner}) == 2  # 20 % of 10 subjects, with both their cases
    assert sorted(train + inner) == sorted(names) and not {n[:10] for n in train} & {n[:10] for n in inner}
    assert inner_split(names, r"patient\d+", seed=3, fraction=0.2) == (train, inner)  # a resume draws the same
    assert inner_split(names, r"patient\d+", seed=4, fraction=0.2)[1] != inner
    # at least one subject, and at least one left to train
    assert len(inner_split(["a", "b", "c"], "", 0, 0.01)[1]) == 1
    assert len(inner_split(["a", "b"], "", 0, 0.99)[1]) == 1
    with pytest.raises(UnetzooError, match=r"^the fold has 1 training subject\(s\): too few"):
        inner_split(["p1_a", "p1_b"], r"p\d", 0, 0.2)


# ---- options -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.select='first'", "train.select (--select): expected one of 'last', 'best', got 'first'"),
        ("train.snapshots=[0.5, 1.0]", "train.snapshots: expected a list of numbers > 0 and < 1, got [0.5, 1.0]"),
        ("train.snapshots=[0.25, 0.25]", "train.snapshots: expected distinct fractions > 0 and < 1, got [0.25, 0.25]"),
        ("train.keep_probabilities=1", "train.keep_probabilities: expected true or false, got 1"),
    ],
)
def test_bad_selection_options_are_one_line(assignment, message):
    config = Config()
    config.set(assignment)
    with pytest.raises(UnetzooError) as error:
        config.validate()
    assert str(error.value) == message


def test_new_options_are_the_runs_own_on_resume(tmp_path):
    saved = Config()
    saved.train.snapshots = [0.25, 0.5]
    changed = Config.from_dict(saved.to_dict())
    changed.train.select = "best"
    with pytest.raises(UnetzooError, match=r"--resume cannot change train\.select: 'last' -> 'best'"):
        run_module.resumed_config(saved, changed, tmp_path / "config.json")


def test_the_default_checkpoint_is_the_runs_choice(tmp_path):
    run = RunFolder(tmp_path)
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", "checkpoint_at_25.pt"):
        (tmp_path / name).write_bytes(b"")
    for select in ("last", "best"):
        config = Config()
        config.train.select = select
        config.save(run.config)
        assert run.checkpoint() == tmp_path / f"checkpoint_{select}.pt"
    (tmp_path / "config.json").write_text(json.dumps({"model": "unet", "train": {"epochs": 3}}))
    assert run.checkpoint() == tmp_path / "checkpoint_best.pt"  # a run from before train.select reported its best
    assert run.checkpoint("last") == tmp_path / "checkpoint_last.pt"  # --checkpoint overrides the choice
    assert run.checkpoint(snapshot_name(0.25)) == tmp_path / "checkpoint_at_25.pt"
    with pytest.raises(UnetzooError, match=r"checkpoint_at_50\.pt: missing: the run saved no snapshot at_50"):
        run.checkpoint("at_50")
    with pytest.raises(UnetzooError, match=r"^--checkpoint must be one of best, last or a snapshot at_N, got 'first'"):
        run.checkpoint("first")
    assert PredictConfig().checkpoint is None and [snapshot_name(f) for f in (0.1, 0.125, 0.5)] == [
        "at_10",
        "at_12.5",
        "at_50",
    ]


def test_progress_plot_without_per_epoch_validation(tmp_path):
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "epoch_time_s": 1.0, "lr": 1e-3, "steps": e} for e in range(3)]
    plot_progress(history, tmp_path / "progress.png")
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- snapshots: the crossing of fractions, on a fake clock ------------------------------------------------------
class _Weights(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(2, 1)


def _trainer() -> SimpleNamespace:
    return SimpleNamespace(
        is_global_zero=True,
        global_step=0,
        current_epoch=0,
        should_stop=False,
        strategy=SimpleNamespace(broadcast=float),
    )


def test_snapshots_follow_the_time_budget_and_survive_a_resume(tmp_path):
    now = [100.0]

    def clock():
        return now[0]

    paths = {0.25: tmp_path / "checkpoint_at_25.pt", 0.5: tmp_path / "checkpoint_at_50.pt"}
    trainer, module = _trainer(), _Weights()
    budget = TimeBudget(1, clock=clock)  # 60 s
    snapshots = Snapshots(paths, steps=10**6, budget=budget, clock=clock)  # the step budget is far: time decides
    written = {}
    for callback in (budget, snapshots):
        callback.on_train_start(trainer, module)
    for seconds in (10, 20, 31, 40):  # 1/6, 1/3 (crosses 0.25), 0.52 (crosses 0.5), 2/3 of the minute
        now[0] = 100.0 + seconds
        trainer.global_step += 1
        budget.on_before_optimizer_step(trainer, module, None)
        snapshots.on_train_batch_end(trainer, module, None, None, 0)
        written.update({f: p.stat().st_mtime_ns for f, p in paths.items() if p.is_file() and f not in written})
    saved = {f: torch.load(p, weights_only=False) for f, p in paths.items()}
    assert [(saved[f]["global_step"], saved[f]["training_seconds"]) for f in (0.25, 0.5)] == [(2, 20.0), (3, 31.0)]
    assert torch.equal(saved[0.25]["state_dict"]["model.weight"], module.state_dict()["model.weight"])
    checkpoint = {"global_step": trainer.global_step}
    snapshots.on_save_checkpoint(trainer, module, checkpoint)  # checkpoint_last: the training seconds, for a resume
    assert checkpoint == {"global_step": 4, "training_seconds": 40.0}

    # a resume from that checkpoint: the clock restarts, the seconds go on, the written snapshots stay as they are
    now[0] = 500.0
    resumed_budget, resumed = TimeBudget(1, clock=clock), Snapshots(paths, steps=10**6, budget=None, clock=clock)
    resumed_budget.load_state_dict(budget.state_dict())
    resumed.on_load_checkpoint(trainer, module, checkpoint)
    resumed.on_train_start(trainer, module)
    now[0] = 505.0
    resumed.on_train_batch_end(trainer, module, None, None, 0)
    assert resumed.seconds() == 45.0 and {f: p.stat().st_mtime_ns for f, p in paths.items()} == written

    # a resume from an earlier checkpoint (step 2: the process died after the 0.5 snapshot of step 3 but before its
    # next checkpoint): that snapshot's progress is lost, so it goes, to be taken again; the 0.25 one (step 2) stays
    Snapshots(paths, steps=10**6, clock=clock).on_load_checkpoint(trainer, module, {"global_step": 2})
    assert paths[0.25].is_file() and not paths[0.5].is_file()


def test_fractions_crossed_at_one_step_are_saved_from_it(tmp_path):
    paths = {0.25: tmp_path / "a.pt", 0.5: tmp_path / "b.pt", 0.75: tmp_path / "c.pt"}
    trainer, module = _trainer(), _Weights()
    snapshots = Snapshots(paths, steps=4, clock=lambda: 0.0)
    snapshots.on_train_start(trainer, module)
    trainer.global_step = 2  # a resumed run with fewer epochs: 0.25 and 0.5 at once
    snapshots.on_train_batch_end(trainer, module, None, None, 0)
    assert [torch.load(p, weights_only=False)["global_step"] if p.is_file() else None for p in paths.values()] == [
        2,
        2,
        None,
    ]


# ---- tiny runs ---------------------------------------------------------------------------------------------------
def _spy_label_reads(monkeypatch) -> list[tuple[str, str]]:
    """(phase, label file name) of every label read: "plan" until the plan is made (it checks every case of the
    dataset, as nnU-Net's fingerprint), "training" until validate_run starts, "validation" after."""
    reads, phase = [], ["plan"]
    read_array = io.read_array

    def spy(path, *args, **kwargs):
        if kwargs.get("label"):
            reads.append((phase[0], Path(path).name))
        return read_array(path, *args, **kwargs)

    def planned(dataset, config, names):
        plan = plan_for(dataset, config, names)
        reads.append(("planned from", sorted(names)))
        phase[0] = "training"
        return plan

    def validating(*args, **kwargs):
        phase[0] = "validation"
        return validate_run(*args, **kwargs)

    plan_for, validate_run = run_module.plan_for, run_module.validate_run
    monkeypatch.setattr(io, "read_array", spy)
    monkeypatch.setattr(run_module, "plan_for", planned)
    monkeypatch.setattr(run_module, "validate_run", validating)
    monkeypatch.setattr(run_module, "check_inference_precision", lambda *a, **k: None)  # not what is tested here
    # unet keeps one training case out for calibration, as nisf does, so that its exclusion is seen too
    monkeypatch.setattr(method_class("unet"), "calibration_subjects", classmethod(lambda cls, args: 1))
    return reads


def _labels(names: list[str]) -> set[str]:
    return {f"{n}.nii.gz" for n in names}


@pytest.mark.slow
def test_the_reported_fold_is_unread_until_validation(organs, tmp_path, monkeypatch):
    """select=best with early stopping: the per-epoch signal comes from inner validation cases of the fold's training
    cases, kept out of training and apart from the calibration cases; no label of the held-out fold is read after
    the plan (computed from the fold's training cases only; every file is checked before) until validate_run, which
    reads them all."""
    reads = _spy_label_reads(monkeypatch)
    config = tiny_config(epochs=2)
    config.data.cache_dir = str(tmp_path / "cache")  # a cold cache: training reads its labels
    config.train.iters_per_epoch, config.train.val_patches = 1, 2
    config.set("train.select='best'")
    config.set("train.early_stop=1")
    run = run_module.train(organs, tmp_path / "run", config)

    fold = json.loads((run / "splits.json").read_text())[0]
    used = json.loads((run / "inner_split.json").read_text())
    assert len(used["inner_val"]) == len(used["calibration"]) == 1 and len(used["train"]) == 2
    assert sorted(used["train"] + used["inner_val"] + used["calibration"]) == fold["train"]
    during = {name for phase, name in reads if phase == "training"}
    assert during == _labels(used["train"] + used["inner_val"])  # neither the held-out fold nor the calibration case
    planned = next(names for phase, names in reads if phase == "planned from")
    assert planned == fold["train"]  # the plan is computed from the fold's training cases only
    assert _labels(fold["val"]) <= {name for phase, name in reads if phase == "validation"}
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and all("val_dice" in h for h in history)
    with open(run / "logs" / "csv" / "version_0" / "metrics.csv", newline="") as f:  # Lightning's CSVLogger
        rows = list(csv.DictReader(f))
    assert [float(r["val_dice"]) for r in rows if r["val_dice"]] == pytest.approx([h["val_dice"] for h in history])
    assert {"val_dice_1", "val_dice_2", "val_dice_3"} <= set(rows[0])
    assert (run / "checkpoint_best.pt").is_file() and json.loads((run / "config.json").read_text())["train"][
        "select"
    ] == "best"
    log = next(run.glob("training_log_*.txt")).read_text()
    assert (
        f"reported weights: checkpoint_best.pt (highest pseudo-Dice on 1 inner validation cases: {used['inner_val'][0]}; "
        in log
    )
    assert "with checkpoint_best.pt" in log  # validation/ evaluates the reported weights


@pytest.mark.slow
def test_select_last_validates_nothing_during_training(organs, tmp_path, monkeypatch):
    """The default: no per-epoch validation, every training case but the calibration one trains, checkpoint_last.pt
    is reported and predict takes it by default."""
    from unetzoo.inference.predictor import Predictor

    reads = _spy_label_reads(monkeypatch)
    validated = []
    monkeypatch.setattr(Method, "validation_predict", lambda self, image: validated.append(image))
    config = tiny_config(epochs=2)
    config.data.cache_dir = str(tmp_path / "cache")
    config.train.iters_per_epoch = 1
    run = run_module.train(organs, tmp_path / "run", config)

    fold = json.loads((run / "splits.json").read_text())[0]
    used = json.loads((run / "inner_split.json").read_text())
    assert used["inner_val"] == [] and len(used["calibration"]) == 1
    assert used["train"] == sorted(set(fold["train"]) - set(used["calibration"]))
    assert {name for phase, name in reads if phase == "training"} == _labels(used["train"])
    assert validated == [] and not (run / "checkpoint_best.pt").exists()
    history = json.loads((run / "history.json").read_text())
    assert [sorted(h) for h in history] == [["epoch", "epoch_time_s", "lr", "steps", "train_loss"]] * 2
    assert (run / "progress.png").is_file()
    log = next(run.glob("training_log_*.txt")).read_text()
    assert "reported weights: checkpoint_last.pt (final)" in log and "with checkpoint_last.pt" in log
    assert Predictor(run, device="cpu").checkpoint_path == run / "checkpoint_last.pt"


@pytest.mark.slow
def test_snapshot_at_half_the_steps_and_held_out_probabilities(organs, tmp_path, monkeypatch):
    """snapshots [0.5] of 2 x 2 steps: the weights at step 2, evaluated on the held-out fold in validation/at_50/ and
    listed with the final weights in snapshots.json; keep_probabilities: each held-out case's probabilities."""
    from unetzoo.inference.predictor import Predictor

    monkeypatch.setattr(run_module, "check_inference_precision", lambda *a, **k: None)
    config = tiny_config(epochs=2)
    config.train.iters_per_epoch = 2
    config.set("train.snapshots=[0.5]")
    config.set("train.keep_probabilities=True")
    run = run_module.train(organs, tmp_path / "run", config)

    entries = json.loads((run / "snapshots.json").read_text())
    assert [(e["fraction"], e["checkpoint"], e["steps"], e["summary"]) for e in entries] == [
        (0.5, "checkpoint_at_50.pt", 2, "validation/at_50/summary.json"),
        (1.0, "checkpoint_last.pt", 4, "validation/summary.json"),
    ]
    assert 0 < entries[0]["seconds"] < entries[1]["seconds"]
    fold = json.loads((run / "splits.json").read_text())[0]["val"]
    at_50 = json.loads((run / "validation" / "at_50" / "summary.json").read_text())
    assert sorted(c["case"] for c in at_50["cases"]) == fold
    snapshot = Predictor(run, device="cpu", checkpoint="at_50")
    last = Predictor(run, device="cpu")
    assert snapshot.checkpoint_path.name == "checkpoint_at_50.pt"
    assert not torch.equal(  # two more steps changed the weights
        next(snapshot.method.model.parameters()), next(last.method.model.parameters())
    )
    for name in fold:
        probabilities = np.load(run / "validation" / f"{name}.npz")["probabilities"]
        label = io.read_label(run / "validation" / f"{name}.nii.gz").array
        assert probabilities.dtype == np.float16 and probabilities.shape == (4, *label.shape)
        np.testing.assert_allclose(probabilities.astype(np.float32).sum(0), 1.0, atol=1e-2)
        assert not (run / "validation" / "at_50" / f"{name}.npz").exists()
