"""What ``unetzoo compare`` runs: the experiment (dataset, models, folds, budget, base config), recorded in
``compare.json`` and checked before any work, and where each of its runs lives."""

from __future__ import annotations

import json
from pathlib import Path

from unetzoo.config import Config
from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import write_text

PLAN_FILE = "compare.json"


PLAN_KEYS = ("data", "models", "folds", "budget", "config")  # what makes the experiment; the rest is how it ran


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


def test_done(out, model: str) -> bool:
    folder = test_folder(out, model)
    return (folder / "evaluation" / "summary.json").is_file() or (folder / "predicted.json").is_file()

