"""What ``unetzoo compare`` runs: the experiment (dataset, models, folds, seeds, budget, base config), recorded in
``compare.json`` and checked before any work, and where each of its runs lives."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from unetzoo.config import SEED_MAX, Config
from unetzoo.errors import UnetzooError, file_error
from unetzoo.experiments.nnunet_peer import check_peer, is_peer
from unetzoo.io import read_json, write_text
from unetzoo.runfolder import RunFolder

EXPERIMENT_FILE = "compare.json"


KEYS = ("data", "models", "folds", "seeds", "budget", "config")  # what makes the experiment; the rest is how it ran
SPLITS_FILE = "splits.json"  # the folds every run of the experiment uses, whatever its seed
MARGIN = 0.01  # default --margin: the Dice a cheaper model may lose to the best and still be chosen


# ---- the experiment -------------------------------------------------------------------------------------
def _differences(saved, new, prefix: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(new, dict):
        return [
            d
            for key in sorted(set(saved) | set(new))
            for d in _differences(saved.get(key), new.get(key), f"{prefix}.{key}")
        ]
    return [] if saved == new else [f"{prefix} {saved!r} -> {new!r}"]


@dataclass
class Experiment:
    """What ``unetzoo compare`` runs, as ``compare.json`` holds it: the dataset, the models, the folds, the training
    seeds, the budget (``{"steps": N}`` or ``{"minutes": M}``) and the base config (without model and fold; its
    ``seed`` draws the folds), which make the experiment (:data:`KEYS`); then how it ran and is read: the test
    folder, the executions, the width measured for each model under a time budget (``widths``, model -> base_features,
    None for a model that takes none or whose width the config fixes), the leaderboard's ``margin`` and the other
    tools' held-out predictions it ranks too (``external``, name -> folder)."""

    data: str
    models: list[str]
    folds: list[int]
    seeds: list[int]
    budget: dict
    config: dict
    test: str | None = None
    executions: list[dict] = field(default_factory=list)
    widths: dict = field(default_factory=dict)
    margin: float = MARGIN
    external: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The layout of ``compare.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Experiment:
        return cls(
            **{key: d[key] for key in KEYS},
            test=d.get("test"),
            executions=list(d.get("executions", [])),
            widths=dict(d.get("widths", {})),
            margin=float(d.get("margin", MARGIN)),
            external=dict(d.get("external", {})),
        )

    @classmethod
    def make(
        cls,
        data,
        models: list[str] | str,
        folds: list[int],
        config: Config,
        steps: int | None = None,
        minutes: float | None = None,
        seeds: list[int] | None = None,
    ) -> Experiment:
        """The experiment, checked before any work: every model exists for the data's dimensions, every fold exists,
        the seeds are distinct (default: the config's seed), the budget is positive and divides into epochs.
        ``models`` "all" means every registered model for the data."""
        from unetzoo.data.datasets import load_dataset
        from unetzoo.data.splits import splits_for
        from unetzoo.models import list_models, model_info
        from unetzoo.models.registry import check_model_args

        # every field's type and range, the check train uses (a bad --set is one line before any work)
        config.validate()
        dataset = load_dataset(data)
        if models in ("all", ["all"]):
            models = [m for m in list_models() if dataset.spatial_dims in model_info(m).spatial_dims]
        if not models:
            raise UnetzooError("--models: give at least one model name, or 'all'")
        if len(set(models)) < len(models):
            raise UnetzooError(f"--models: a model is listed twice ({','.join(models)})")
        for name in models:
            if is_peer(name):  # nnU-Net itself: its configuration for the data, the extra installed
                check_peer(name, dataset.spatial_dims)
                continue
            dims = model_info(name).spatial_dims  # an unknown name: the registry's error lists the valid ones
            check_model_args(name, config.model_args)
            if dataset.spatial_dims not in dims:
                raise UnetzooError(
                    f"--models: {name} supports spatial_dims {dims}, {dataset.root} is {dataset.spatial_dims}D"
                )
        # a bad splits file or --group-by: its one line, now
        n_folds = len(splits_for([c.name for c in dataset.cases], config.data, config.seed))
        if not folds or len(set(folds)) < len(folds) or any(not 0 <= f < n_folds for f in folds):
            raise UnetzooError(
                f"--folds {','.join(map(str, folds))}: give distinct folds among 0..{n_folds - 1} "
                f"(the splits have {n_folds} folds)"
            )
        seeds = [config.seed] if seeds is None else list(seeds)
        if not seeds or len(set(seeds)) < len(seeds) or any(not 0 <= s <= SEED_MAX for s in seeds):
            raise UnetzooError(f"--seeds {','.join(map(str, seeds))}: give distinct seeds between 0 and {SEED_MAX}")
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
                raise UnetzooError(
                    "--set train.max_minutes: a step budget gives every run the same steps; "
                    "use --budget-minutes for a time budget"
                )
            budget = {"steps": int(steps)}
        base = config.to_dict()
        for key in ("model", "fold"):  # set per run
            base.pop(key)
        if config.data.splits_file:  # the jobs may start in another folder (a SLURM node)
            base["data"]["splits_file"] = str(Path(config.data.splits_file).resolve())
        experiment = cls(
            data=str(Path(data).resolve()),
            models=list(models),
            folds=list(folds),
            seeds=seeds,
            budget=budget,
            config=base,
        )
        experiment.run_config(models[0], folds[0], seeds[0])  # the budget fits the config (raises otherwise)
        return experiment

    def run_config(self, model: str, fold: int, seed: int, out=None) -> Config:
        """The config of one run: the experiment's base config, the model, the fold, the training seed, the budget,
        the model's measured width (``widths``) and, with the experiment folder ``out``, its folds
        (:data:`SPLITS_FILE`, drawn once from the base config's seed, so that every seed trains on the same folds)."""
        config = Config.from_dict(self.config)
        config.model, config.fold, config.seed = model, fold, seed
        if self.widths.get(model) is not None:
            config.model_args = {"base_features": self.widths[model], **config.model_args}
        if out is not None and not config.data.splits_file:
            config.data.splits_file = str((Path(out) / SPLITS_FILE).resolve())
        budget, train = self.budget, config.train
        if "minutes" in budget:
            train.max_minutes = budget["minutes"]
            return config
        steps = budget["steps"]
        if config.method_args.get("pass_epochs"):
            raise UnetzooError(
                "--budget counts optimiser steps in epochs of train.iters_per_epoch; method_args.pass_epochs makes "
                "an epoch one pass over the training cases instead: use --budget-minutes, or drop pass_epochs"
            )
        per_epoch = min(train.iters_per_epoch, steps)
        if per_epoch < 1 or steps % per_epoch:
            raise UnetzooError(
                f"--budget {steps} is not a whole number of epochs of train.iters_per_epoch = "
                f"{per_epoch} steps; give a multiple of it, or --set train.iters_per_epoch=N with N "
                f"dividing {steps}"
            )
        train.epochs, train.iters_per_epoch, train.max_minutes = steps // per_epoch, per_epoch, 0.0
        return config

    def budget_text(self) -> str:
        """The budget in words, for the log and the leaderboard."""
        budget, train = self.budget, Config.from_dict(self.config).train
        if "minutes" in budget:
            narrowed = (
                f", and a model that takes base_features is narrowed until the time holds {train.min_steps} "
                f"of its measured steps (train.min_steps; the cost table lists the parameters trained)"
            )
            return (
                f"{budget['minutes']:g} minutes of training per run (train.max_minutes: the {train.scheduler} "
                f"learning-rate schedule anneals over the time, the run stops at it or after {train.epochs} "
                f"epochs of {train.iters_per_epoch} steps); models differ in the steps they make in that time"
                + (narrowed if train.min_steps else "")
            )
        first = self.run_config(self.models[0], self.folds[0], self.seeds[0]).train
        batch = f"batch {train.batch_size}" if train.batch_size else "the batch the data's plan gives"
        return (
            f"{budget['steps']} optimiser steps per run of {batch} ({first.epochs} epoch(s) of "
            f"{first.iters_per_epoch}; {train.scheduler} learning-rate schedule over them; the cost table lists "
            f"each model's batch and patch)"
        )

    @classmethod
    def load(cls, out) -> Experiment:
        """The experiment recorded in the folder ``out`` (its ``compare.json``)."""
        path = Path(out) / EXPERIMENT_FILE
        record = read_json(path, missing="missing: not a unetzoo compare folder")
        if isinstance(record, dict) and "seeds" not in record and all(k in record for k in KEYS if k != "seeds"):
            raise file_error(
                path,
                "made by an older unetzoo (before --seeds, with runs in runs/MODEL/foldK): this version neither "
                "resumes nor ranks it; give another --out",
            )
        if not isinstance(record, dict) or any(key not in record for key in KEYS):
            raise file_error(path, f"not a unetzoo compare file: it needs the keys {', '.join(KEYS)}")
        return cls.from_dict(record)

    def save(self, out) -> None:
        """Write ``compare.json`` into the folder ``out``."""
        write_text(Path(out) / EXPERIMENT_FILE, json.dumps(self.to_dict(), indent=2) + "\n")

    def record(
        self, out: Path, test: Path | None, margin: float | None = None, external: dict | None = None
    ) -> Experiment:
        """Write ``compare.json`` and the folds (:data:`SPLITS_FILE`, unless the config names a splits file), or check
        that the ``compare.json`` there holds the same experiment (refused with one line if not); returns the
        experiment as recorded (its test folder, executions and widths). The test folder may be added to an
        experiment later, not changed; the margin, which only the leaderboard reads, may change; external tools'
        predictions may be added, a name's folder not changed."""
        path = Path(out) / EXPERIMENT_FILE
        test = str(Path(test).resolve()) if test is not None else None
        if margin is not None and not 0 <= margin < 1:
            raise UnetzooError(f"--margin must be a Dice difference in [0, 1), got {margin}")
        if not path.is_file():
            recorded = replace(
                self,
                test=test,
                executions=[],
                widths={},
                margin=MARGIN if margin is None else margin,
                external=dict(external or {}),
            )
            recorded.write_splits(out)
            recorded.save(out)
            return recorded
        recorded = Experiment.load(out)
        changed = [d for key in KEYS for d in _differences(getattr(recorded, key), getattr(self, key), key)]
        if changed:
            more = f" (and {len(changed) - 3} more)" if len(changed) > 3 else ""
            raise file_error(
                path,
                f"this experiment was planned otherwise: {'; '.join(changed[:3])}{more}; "
                "run it with its own options, or give another --out",
            )
        if test is not None and recorded.test not in (None, test):
            raise file_error(path, f"this experiment's test folder is {recorded.test}, not {test}; give another --out")
        if test is not None and recorded.test is None:
            recorded.test = test
            recorded.save(out)
        if margin is not None and margin != recorded.margin:
            recorded.margin = margin
            recorded.save(out)
        for name, folder in (external or {}).items():
            if recorded.external.get(name, folder) != folder:
                raise file_error(
                    path, f"--external {name} is {recorded.external[name]} in this experiment, not {folder}"
                )
        if external and any(name not in recorded.external for name in external):
            recorded.external.update(external)
            recorded.save(out)
        return recorded

    def write_splits(self, out: Path) -> None:
        """The experiment's folds, drawn once from the base config's seed, into ``out``/:data:`SPLITS_FILE`."""
        from unetzoo.data.datasets import load_dataset
        from unetzoo.data.splits import splits_for

        config = Config.from_dict(self.config)
        if config.data.splits_file:
            return
        names = [c.name for c in load_dataset(self.data).cases]
        write_text(Path(out) / SPLITS_FILE, json.dumps(splits_for(names, config.data, config.seed), indent=1) + "\n")

    def runs(self, out) -> dict[tuple[str, int, int], RunFolder]:
        """Every run of the experiment: (model, fold, seed) -> its folder."""
        return {(m, f, s): run_folder(out, m, f, s) for m in self.models for s in self.seeds for f in self.folds}


# ---- runs -----------------------------------------------------------------------------------------------
def run_folder(out, model: str, fold: int, seed: int = 0) -> RunFolder:
    """The run of ``model`` on ``fold`` with training seed ``seed`` in the experiment folder ``out``."""
    return RunFolder(Path(out) / "runs" / model / f"seed{seed}" / f"fold{fold}")


def test_folder(out, model: str) -> Path:
    """The model's predictions of the experiment's test folder (``--test``)."""
    return Path(out) / "test" / model


def test_evaluation(out, model: str) -> Path:
    """The evaluation of those predictions, where the test folder has labels (its ``summary.json``)."""
    return test_folder(out, model) / "evaluation"


def test_record(out, model: str) -> Path:
    """What was predicted, where the test folder has no labels to evaluate against."""
    return test_folder(out, model) / "predicted.json"


def test_done(out, model: str) -> bool:
    return (test_evaluation(out, model) / "summary.json").is_file() or test_record(out, model).is_file()
