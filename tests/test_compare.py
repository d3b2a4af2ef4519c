"""`unetzoo compare`: the experiment and its budget, the executors, the leaderboard's statistics, and one experiment end
to end (three models, two folds of a tiny phantom, 2 steps per run): killed mid-way and restarted, a second invocation
that does nothing, a changed experiment refused, the leaderboard against a computation by hand, the SLURM path through
submitit's local executor."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unetzoo.cli import main
from unetzoo.config import Config
from unetzoo.errors import UnetzooError
from unetzoo.experiments import statistics as stats
from unetzoo.experiments.compare import compare
from unetzoo.experiments.executors import LocalExecutor, SubmititExecutor
from unetzoo.experiments.experiment import Experiment, run_folder
from unetzoo.experiments.jobs import Job
from unetzoo.experiments.leaderboard import cost_axes, leaderboard, pareto_front, write_leaderboard

MODELS = ["unet", "unet2d-slices", "attention-unet"]
SETS = [
    "data.folds=3",
    "train.iters_per_epoch=1",
    "data.patch_size=[16,16,16]",
    "data.num_workers=0",
    "data.cache_workers=0",
    "train.lr=1e-3",
    "train.val_cases=1",
    "train.precision=32-true",
]


def tiny(config: Config | None = None) -> Config:
    config = config or Config()
    for assignment in SETS:
        config.set(assignment)
    return config


def in_process(*args: str) -> tuple[int, str, str]:
    """``unetzoo ARGS`` in this process (no interpreter start-up; the jobs it starts are processes of their own):
    exit status, stdout, stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(list(args))
    return status, stdout.getvalue(), stderr.getvalue()


def cli_args(data, out, budget: int = 2) -> list[str]:
    sets = [word for s in SETS for word in ("--set", s)]
    return [
        "compare",
        str(data),
        "--models",
        ",".join(MODELS),
        "--folds",
        "0,1",
        "--budget",
        str(budget),
        "--out",
        str(out),
        "--jobs",
        "2",
        *sets,
    ]


# ---- the experiment and the budget ------------------------------------------------------------------------
def test_step_budget_becomes_whole_epochs_of_the_same_steps(organs):
    config = tiny()
    config.train.iters_per_epoch = 250
    experiment = Experiment.make(organs, ["unet", "unet2d-slices"], [0, 1], config, steps=500)
    runs = [experiment.run_config(m, f, 0).train for m in experiment.models for f in experiment.folds]
    assert {(t.epochs, t.iters_per_epoch, t.max_minutes) for t in runs} == {(2, 250, 0.0)}
    assert len({t.batch_size for t in runs}) == 1  # every run the same batch setting (None: the data's plan decides it)
    # 6 < 250: one epoch of 6
    assert Experiment.make(organs, ["unet"], [0], config, steps=6).run_config("unet", 0, 0).train.epochs == 1
    with pytest.raises(UnetzooError, match="not a whole number of epochs of train.iters_per_epoch = 250"):
        Experiment.make(organs, ["unet"], [0], config, steps=300)
    minutes = Experiment.make(organs, ["unet"], [0], config, minutes=2.5).run_config("unet", 0, 0)
    assert minutes.train.max_minutes == 2.5


@pytest.mark.parametrize(
    "models, folds, message",
    [
        (["unet", "nope"], [0], "nope"),
        (["unet", "unet"], [0], "listed twice"),
        (["unet"], [3], r"--folds 3: give distinct folds among 0..2 \(the splits have 3 folds\)"),
        (["unet"], [0], r"train.lr \(--lr\): expected"),
    ],
)
def test_bad_experiment_is_one_line_before_any_work(organs, tmp_path, models, folds, message):
    config = tiny()
    if "lr" in message:
        config.set("train.lr=-1")
    with pytest.raises(UnetzooError, match=message):
        compare(organs, models, tmp_path / "exp", folds=folds, config=config, steps=2)
    assert not (tmp_path / "exp" / "compare.json").exists()


