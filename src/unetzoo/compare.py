"""``unetzoo compare``: several models trained on the same folds of one dataset with equal budgets, then ranked.

An experiment is a list of ordinary run folders plus one file that says which runs make it and with what budget
(DESIGN.md, "One experiment, many runs"). The folder ``OUT`` holds:

* ``compare.json``: the plan (dataset, models, folds, budget, base config), written by the first invocation; the
  same command again finishes what is left (finished runs skipped, killed ones resumed from ``checkpoint_last.pt``),
  another plan is refused with one line;
* ``runs/MODEL/foldK/``: one run folder per (model, fold), made by :func:`unetzoo.training.train`, the code behind
  ``unetzoo train`` (resume, logs, validation predictions and post-processing choice included);
* ``logs/JOB.log`` (local executor) or ``slurm/`` (submitit's scripts and logs): each job's output;
* ``benchmark/``: ``unetzoo benchmark`` of each model's first run, on the training device and precision (and a copy
  in that run folder, ``benchmark.json``);
* ``test/MODEL/``: with ``--test``, the model's fold ensemble's predictions of the test folder, and their evaluation;
* ``leaderboard.md``, ``.csv``, ``.json`` and ``pareto.png`` (:mod:`unetzoo.leaderboard`), computed from those files.

Budgets: ``steps`` gives every run the same number of optimiser steps of the same batch (epochs of
``train.iters_per_epoch`` steps; the poly learning-rate schedule runs over them); ``minutes`` the same wall-clock
training time (``train.max_minutes``), on the same hardware. A job is ``train MODEL FOLD``, ``benchmark`` or
``test MODEL``, run by :func:`run_job` wherever an executor (:mod:`unetzoo.executors`) starts it: training code does
not know which executor started it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from unetzoo.config import Config
from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import file_ending, output_folder, write_text

PLAN_FILE = "compare.json"
PLAN_KEYS = ("data", "models", "folds", "budget", "config")  # what makes the experiment; the rest is how it ran


@dataclass(frozen=True)
class Job:
    """One unit of work an executor runs: train one (model, fold), benchmark the models, or predict the test folder."""

    kind: str  # "train", "benchmark" or "test"
    model: str | None = None
    fold: int | None = None

    @property
    def name(self) -> str:
        return "_".join([self.kind] + ([self.model] if self.model else []) + ([f"fold{self.fold}"] if self.fold is not None else []))

    @property
    def args(self) -> list[str]:
        """The job as command-line words (``python -m unetzoo.compare OUT ARGS``)."""
        return [self.kind] + ([self.model] if self.model else []) + ([str(self.fold)] if self.fold is not None else [])


# ---- the plan -------------------------------------------------------------------------------------------
def make_plan(data, models: list[str] | str, folds: list[int], config: Config, steps: int | None = None, minutes: float | None = None) -> dict:
    """The experiment's plan, checked before any work: every model exists for the data's dimensions, every fold exists,
    the budget is positive and divides into epochs. ``models`` "all" means every registered model for the data."""
    from unetzoo.data.datasets import load_dataset
    from unetzoo.data.splits import splits_for
    from unetzoo.models import list_models, model_info

    config.validate()  # every field's type and range, the check train uses (a bad --set is one line before any work)
    dataset = load_dataset(data)
    if models in ("all", ["all"]):
        models = [m for m in list_models() if dataset.spatial_dims in model_info(m).spatial_dims]
    if not models:
        raise UnetzooError("--models: give at least one model name, or 'all'")
    if len(set(models)) < len(models):
        raise UnetzooError(f"--models: a model is listed twice ({','.join(models)})")
    for name in models:
        if dataset.spatial_dims not in model_info(name).spatial_dims:  # an unknown name: the registry's error lists the valid ones
            raise UnetzooError(f"--models: {name} supports spatial_dims {model_info(name).spatial_dims}, {dataset.root} is {dataset.spatial_dims}D")
    n_folds = len(splits_for([c.name for c in dataset.cases], config.data, config.seed))  # a bad splits file or --group-by: its one line, now
    if not folds or len(set(folds)) < len(folds) or any(not 0 <= f < n_folds for f in folds):
        raise UnetzooError(f"--folds {','.join(map(str, folds))}: give distinct folds among 0..{n_folds - 1} (the splits have {n_folds} folds)")
    if steps is not None and minutes is not None:
        raise UnetzooError("give --budget STEPS or --budget-minutes M, not both")
    if minutes is not None:
        if not minutes > 0:
            raise UnetzooError(f"--budget-minutes must be positive, got {minutes}")
        budget = {"minutes": float(minutes)}
    else:
        steps = config.train.epochs * config.train.iters_per_epoch if steps is None else steps
        if steps < 1:
            raise UnetzooError(f"--budget must be a positive number of optimiser steps, got {steps}")
        if config.train.max_minutes:
            raise UnetzooError("--set train.max_minutes: a step budget gives every run the same steps; use --budget-minutes for a time budget")
        budget = {"steps": int(steps)}
    base = config.to_dict()
    for key in ("model", "fold"):  # set per run
        base.pop(key)
    if config.data.splits_file:  # the jobs may start in another folder (a SLURM node)
        base["data"]["splits_file"] = str(Path(config.data.splits_file).resolve())
    plan = {"data": str(Path(data).resolve()), "models": list(models), "folds": list(folds), "budget": budget, "config": base}
    run_config(plan, models[0], folds[0])  # the budget fits the config (raises otherwise)
    return plan


def run_config(plan: dict, model: str, fold: int) -> Config:
    """The config of one run: the plan's base config, the model, the fold and the budget."""
    config = Config.from_dict(plan["config"])
    config.model, config.fold = model, fold
    budget, train = plan["budget"], config.train
    if "minutes" in budget:
        train.max_minutes = budget["minutes"]
        return config
    steps = budget["steps"]
    per_epoch = min(train.iters_per_epoch, steps)
    if per_epoch < 1 or steps % per_epoch:
        raise UnetzooError(f"--budget {steps} is not a whole number of epochs of train.iters_per_epoch = {per_epoch} steps; "
                           f"give a multiple of it, or --set train.iters_per_epoch=N with N dividing {steps}")
    train.epochs, train.iters_per_epoch, train.max_minutes = steps // per_epoch, per_epoch, 0.0
    return config


