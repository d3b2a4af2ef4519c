"""The two-model ensembles of a ``compare`` experiment, scored on the held-out cases: for every pair of models that
finished, the mean of their held-out class probabilities (each run keeps them, ``train.keep_probabilities``), its
argmax, evaluated like any run's fold. nnU-Net's ``find_best_configuration`` does the same over its configurations
and keeps the best pair; the leaderboard ranks that pair beside the single models.

Runs pair by fold and seed (model A's run of fold f and seed s with model B's of the same fold and seed), so an
ensemble has as many held-out predictions as a model. Predictions, then their ``summary.json``, go to
``OUT/ensembles/A+B/seedS/foldK/``; a pair already scored is skipped.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from unetzoo.data.plan import Plan
from unetzoo.errors import file_error
from unetzoo.experiments.experiment import Experiment
from unetzoo.experiments.nnunet_peer import is_peer
from unetzoo.io import label_dtype, read_label_frames, write_array


def ensemble_folder(out, models: tuple[str, str], fold: int, seed: int) -> Path:
    """Where the ensemble of ``models`` on (``fold``, ``seed``) is written and evaluated."""
    return Path(out) / "ensembles" / "+".join(models) / f"seed{seed}" / f"fold{fold}"


def ensemble_pairs(out, experiment: Experiment) -> list[tuple[str, str]]:
    """Every pair of models whose runs all finished, in the experiment's order (nnU-Net's runs keep no
    probabilities: not paired)."""
    runs = experiment.runs(out)
    done = [
        m
        for m in experiment.models
        if not is_peer(m) and all(r.is_finished() for (model, _, _), r in runs.items() if model == m)
    ]
    return list(combinations(done, 2))


def unscored(out, experiment: Experiment) -> list[tuple[tuple[str, str], int, int]]:
    """(pair, fold, seed) of every ensemble of finished models that has no ``summary.json`` yet."""
    return [
        (pair, fold, seed)
        for pair in ensemble_pairs(out, experiment)
        for seed in experiment.seeds
        for fold in experiment.folds
        if not (ensemble_folder(out, pair, fold, seed) / "summary.json").is_file()
    ]


def score_ensembles(out, experiment: Experiment) -> Path:
    """Write and evaluate every pair's held-out ensemble predictions not scored yet; returns ``OUT/ensembles``."""
    for pair, fold, seed in unscored(out, experiment):
        score_pair(out, pair, fold, seed, ensemble_folder(out, pair, fold, seed))
    return Path(out) / "ensembles"


def score_pair(out, pair: tuple[str, str], fold: int, seed: int, folder: Path) -> dict:
    """The mean of the two runs' held-out probabilities, its argmax written in each case's geometry and evaluated
    against the fold's references; returns the summary."""
    from unetzoo.evaluation import evaluate_folder, label_files
    from unetzoo.experiments.experiment import run_folder

    first, second = (run_folder(out, model, fold, seed) for model in pair)
    plan = Plan.load(first.plan)
    ids = np.asarray(plan.label_ids)
    predictions = label_files(first.validation)
    for case, prediction in predictions.items():
        probabilities = [_probabilities(run.validation / f"{case}.npz") for run in (first, second)]
        if probabilities[0].shape != probabilities[1].shape:
            raise file_error(
                second.validation / f"{case}.npz",
                f"probabilities of shape {probabilities[1].shape}, {pair[0]}'s are {probabilities[0].shape}: "
                "the two runs did not predict the same grid",
            )
        label = ids[((probabilities[0] + probabilities[1]) / 2).argmax(0)].astype(label_dtype(ids))
        frame = read_label_frames(prediction)[0]
        write_array(label, folder / prediction.name, frame.affine, frame.header)
    return evaluate_folder(
        folder, first.validation_labels, folder, label_ids=plan.label_ids[1:], ignore_label=plan.ignore_label
    )


def _probabilities(path: Path) -> np.ndarray:
    if not path.is_file():
        raise file_error(path, "missing: the run kept no held-out probabilities (train.keep_probabilities)")
    with np.load(path) as data:
        return data["probabilities"].astype(np.float32)