def test_folds_come_from_the_splits_file_recorded_by_its_full_path(organs, tmp_path, monkeypatch):
    names = sorted(p.name[: -len("_0000.nii.gz")] for p in (organs / "imagesTr").iterdir())
    (tmp_path / "splits_final.json").write_text(
        json.dumps([{"train": names[2:], "val": names[:2]}, {"train": names[:2], "val": names[2:]}])
    )
    monkeypatch.chdir(tmp_path)
    config = tiny()
    config.data.splits_file = "splits_final.json"
    experiment = Experiment.make(organs, ["unet"], [0, 1], config, steps=2)
    assert experiment.config["data"]["splits_file"] == str(tmp_path / "splits_final.json")
    with pytest.raises(UnetzooError, match=r"--folds 2: give distinct folds among 0..1 \(the splits have 2 folds\)"):
        Experiment.make(organs, ["unet"], [2], config, steps=2)


def test_changed_experiment_is_refused_and_the_recorded_one_kept(organs, tmp_path):
    experiment = Experiment.make(organs, ["unet"], [0], tiny(), steps=2)
    experiment.record(tmp_path, None)
    saved = (tmp_path / "compare.json").read_text()
    other = Experiment.make(organs, ["unet"], [0], tiny(Config(seed=3)), steps=2)
    with pytest.raises(
        UnetzooError,
        match=r"compare.json: this experiment was planned otherwise: seeds \[0\] -> \[3\]; config.seed 0 -> 3",
    ):
        other.record(tmp_path, None)
    assert (tmp_path / "compare.json").read_text() == saved


def test_experiment_round_trips(organs, tmp_path):
    experiment = Experiment.make(organs, ["unet", "unet2d-slices"], [0, 1], tiny(), steps=2, seeds=[0, 1])
    assert Experiment.from_dict(experiment.to_dict()) == experiment
    recorded = experiment.record(tmp_path, None)
    assert recorded == Experiment(**{**experiment.to_dict(), "test": None, "executions": []})
    recorded.executions.append({"started": "now", "executor": "local"})
    recorded.widths["unet"] = 16
    recorded.save(tmp_path)
    assert Experiment.load(tmp_path) == recorded and Experiment.from_dict(recorded.to_dict()) == recorded
    assert list(json.loads((tmp_path / "compare.json").read_text())) == [
        "data",
        "models",
        "folds",
        "seeds",
        "budget",
        "config",
        "test",
        "executions",
        "widths",
        "margin",
        "external",
    ]
    with pytest.raises(UnetzooError, match="compare.json: missing: not a unetzoo compare folder"):
        Experiment.load(tmp_path / "elsewhere")


def test_every_seed_trains_the_same_folds_and_the_measured_width(organs, tmp_path):
    experiment = Experiment.make(organs, ["unet"], [0, 1], tiny(), minutes=1.0, seeds=[0, 7])
    recorded = experiment.record(tmp_path, None)
    recorded.widths["unet"] = 8
    configs = [recorded.run_config("unet", f, s, tmp_path) for s in (0, 7) for f in (0, 1)]
    assert [c.seed for c in configs] == [0, 0, 7, 7]
    assert {c.data.splits_file for c in configs} == {str((tmp_path / "splits.json").resolve())}
    assert {c.model_args["base_features"] for c in configs} == {8}
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert len(splits) == 3 and sorted(n for f in splits for n in f["val"]) == sorted(
        splits[0]["train"] + splits[0]["val"]
    )
    with pytest.raises(UnetzooError, match="--seeds 1,1: give distinct seeds"):
        Experiment.make(organs, ["unet"], [0], tiny(), steps=2, seeds=[1, 1])
    assert [run.path.relative_to(tmp_path).as_posix() for run in recorded.runs(tmp_path).values()] == [
        "runs/unet/seed0/fold0",
        "runs/unet/seed0/fold1",
        "runs/unet/seed7/fold0",
        "runs/unet/seed7/fold1",
    ]