def budget_text(plan: dict) -> str:
    """The budget in words, for the log and the leaderboard."""
    budget, config = plan["budget"], Config.from_dict(plan["config"])
    if "minutes" in budget:
        return (f"{budget['minutes']:g} minutes of training per run (train.max_minutes: the {config.train.scheduler} learning-rate "
                f"schedule anneals over the time, the run stops at it or after {config.train.epochs} epochs of "
                f"{config.train.iters_per_epoch} steps); models differ in the steps they make in that time"
                + (f", and a model that takes base_features is narrowed until the time holds {config.train.min_steps} of its measured steps "
                   f"(train.min_steps; the cost table lists the parameters trained)" if config.train.min_steps else ""))
    first = run_config(plan, plan["models"][0], plan["folds"][0]).train
    batch = f"batch {config.train.batch_size}" if config.train.batch_size else "the batch the data's plan gives"
    return (f"{budget['steps']} optimiser steps per run of {batch} ({first.epochs} epoch(s) of {first.iters_per_epoch}; "
            f"{config.train.scheduler} learning-rate schedule over them; the cost table lists each model's batch and patch)")


def load_plan(out) -> dict:
    path = Path(out) / PLAN_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise file_error(path, "missing: not a unetzoo compare folder") from None
    except json.JSONDecodeError as exc:
        raise file_error(path, f"invalid JSON ({exc})") from None


