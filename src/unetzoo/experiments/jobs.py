"""One job of an experiment, in whatever process an executor started: ``python -m unetzoo.experiments.jobs OUT KIND
[MODEL [FOLD SEED]]``. A job is ``width``, ``train MODEL FOLD SEED``, ``benchmark``, ``ensemble`` or ``test MODEL``;
training code does not know which executor started it."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from unetzoo.config import Config
from unetzoo.errors import UnetzooError, file_error
from unetzoo.experiments.experiment import (
    EXPERIMENT_FILE,
    Experiment,
    run_folder,
    test_evaluation,
    test_folder,
    test_record,
)
from unetzoo.experiments.nnunet_peer import benchmark_peer, is_peer
from unetzoo.io import read_json, write_text


@dataclass(frozen=True)
class Job:
    """One unit of work an executor runs: measure the widths a time budget affords, train one (model, fold, seed),
    benchmark the models, score the two-model ensembles, or predict the test folder."""

    kind: str  # "width", "train", "benchmark", "ensemble" or "test"
    model: str | None = None
    fold: int | None = None
    seed: int | None = None

    @property
    def name(self) -> str:
        run = [f"fold{self.fold}", f"seed{self.seed}"] if self.fold is not None else []
        return "_".join([self.kind] + ([self.model] if self.model else []) + run)

    @property
    def args(self) -> list[str]:
        """The job as command-line words (``python -m unetzoo.experiments.jobs OUT ARGS``)."""
        run = [str(self.fold), str(self.seed)] if self.fold is not None else []
        return [self.kind] + ([self.model] if self.model else []) + run


def test_cases(test: Path, n_channel_files: int) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """Images (and labels, when there are any) of the test folder: a dataset folder (``dataset.json``: its training
    cases and labels) or a folder of images as ``unetzoo predict`` takes it (no labels)."""
    from unetzoo.data.datasets import load_dataset, prediction_inputs

    if (test / "dataset.json").is_file():
        dataset = load_dataset(test)
        return {c.name: c.images for c in dataset.cases}, {
            c.name: c.label for c in dataset.cases if c.label is not None
        }
    return prediction_inputs(test, n_channel_files), {}


# ---- jobs -----------------------------------------------------------------------------------------------
def run_job(
    out, kind: str, model: str | None = None, fold: int | str | None = None, seed: int | str | None = None
) -> str:
    """Run one job of the experiment in ``out`` (in whatever process an executor started); returns what it made."""
    out = Path(out)
    experiment = Experiment.load(out)
    if kind == "width":
        return json.dumps(_measure_widths(out, experiment))
    if kind == "train":
        from unetzoo.training.run import train

        fold, seed = int(fold), int(seed)
        run = run_folder(out, model, fold, seed)
        config = experiment.run_config(model, fold, seed, out)
        if is_peer(model):
            return str(_train_peer(experiment, run, config))
        train(experiment.data, run.path, config, resume=run.checkpoint_file("last").is_file())
        return str(run)
    if kind == "benchmark":
        return str(_benchmark(out, experiment))
    if kind == "ensemble":
        from unetzoo.experiments.ensembles import score_ensembles

        return str(score_ensembles(out, experiment))
    if kind == "test":
        return str(_predict_test(out, experiment, model))
    raise UnetzooError(f"unknown compare job {kind!r} (width, train, benchmark, ensemble or test)")


def needs_width(experiment: Experiment) -> list[str]:
    """The models whose width the time budget decides and that have none recorded yet (see
    :mod:`unetzoo.training.width`): under ``--budget-minutes``, with ``train.min_steps`` > 0, for a model that takes
    ``base_features`` and whose config does not fix it."""
    from unetzoo.training.width import default_width

    config = Config.from_dict(experiment.config)
    if "minutes" not in experiment.budget or config.train.min_steps <= 0 or "base_features" in config.model_args:
        return []
    return [
        m for m in experiment.models if not is_peer(m) and m not in experiment.widths and default_width(m) is not None
    ]


def _fold_split(dataset, config: Config) -> dict[str, list[str]]:
    """The training and held-out cases of a run of the experiment (``config`` from :meth:`Experiment.run_config`)."""
    from unetzoo.data.splits import fold_split, load_splits

    names = [c.name for c in dataset.cases]
    return fold_split(load_splits(config.data.splits_file, names, config.data.group_by), config.fold)


def _train_peer(experiment: Experiment, run, config: Config):
    """A run of nnU-Net itself on the fold (:mod:`unetzoo.experiments.nnunet_peer`)."""
    from unetzoo.data.datasets import load_dataset
    from unetzoo.experiments.nnunet_peer import train_peer

    dataset = load_dataset(experiment.data)
    split = _fold_split(dataset, config)
    train_peer(experiment.data, run, config, dataset.spatial_dims, split["train"], split["val"])
    return run


def _measure_widths(out: Path, experiment: Experiment) -> dict:
    """Measure, once and alone, the width each model of :func:`needs_width` trains with under the time budget (the
    step of the first fold's run, on its plan, device and precision, with this job's threads: those of one training
    job), and record it in ``compare.json``'s ``widths``: every fold and seed of the model then trains that width,
    instead of each run timing its own step while other jobs run."""
    from unetzoo.data.datasets import load_dataset
    from unetzoo.training.planning import plan_for
    from unetzoo.training.width import budget_width

    dataset = load_dataset(experiment.data)
    log = SimpleNamespace(info=print)  # the job's output is its log
    for model in needs_width(experiment):
        config = experiment.run_config(model, experiment.folds[0], experiment.seeds[0], out)
        split = _fold_split(dataset, config)
        measured = budget_width(config, plan_for(dataset, config, split["train"]), len(split["train"]), log)
        experiment.widths[model] = measured.model_args.get("base_features")
        experiment.save(out)
    return experiment.widths


def _benchmark(out: Path, experiment: Experiment) -> Path:
    """Benchmark each finished model that has no figures yet on its first run's config and plan (the training's device
    and precision, this process's threads), one model after another; then the combined table in ``out/benchmark``."""
    from unetzoo.data.plan import Plan
    from unetzoo.device import resolve_device
    from unetzoo.experiments.benchmark import benchmark_models, format_table, write_outputs

    runs = [run_folder(out, m, experiment.folds[0], experiment.seeds[0]) for m in experiment.models]
    failed = []
    for run in runs:
        if not run.is_finished() or run.benchmark.is_file():
            continue
        config = Config.load(run.config)
        if is_peer(config.model):
            try:
                write_text(run.benchmark, json.dumps(benchmark_peer(run, config), indent=2) + "\n")
            except UnetzooError as error:  # the other models are still measured
                failed.append(f"{config.model} ({error})")
            continue
        result = benchmark_models(
            [config.model],
            Plan.load(run.plan),
            config=config,
            configs={config.model: config},
            device=resolve_device(config.train.device).type,
        )
        result["models"][0]["run"] = str(run)
        if result["models"][0].get("errors"):
            failed.append(f"{config.model} ({', '.join(result['models'][0]['errors'])})")
            continue  # no benchmark.json: the next invocation measures it again
        write_text(run.benchmark, json.dumps(result, indent=2) + "\n")
    results = [read_json(run.benchmark) for run in runs if run.benchmark.is_file()]
    if results:
        combined = {**results[0], "models": [r["models"][0] for r in results]}
        write_outputs(combined, out / "benchmark")
        print(format_table(combined))
    if failed:
        raise UnetzooError(f"benchmark failed for {', '.join(failed)}")
    return out / "benchmark"