def test_the_width_is_measured_once_per_model_before_any_run(organs, tmp_path, monkeypatch):
    """Under a time budget a `width` job measures each model once and records it; every fold and seed then trains
    it without measuring again."""
    from unetzoo.experiments import jobs

    calls = []

    def timer(config, plan, train_cases):
        calls.append(config.model_args["base_features"])
        return 10.0 if config.model_args["base_features"] > 8 else 0.01  # only width 8 affords the steps

    monkeypatch.setattr("unetzoo.training.width.step_seconds", timer)
    config = tiny()
    config.train.min_steps = 5
    experiment = Experiment.make(organs, ["unet", "unet2d-slices"], [0, 1], config, minutes=1.0, seeds=[0, 1])
    experiment.record(tmp_path, None)
    assert jobs.needs_width(Experiment.load(tmp_path)) == ["unet", "unet2d-slices"]
    jobs.run_job(tmp_path, "width")
    recorded = Experiment.load(tmp_path)
    assert recorded.widths == {"unet": 8, "unet2d-slices": 8} and calls == [32, 16, 8, 32, 16, 8]
    assert jobs.needs_width(recorded) == []
    run = recorded.run_config("unet", 1, 1, tmp_path)
    assert run.model_args["base_features"] == 8  # train's own width rule keeps a width the config sets


# ---- statistics -------------------------------------------------------------------------------------------
def test_pareto_front():
    costs, scores = [1.0, 2.0, 3.0, 2.5], [0.5, 0.7, 0.9, 0.6]
    assert pareto_front(costs, scores) == [0, 1, 2]  # 2.5 costs more than 2.0 and scores less


def _fake_run(run: Path, case_dice: dict[str, list[float]], infer_s: float, params: int) -> None:
    """A finished run folder as training and the benchmark leave it (only the files the leaderboard reads)."""
    cases = [
        {"case": c, "metrics": {str(k + 1): {"Dice": d, "NSD": d, "HD95": 1 - d} for k, d in enumerate(dice)}}
        for c, dice in case_dice.items()
    ]
    summary = {"label_ids": [1, 2], "cases": cases}
    (run / "validation" / "postprocessed").mkdir(parents=True)
    (run / "validation" / "summary.json").write_text(json.dumps(summary))  # what the leaderboard ranks
    (run / "validation" / "postprocessed" / "summary.json").write_text(json.dumps({}))  # the run's last file
    (run / "history.json").write_text(
        json.dumps([{"epoch": 0, "epoch_time_s": 10.0}, {"epoch": 1, "epoch_time_s": 12.5}])
    )
    (run / "plan.json").write_text(json.dumps({"target_spacing": [1, 1, 1]}))
    bench = {
        "models": [
            {
                "model": "m",
                "params": params,
                "macs": 1,
                "train_step_s": 1,
                "train_peak_mem_mb": 1,
                "infer_s": infer_s,
                "infer_peak_mem_mb": 1,
            }
        ],
        "device": "cpu",
        "device_name": "cpu",
        "threads": 1,
        "precision": "32-true",
        "torch": "x",
        "infer_shape": [8, 8, 8],
    }
    (run / "benchmark.json").write_text(json.dumps(bench))