def _differences(saved, new, prefix: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(new, dict):
        return [d for key in sorted(set(saved) | set(new)) for d in _differences(saved.get(key), new.get(key), f"{prefix}.{key}")]
    return [] if saved == new else [f"{prefix} {saved!r} -> {new!r}"]


def record_plan(out: Path, plan: dict, test: Path | None) -> dict:
    """Write ``compare.json``, or check that the one there holds the same plan (refused with one line if not). The
    test folder may be added to an experiment later, not changed."""
    path = out / PLAN_FILE
    test = str(Path(test).resolve()) if test is not None else None
    if not path.is_file():
        record = {**plan, "test": test, "executions": []}
        write_text(path, json.dumps(record, indent=2) + "\n")
    else:
        record = load_plan(out)
        changed = [d for key in PLAN_KEYS for d in _differences(record.get(key), plan[key], key)]
        if changed:
            more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
            raise file_error(path, f"this experiment was planned otherwise: {'; '.join(changed[:3])}{more}; run it with its own options, or give another --out")
        if test is not None and record.get("test") not in (None, test):
            raise file_error(path, f"this experiment's test folder is {record['test']}, not {test}; give another --out")
        if test is not None and record.get("test") is None:
            record["test"] = test
            write_text(path, json.dumps(record, indent=2) + "\n")
    return record


# ---- runs -----------------------------------------------------------------------------------------------
def run_folder(out, model: str, fold: int) -> Path:
    return Path(out) / "runs" / model / f"fold{fold}"


def finished(run_dir: Path) -> bool:
    """A run is finished when training wrote its last file: the post-processed held-out fold's summary."""
    return (run_dir / "validation" / "postprocessed" / "summary.json").is_file()


def test_folder(out, model: str) -> Path:
    return Path(out) / "test" / model


def _test_cases(test: Path, n_channel_files: int) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Images (and labels, when there are any) of the test folder: a dataset folder (``dataset.json``: its training
    cases and labels) or a folder of images as ``unetzoo predict`` takes it (no labels)."""
    from unetzoo.data.datasets import load_dataset, prediction_inputs

    if (test / "dataset.json").is_file():
        dataset = load_dataset(test)
        return {c.name: c.images for c in dataset.cases}, {c.name: c.label for c in dataset.cases if c.label is not None}
    return prediction_inputs(test, n_channel_files), {}


def test_done(out, model: str) -> bool:
    folder = test_folder(out, model)
    return (folder / "evaluation" / "summary.json").is_file() or (folder / "predicted.json").is_file()


# ---- jobs -----------------------------------------------------------------------------------------------
def run_job(out, kind: str, model: str | None = None, fold: int | str | None = None) -> str:
    """Run one job of the experiment in ``out`` (in whatever process an executor started); returns what it made."""
    out = Path(out)
    plan = load_plan(out)
    if kind == "train":
        from unetzoo.training import LAST, CHECKPOINT_EXT, train

        fold = int(fold)
        run = run_folder(out, model, fold)
        train(plan["data"], run, run_config(plan, model, fold), resume=(run / f"{LAST}{CHECKPOINT_EXT}").is_file())
        return str(run)
    if kind == "benchmark":
        return str(_benchmark(out, plan))
    if kind == "test":
        return str(_predict_test(out, plan, model))
    raise UnetzooError(f"unknown compare job {kind!r} (train, benchmark or test)")


def _benchmark(out: Path, plan: dict) -> Path:
    """Benchmark each finished model that has no figures yet on its first run's config and plan (the training's device
    and precision, this process's threads), one model after another; then the combined table in ``out/benchmark``."""
    from unetzoo.benchmark import benchmark_models, format_table, write_outputs
    from unetzoo.data.plan import Plan
    from unetzoo.inference import resolve_device

    runs = [run_folder(out, m, plan["folds"][0]) for m in plan["models"]]
    failed = []
    for run in runs:
        if not finished(run) or (run / "benchmark.json").is_file():
            continue
        config = Config.load(run / "config.json")
        result = benchmark_models([config.model], Plan.load(run / "plan.json"), config=config, configs={config.model: config},
                                  device=resolve_device(config.train.device).type)
        result["models"][0]["run"] = str(run)
        if result["models"][0].get("errors"):
            failed.append(f"{config.model} ({', '.join(result['models'][0]['errors'])})")
            continue  # no benchmark.json: the next invocation measures it again
        write_text(run / "benchmark.json", json.dumps(result, indent=2) + "\n")
    results = [json.loads((run / "benchmark.json").read_text()) for run in runs if (run / "benchmark.json").is_file()]
    if results:
        combined = {**results[0], "models": [r["models"][0] for r in results]}
        write_outputs(combined, out / "benchmark")
        print(format_table(combined))
    if failed:
        raise UnetzooError(f"benchmark failed for {', '.join(failed)}")
    return out / "benchmark"


def _predict_test(out: Path, plan: dict, model: str) -> Path:
    """The model's fold ensemble (or its one run) predicts the test folder; evaluated where it has labels."""
    from unetzoo.evaluation import evaluate_folder
    from unetzoo.inference import Ensemble, Predictor

    record = load_plan(out)
    if not record.get("test"):
        raise file_error(out / PLAN_FILE, "no test folder recorded (pass --test DIR)")
    runs = [run_folder(out, model, f) for f in plan["folds"]]
    device = Config.load(runs[0] / "config.json").train.device
    predictor = Ensemble(runs, device=device) if len(runs) > 1 else Predictor(runs[0], device=device)
    images, labels = _test_cases(Path(record["test"]), predictor.plan.n_channel_files)
    folder = test_folder(out, model)
    predictor.predict_cases(images, folder)
    if not labels:
        write_text(folder / "predicted.json", json.dumps({"cases": sorted(images), "runs": [str(r) for r in runs]}, indent=1) + "\n")
        return folder
    references = output_folder(folder / "labels")
    for name, label in labels.items():  # evaluate_folder pairs files by name: link the references under the case names
        link = references / f"{name}{file_ending(label)}"
        if not link.exists():
            link.symlink_to(Path(label).resolve())
    evaluate_folder(folder, references, folder / "evaluation", label_ids=predictor.plan.label_ids[1:])
    return folder


# ---- the command ----------------------------------------------------------------------------------------
def compare(data, models, out, folds=(0,), config: Config | None = None, steps: int | None = None, minutes: float | None = None,
            executor=None, test=None, log=print) -> Path:
    """Plan (or check the plan of) the experiment in ``out``, run what is left with ``executor`` (default: local,
    one job at a time), then write the leaderboard; returns its path. Failed jobs are listed with their logs after
    every other job ran, and end the command with an error."""
    from unetzoo.executors import LocalExecutor
    from unetzoo.leaderboard import write_leaderboard

    out = output_folder(out)
    plan = make_plan(data, models, list(folds), config or Config(), steps=steps, minutes=minutes)
    if test is not None and not Path(test).exists():
        raise file_error(test, "test folder not found")
    record = record_plan(out, plan, test)
    executor = executor or LocalExecutor()
    runs = {(m, f): run_folder(out, m, f) for m in plan["models"] for f in plan["folds"]}
    todo = [Job("train", m, f) for (m, f), run in runs.items() if not finished(run)]
    resumed = sum((run_folder(out, j.model, j.fold) / "checkpoint_last.pt").is_file() for j in todo)
    log(f"compare: {len(runs)} runs ({', '.join(plan['models'])} x fold {', '.join(map(str, plan['folds']))}): "
        f"{len(runs) - len(todo)} finished, {resumed} to resume, {len(todo) - resumed} to start; budget: {budget_text(plan)}")
    if todo:  # how the trainings ran (jobs at once, threads each) belongs to the answer; an invocation with nothing to train adds nothing
        record["executions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **executor.describe()})
        write_text(out / PLAN_FILE, json.dumps(record, indent=2) + "\n")
    failures = executor.run(out, todo, log) if todo else {}
    complete = [m for m in plan["models"] if all(finished(runs[m, f]) for f in plan["folds"])]
    if any(not (runs[m, plan["folds"][0]] / "benchmark.json").is_file() for m in complete):
        failures.update(executor.run(out, [Job("benchmark")], log, exclusive=True))
    if record.get("test"):
        failures.update(executor.run(out, [Job("test", m) for m in complete if not test_done(out, m)], log))
    if not todo and not failures and len(complete) == len(plan["models"]):
        log("compare: every run is finished; nothing to train")
    page = write_leaderboard(out)
    log(f"compare: leaderboard {page}")
    if failures:
        lines = "; ".join(f"{name}: {message}" for name, message in failures.items())
        raise UnetzooError(f"{len(failures)} job(s) failed ({lines}); the other runs are kept: run the same command again to finish")
    return page


def _main(argv: list[str]) -> int:
    """``python -m unetzoo.compare OUT KIND [MODEL [FOLD]]``: one job, as the local executor starts it."""
    from unetzoo.cli import exit_status

    return exit_status(lambda: print(run_job(*argv)))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
