"""One job of an experiment, in whatever process an executor started: ``python -m unetzoo.experiments.jobs OUT KIND
[MODEL [FOLD]]``. A job is ``train MODEL FOLD``, ``benchmark`` or ``test MODEL``; training code does not know which
executor started it."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

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
from unetzoo.io import file_ending, output_folder, read_json, write_text


@dataclass(frozen=True)
class Job:
    """One unit of work an executor runs: train one (model, fold), benchmark the models, or predict the test folder."""

    kind: str  # "train", "benchmark" or "test"
    model: str | None = None
    fold: int | None = None

    @property
    def name(self) -> str:
        return "_".join(
            [self.kind] + ([self.model] if self.model else []) + ([f"fold{self.fold}"] if self.fold is not None else [])
        )

    @property
    def args(self) -> list[str]:
        """The job as command-line words (``python -m unetzoo.experiments.jobs OUT ARGS``)."""
        return [self.kind] + ([self.model] if self.model else []) + ([str(self.fold)] if self.fold is not None else [])


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
def run_job(out, kind: str, model: str | None = None, fold: int | str | None = None) -> str:
    """Run one job of the experiment in ``out`` (in whatever process an executor started); returns what it made."""
    out = Path(out)
    experiment = Experiment.load(out)
    if kind == "train":
        from unetzoo.training.run import train

        fold = int(fold)
        run = run_folder(out, model, fold)
        train(
            experiment.data, run.path, experiment.run_config(model, fold), resume=run.checkpoint_file("last").is_file()
        )
        return str(run)
    if kind == "benchmark":
        return str(_benchmark(out, experiment))
    if kind == "test":
        return str(_predict_test(out, experiment, model))
    raise UnetzooError(f"unknown compare job {kind!r} (train, benchmark or test)")


def _benchmark(out: Path, experiment: Experiment) -> Path:
    """Benchmark each finished model that has no figures yet on its first run's config and plan (the training's device
    and precision, this process's threads), one model after another; then the combined table in ``out/benchmark``."""
    from unetzoo.data.plan import Plan
    from unetzoo.device import resolve_device
    from unetzoo.experiments.benchmark import benchmark_models, format_table, write_outputs

    runs = [run_folder(out, m, experiment.folds[0]) for m in experiment.models]
    failed = []
    for run in runs:
        if not run.is_finished() or run.benchmark.is_file():
            continue
        config = Config.load(run.config)
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
    """The model's fold ensemble (or its one run) predicts the test folder; evaluated where it has labels."""
    from unetzoo.evaluation import evaluate_folder
    from unetzoo.inference.predictor import Ensemble, Predictor

    if not experiment.test:
        raise file_error(out / EXPERIMENT_FILE, "no test folder recorded (pass --test DIR)")
    runs = [run_folder(out, model, f) for f in experiment.folds]
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
    references = output_folder(folder / "labels")
    for name, label in labels.items():  # evaluate_folder pairs files by name: link the references under the case names
        link = references / f"{name}{file_ending(label)}"
        if not link.exists():
            link.symlink_to(Path(label).resolve())
    evaluate_folder(
        folder,
        references,
        test_evaluation(out, model),
        label_ids=predictor.plan.label_ids[1:],
        ignore_label=predictor.plan.ignore_label,
    )
    return folder


def _main(argv: list[str]) -> int:
    """``python -m unetzoo.experiments.jobs OUT KIND [MODEL [FOLD]]``: one job, as the local executor starts it."""
    from unetzoo.errors import exit_status

    return exit_status(lambda: print(run_job(*argv)))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