def _predict_test(out: Path, experiment: Experiment, model: str) -> Path:
    """The ensemble of the model's runs (every fold and seed; or its one run) predicts the test folder; evaluated
    where it has labels."""
    from unetzoo.evaluation import evaluate_folder, link_references
    from unetzoo.inference.predictor import Ensemble, Predictor

    if not experiment.test:
        raise file_error(out / EXPERIMENT_FILE, "no test folder recorded (pass --test DIR)")
    runs = [run for (m, _, _), run in experiment.runs(out).items() if m == model]
    device = Config.load(runs[0].config).train.device
    predictor = Ensemble(runs, device=device) if len(runs) > 1 else Predictor(runs[0], device=device)
    images, labels = test_cases(Path(experiment.test), predictor.plan.n_channel_files)
    folder = test_folder(out, model)
    predictor.predict_cases(images, folder)
    if not labels:
        write_text(
            test_record(out, model),
            json.dumps({"cases": sorted(images), "runs": [str(r) for r in runs]}, indent=1) + "\n",
        )
        return folder
    evaluate_folder(
        folder,
        link_references(labels, folder / "labels"),
        test_evaluation(out, model),
        label_ids=predictor.plan.label_ids[1:],
        ignore_label=predictor.plan.ignore_label,
    )
    return folder


def _main(argv: list[str]) -> int:
    """``python -m unetzoo.experiments.jobs OUT KIND [MODEL [FOLD SEED]]``: one job, as the local executor starts it."""
    from unetzoo.errors import exit_status

    return exit_status(lambda: print(run_job(*argv)))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