def test_leaderboard_names_the_best_and_the_cheapest_within_the_margin(organs, tmp_path):
    """Eight hand-made cases: `unet` best; `unet2d-slices` 0.01 below on 4 cases and 0.01 above on 4 in class 1
    (Δ 0, within the 0.01 margin), cheaper; `attention-unet` 0.2 below in class 1 on all 8 (Δ -0.1; exact permutation
    p = 2/2^8, x2 by Holm) and cheapest."""
    Experiment.make(organs, ["unet", "unet2d-slices", "attention-unet"], [0], tiny(), steps=2).record(tmp_path, None)
    base = {f"case{i}": [0.8 + 0.01 * i, 0.7] for i in range(8)}
    shift = {"unet": 0.0, "unet2d-slices": None, "attention-unet": -0.2}
    costs = {"unet": (2.0, 100), "unet2d-slices": (1.0, 50), "attention-unet": (0.5, 10)}
    for model, delta in shift.items():
        dice = {
            c: [v[0] + (delta if delta is not None else (0.01 if i % 2 else -0.01)), v[1]]
            for i, (c, v) in enumerate(base.items())
        }
        _fake_run(run_folder(tmp_path, model, 0).path, dice, *costs[model])
    board = leaderboard(tmp_path)
    assert [e["model"] for e in board["models"]] == ["unet", "unet2d-slices", "attention-unet"]
    below = {e["model"]: e["significantly_below_best"] for e in board["models"]}
    assert below == {"unet": False, "unet2d-slices": False, "attention-unet": True}
    slices, attention = board["models"][1]["to_best"], board["models"][2]["to_best"]
    assert attention["difference"] == pytest.approx(-0.1) and attention["p_holm"] == pytest.approx(2 * 2 / 2**8)
    assert slices["difference"] == pytest.approx(0.0, abs=1e-12) and slices["within_margin"]
    assert not attention["within_margin"] and board["margin"] == 0.01
    assert board["most_accurate"] == "unet" and board["chosen"] == "unet2d-slices"
    assert board["models"][0]["training_time_s"] == 22.5 and board["models"][0]["steps"] == [
        None
    ]  # a history without step counts
    page = write_leaderboard(tmp_path).read_text()
    assert (
        "**Most accurate:** `unet`" in page and "**Chosen (cheapest within 0.01 Dice of it):** `unet2d-slices`" in page
    )
    assert (
        "| 0:00:22 | ? (2) | n/a |" in page
    )  # training time, steps (epochs) of the one fold, no config: no step shape
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    entry = board["models"][0]
    assert [(label, cost(entry)) for label, cost in cost_axes(board)] == [
        ("inference time per case (s)", entry["cost"]["infer_s"]),
        ("training time, all runs (min)", 22.5 / 60),
    ]
    minutes = {**board, "budget": {"minutes": 15.0}}  # every run took the same time: the step time is the training cost
    assert (
        cost_axes(minutes)[1][0] == "training step time (s)"
        and cost_axes(minutes)[1][1](entry) == entry["cost"]["train_step_s"]
    )
    header = (tmp_path / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["model", "complete", "cases", "subjects", "Dice"] and "p_holm" in header


def _summary(case_dice: dict[str, list[float]]) -> dict:
    cases = [
        {"case": c, "metrics": {str(k + 1): {"Dice": d, "NSD": d, "HD95": 1 - d} for k, d in enumerate(dice)}}
        for c, dice in case_dice.items()
    ]
    return {"label_ids": [1, 2], "cases": cases}


def test_leaderboard_over_seeds_subjects_snapshots_and_ensembles(organs, tmp_path):
    """Two seeds, cases grouped in subjects by `data.group_by` (two cases each): the intervals resample subjects and
    seeds, the page shows the Dice per seed; the ranking at half the budget swaps the two models (Kendall's tau -1);
    the best ensemble is a row of its own, in the page and the CSV."""
    names = [f"organs_00{i}" for i in range(6)]
    experiment = Experiment.make(organs, ["unet", "unet2d-slices"], [0], tiny(), steps=2, seeds=[0, 1])
    experiment.record(tmp_path, None)
    # two subjects of three cases (the match is "organs_00" for cases 0-2, "organs_0" for cases 3-5), as the
    # leaderboard reads them; the folds were drawn without them
    experiment.config["data"]["group_by"] = r"organs_00(?=[0-2])|organs_0(?=0[3-5])"
    experiment.save(tmp_path)
    full = {"unet": 0.8, "unet2d-slices": 0.7}
    half = {"unet": 0.5, "unet2d-slices": 0.6}  # unet2d-slices leads at half the budget
    for (model, fold, seed), run in experiment.runs(tmp_path).items():
        offset = 0.01 * seed
        _fake_run(run.path, {n: [full[model] + offset, full[model] + offset] for n in names}, 1.0, 10)
        (run.path / "validation" / "at_50").mkdir()
        (run.path / "validation" / "at_50" / "summary.json").write_text(
            json.dumps(_summary({n: [half[model], half[model]] for n in names}))
        )
        (run.path / "snapshots.json").write_text(
            json.dumps(
                [
                    {"fraction": 0.5, "steps": 1, "seconds": 1.0, "summary": "validation/at_50/summary.json"},
                    {"fraction": 1.0, "steps": 2, "seconds": 2.0, "summary": "validation/summary.json"},
                ]
            )
        )
        pair = tmp_path / "ensembles" / "unet+unet2d-slices" / f"seed{seed}" / f"fold{fold}"
        pair.mkdir(parents=True, exist_ok=True)
        (pair / "summary.json").write_text(json.dumps(_summary({n: [0.9, 0.9] for n in names})))
    board = leaderboard(tmp_path)
    unet = board["models"][0]
    assert unet["model"] == "unet" and board["subjects"] == 2 and unet["cases"] == 6
    assert unet["Dice"]["per_seed"] == pytest.approx([0.8, 0.81]) and unet["Dice"]["ci_method"] == stats.TWO_LEVEL
    assert unet["Dice"]["ci"] == pytest.approx([0.8, 0.81])  # every subject alike: only the seeds spread it
    assert [p["fraction"] for p in unet["curve"]] == [0.5, 1.0] and unet["curve"][0]["mean"] == pytest.approx(0.5)
    assert board["stability"]["kendall_tau"] == pytest.approx(-1.0)
    assert board["stability"]["swapped"] == [["unet", "unet2d-slices"]]
    assert board["ensemble"]["model"] == "unet + unet2d-slices" and board["ensemble"]["Dice"]["mean"] == pytest.approx(
        0.9
    )
    assert board["ensemble"]["to_best"]["difference"] == pytest.approx(0.9 - 0.805)
    assert board["reported"] == ["best"]  # fake runs have no config.json: an older run reported its best
    page = write_leaderboard(tmp_path).read_text()
    assert "0.800, 0.810 (sd 0.007)" in page and "pairs that swapped: `unet`/`unet2d-slices`" in page
    assert "| ensemble | `unet + unet2d-slices` |" in page and "subjects of `data.group_by`" in page
    rows = (tmp_path / "leaderboard.csv").read_text().splitlines()
    assert rows[-1].startswith("unet + unet2d-slices,True,6,2,0.9")


def test_external_predictions_are_ranked_as_a_hand_computation(organs, tmp_path):
    """`--external other=DIR`: another tool's held-out predictions of fold 0, the reference itself for one case and
    nothing for the other: per class, Dice 1 and 0 where the class is in the reference (a class in neither is
    skipped), the figure the mean over classes, by hand; ranked beside `unet`, no learning curve, costs unknown."""
    from unetzoo.experiments.external import score_external

    tool = tmp_path / "tool"
    tool.mkdir()
    experiment = Experiment.make(organs, ["unet"], [0], tiny(), steps=2)
    recorded = experiment.record(tmp_path / "exp", None, external={"other": str(tool)})
    held_out = json.loads((tmp_path / "exp" / "splits.json").read_text())[0]["val"]
    per_class = {1: [], 2: [], 3: []}
    for i, case in enumerate(held_out):
        reference = nib.load(str(organs / "labelsTr" / f"{case}.nii.gz"))
        truth = np.asarray(reference.dataobj)
        predicted = truth if i == 0 else np.zeros_like(truth)
        nib.save(nib.Nifti1Image(predicted, reference.affine), str(tool / f"{case}.nii.gz"))
        for label in per_class:
            if (truth == label).any():
                per_class[label].append(1.0 if i == 0 else 0.0)
    by_hand = np.mean([np.mean(v) for v in per_class.values() if v])
    _fake_run(run_folder(tmp_path / "exp", "unet", 0).path, {c: [0.5, 0.5, 0.5] for c in held_out}, 1.0, 10)
    summary = json.loads((run_folder(tmp_path / "exp", "unet", 0).path / "validation" / "summary.json").read_text())
    summary["label_ids"] = [1, 2, 3]
    (run_folder(tmp_path / "exp", "unet", 0).path / "validation" / "summary.json").write_text(json.dumps(summary))
    score_external(tmp_path / "exp", recorded)
    board = leaderboard(tmp_path / "exp")
    other = next(e for e in board["models"] if e["model"] == "other")
    assert other["Dice"]["mean"] == pytest.approx(by_hand) and other["cost"] is None and other["curve"] == []
    assert other["to_best"] is None or other["to_best"]["model"] == "unet"
    assert {e["model"] for e in board["models"]} == {"unet", "other"} and board["chosen"] == "unet"
    page = write_leaderboard(tmp_path / "exp").read_text()
    assert "`other` (external)" in page
    with pytest.raises(UnetzooError, match="--external other is .* in this experiment, not "):
        experiment.record(tmp_path / "exp", None, external={"other": str(tmp_path)})


@pytest.mark.slow
def test_local_executor_reports_a_failed_job_with_its_last_line_and_log(tmp_path):
    (tmp_path / "compare.json").write_text("{not json")
    lines = []
    failures = LocalExecutor(jobs=2).run(tmp_path, [Job("benchmark")], log=lines.append)
    log = tmp_path / "logs" / "benchmark.log"
    message = failures.pop("benchmark")
    assert failures == {} and message.startswith("exit status 2 after ") and message.endswith(f" (log {log})")
    assert f"unetzoo: error: {tmp_path / 'compare.json'}: invalid JSON" in message
    assert lines[-1].startswith("compare [1/1] benchmark: failed, exit status 2")


def test_slurm_settings_are_checked(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda tool: f"/usr/bin/{tool}")  # as on a SLURM login node
    with pytest.raises(UnetzooError, match="compare.slurm.queue: unknown setting"):
        SubmititExecutor({"queue": "gpu"})
    with pytest.raises(UnetzooError, match="compare.slurm.time: expects a whole number"):
        SubmititExecutor({"time": "2h"})
    with pytest.raises(UnetzooError, match="--executor slurm needs --set compare.slurm.time=MINUTES"):
        SubmititExecutor({"partition": "gpu"})
    assert SubmititExecutor({"partition": "gpu", "time": "120", "gpus": "1"}).settings == {
        "partition": "gpu",
        "time": 120,
        "gpus": 1,
    }


# ---- end to end -------------------------------------------------------------------------------------------
def _history(run: Path) -> list:
    try:
        return json.loads((run / "history.json").read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return []


def _children_of(out: Path) -> list[int]:
    """Processes whose command line names the experiment folder (the jobs of a compare into it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(out) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def experiment(organs, tmp_path_factory):
    """Start the compare, SIGKILL it once a run has finished while another is between its two epochs (its first
    checkpoint written, its history one epoch long), then run the same command again. Returns the folder, what the
    killed process left and the second process."""
    out = tmp_path_factory.mktemp("compare") / "exp"
    process = subprocess.Popen(
        [sys.executable, "-m", "unetzoo.cli", *cli_args(organs, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs = [run_folder(out, m, f) for m in MODELS for f in (0, 1)]
    try:
        deadline = time.time() + 400
        while time.time() < deadline and process.poll() is None:
            done = [r for r in runs if r.is_finished()]
            between = [r for r in runs if (r.path / "checkpoint_last.pt").is_file() and len(_history(r.path)) == 1]
            if done and between:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the compare ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.time() + 10
    while _children_of(out) and time.time() < deadline:
        time.sleep(0.1)
    left = {
        "children": _children_of(out),
        "finished": {
            r: (r.path / "validation" / "postprocessed" / "summary.json").stat().st_mtime_ns
            for r in runs
            if r.is_finished()
        },
        "resumable": [r for r in runs if (r.path / "checkpoint_last.pt").is_file() and not r.is_finished()],
    }
    return out, left, in_process(*cli_args(organs, out))


@pytest.mark.slow
def test_killed_compare_restarts_and_finishes_every_run(experiment):
    out, left, restart = experiment
    assert left["children"] == [], "a training outlived the killed compare"
    assert restart[0] == 0, restart[2][-3000:]
    runs = [run_folder(out, m, f) for m in MODELS for f in (0, 1)]
    assert all(r.is_finished() for r in runs)
    for run, mtime in left["finished"].items():  # no finished run was trained or validated again
        assert (run.path / "validation" / "postprocessed" / "summary.json").stat().st_mtime_ns == mtime
    assert left["resumable"], "no run was killed after its first checkpoint"
    for run in left["resumable"]:  # resumed from checkpoint_last.pt: epoch 0 not trained again
        logs = sorted(run.path.glob("training_log_*.txt"))
        assert len(logs) == 2 and "epoch 0:" not in logs[-1].read_text()
        assert [h["epoch"] for h in _history(run.path)] == [0, 1]
    for run in runs:  # the same code as `unetzoo train`: a normal run folder with the budget in its config
        config = json.loads((run.path / "config.json").read_text())
        assert (config["train"]["epochs"], config["train"]["iters_per_epoch"]) == (2, 1)
        assert (run.path / "postprocessing.json").is_file() and (run.path / "checkpoint_last.pt").is_file()
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "pareto.png"):
        assert (out / name).is_file()
    assert (out / "benchmark" / "benchmark.json").is_file()


@pytest.mark.slow
def test_second_invocation_does_nothing(experiment):
    out, _, _ = experiment
    watched = [
        p
        for p in out.rglob("*")
        if p.is_file() and p.suffix in (".pt", ".log", ".json", ".txt", ".png", ".md", ".csv", ".gz")
    ]
    before = {p: p.stat().st_mtime_ns for p in watched if p.parent != out}
    board = (out / "leaderboard.json").read_bytes()
    status, stdout, stderr = in_process(*cli_args(_data(out), out))
    assert status == 0, stderr[-2000:]
    assert "6 finished, 0 to resume, 0 to start" in stdout and "nothing to train" in stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert (out / "leaderboard.json").read_bytes() == board


def _data(out: Path) -> Path:
    return Path(json.loads((out / "compare.json").read_text())["data"])


@pytest.mark.slow
def test_changed_experiment_is_refused_in_one_line(experiment):
    out, _, _ = experiment
    saved = (out / "compare.json").read_text()
    status, _, stderr = in_process(*cli_args(_data(out), out, budget=3))
    assert status == 2
    assert stderr.strip().splitlines() == [
        f"unetzoo: error: {out / 'compare.json'}: this experiment was planned otherwise: "
        "budget.steps 2 -> 3; run it with its own options, or give another --out"
    ]
    assert (out / "compare.json").read_text() == saved


@pytest.mark.slow
def test_leaderboard_equals_a_computation_by_hand_from_the_runs_summaries(experiment):
    out, _, _ = experiment
    board = json.loads((out / "leaderboard.json").read_text())
    dice, per_case = {}, {}
    for model in MODELS:
        cases = [
            c
            for f in (0, 1)
            for c in json.loads((run_folder(out, model, f).path / "validation" / "summary.json").read_text())["cases"]
        ]
        classes = list(cases[0]["metrics"])
        class_means = [
            np.nanmean([np.nan if c["metrics"][k]["Dice"] is None else c["metrics"][k]["Dice"] for c in cases])
            for k in classes
        ]
        dice[model] = float(np.mean(class_means))
        per_case[model] = {c["case"]: np.nanmean([c["metrics"][k]["Dice"] for k in classes]) for c in cases}
        assert len(cases) == 4  # folds 0 and 1 of 3 over 6 cases: 2 held out each
    entries = {e["model"]: e for e in board["models"]}
    for model in MODELS:
        assert entries[model]["Dice"]["mean"] == pytest.approx(dice[model], abs=1e-12)
        history = [h for f in (0, 1) for h in json.loads((run_folder(out, model, f).path / "history.json").read_text())]
        assert entries[model]["training_time_s"] == pytest.approx(sum(h["epoch_time_s"] for h in history))
        assert entries[model]["steps"] == [2, 2] and [h["steps"] for h in history] == [
            1,
            2,
            1,
            2,
        ]  # 2 epochs of 1 step per fold
        bench = json.loads((run_folder(out, model, 0).path / "benchmark.json").read_text())["models"][0]
        assert (
            entries[model]["cost"]["params"] == bench["params"]
            and entries[model]["cost"]["infer_s"] == bench["infer_s"]
        )
    best = max(dice, key=dice.get)
    assert board["most_accurate"] == best and [e["model"] for e in board["models"]][0] == best
    others = [m for m in MODELS if m != best]
    raw = []
    cases = sorted(per_case[best])  # one subject each: an exact sign-flip permutation test over 2^4 swaps
    for model in others:
        diff = np.array([per_case[model][c] - per_case[best][c] for c in cases])
        observed = abs(diff.mean())
        flips = [abs((np.array(signs) * diff).mean()) for signs in itertools.product([1, -1], repeat=len(diff))]
        raw.append(np.mean([f >= observed - 1e-12 for f in flips]))
        assert entries[model]["to_best"]["difference"] == pytest.approx(dice[model] - dice[best], abs=1e-12)
        assert entries[model]["to_best"]["p"] == pytest.approx(raw[-1])
    order = np.argsort(raw)  # Holm over 2 comparisons: the smaller p x 2, the larger x 1, made monotone
    smaller, larger = min(1.0, 2 * raw[order[0]]), min(1.0, max(2 * raw[order[0]], raw[order[1]]))
    assert entries[others[order[0]]]["to_best"]["p_holm"] == pytest.approx(smaller)
    assert entries[others[order[1]]]["to_best"]["p_holm"] == pytest.approx(larger)
    for model in MODELS:  # the held-out Dice at 1/4, 1/2 and all of the 2-step budget, and the ensembles of the pairs
        assert [p["fraction"] for p in entries[model]["curve"]] == [0.25, 0.5, 1.0]
        assert entries[model]["curve"][-1]["mean"] == pytest.approx(dice[model], abs=1e-12)
    assert (out / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert board["ensemble"]["pairs_scored"] == 3 and board["ensemble"]["pair"][0] in MODELS
    assert board["stability"] is not None and "kendall_tau" in board["stability"]
    within = [e for e in board["models"] if e["to_best"] is None or e["to_best"]["within_margin"]]
    assert board["chosen"] == min(within, key=lambda e: (e["cost"]["infer_s"], e["cost"]["params"]))["model"]


@pytest.mark.slow
def test_slurm_path_through_submitit_local_executor(organs, tmp_path):
    """Each run a submitit job (its local executor stands in for SLURM); a failing job is reported with its log and does
    not stop the other, and the experiment can then be finished."""
    out = tmp_path / "exp"
    broken = run_folder(out, "unet2d-slices", 0)
    broken.path.mkdir(parents=True)
    (broken.path / "checkpoint_last.pt").write_bytes(b"")  # a run to resume without its config.json: the job fails
    failed = r"1 job\(s\) failed \(train_unet2d-slices_fold0_seed0: job \d+: unetzoo.errors.UnetzooError: .*config.json: missing: not a unetzoo run folder .* \(log .*/slurm/\d+/\d+_0_log.err\)\)"
    with pytest.raises(UnetzooError, match=failed):
        compare(
            organs,
            ["unet", "unet2d-slices"],
            out,
            folds=[0],
            config=tiny(),
            steps=1,
            executor=SubmititExecutor({"time": 30}, cluster="local"),
        )
    assert run_folder(out, "unet", 0).is_finished() and (run_folder(out, "unet", 0).path / "benchmark.json").is_file()
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["most_accurate"] == "unet" and [e["complete"] for e in board["models"]] == [True, False]
    assert json.loads((out / "compare.json").read_text())["executions"][0]["executor"] == "submitit-local"
