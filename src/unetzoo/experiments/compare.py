"""``unetzoo compare``: several models trained on the same folds of one dataset with equal budgets, then ranked.

An experiment is a list of ordinary run folders plus one file that says which runs make it and with what budget
(the project's design: one experiment, many runs). The folder ``OUT`` holds:

* ``compare.json``: the experiment (dataset, models, folds, seeds, budget, base config; then the test folder, the
  executions, the measured widths and the margin), :class:`unetzoo.experiments.experiment.Experiment`, written by the
  first invocation; the same command again finishes what is left (finished runs skipped, killed ones resumed from
  ``checkpoint_last.pt``), another experiment is refused with one line;
* ``splits.json``: the folds, drawn once from the base config's seed (unless ``data.splits_file`` names them), so
  that every seed holds out the same cases (each run's seed still draws what it draws inside its fold: the plan's
  case sample, and an inner validation or calibration split where the run has one);
* ``runs/MODEL/seedS/foldK/``: one run folder per (model, fold, seed), made by :func:`unetzoo.training.train`, the
  code behind ``unetzoo train`` (resume, logs, held-out predictions and their probabilities, the weights at 1/4 and
  1/2 of the budget and their held-out evaluation);
* ``ensembles/A+B/seedS/foldK/``: every pair of models' averaged held-out probabilities, evaluated
  (:mod:`unetzoo.experiments.ensembles`);
* ``logs/JOB.log`` (local executor) or ``slurm/`` (submitit's scripts and logs): each job's output;
* ``benchmark/``: ``unetzoo benchmark`` of each model's first run, on the training device and precision (and a copy
  in that run folder, ``benchmark.json``);
* ``test/MODEL/``: with ``--test``, the model's fold ensemble's predictions of the test folder, and their evaluation;
* ``leaderboard.md``, ``.csv``, ``.json`` and ``pareto.png`` (:mod:`unetzoo.experiments.leaderboard`), computed from those files.

Budgets: ``steps`` gives every run the same number of optimiser steps of the same batch (epochs of
``train.iters_per_epoch`` steps; the poly learning-rate schedule runs over them); ``minutes`` the same wall-clock
training time (``train.max_minutes``), on the same hardware; there, a ``width`` job first measures, once per model and
alone, the width the budget affords (:mod:`unetzoo.training.width`), which every fold and seed then trains. A job is
``width``, ``train MODEL FOLD SEED``, ``benchmark``, ``ensemble`` or ``test MODEL``, run by :func:`unetzoo.experiments.jobs.run_job` wherever an executor (:mod:`unetzoo.experiments.executors`) starts it: training code does
not know which executor started it.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from unetzoo.config import Config
from unetzoo.data.datasets import load_dataset
from unetzoo.errors import UnetzooError, file_error
from unetzoo.experiments.ensembles import unscored
from unetzoo.experiments.experiment import Experiment, test_done
from unetzoo.experiments.external import parse_external, score_external
from unetzoo.experiments.jobs import Job, needs_width, test_cases
from unetzoo.experiments.nnunet_peer import is_peer
from unetzoo.io import output_folder

SNAPSHOTS = (0.25, 0.5)  # fractions of the budget at which every run keeps its weights (learning curves)


# ---- the command ----------------------------------------------------------------------------------------
def compare(
    data,
    models,
    out,
    folds=(0,),
    config: Config | None = None,
    steps: int | None = None,
    minutes: float | None = None,
    executor=None,
    test=None,
    seeds=None,
    margin: float | None = None,
    external: list[str] | None = None,
    log=print,
) -> Path:
    """Make (or check against the one recorded) the experiment in ``out``, run what is left with ``executor``
    (default: local, one job at a time), then write the leaderboard; returns its path. Failed jobs are listed with
    their logs after every other job ran, and end the command with an error. Every run keeps its held-out
    probabilities (for the ensembles) and, unless ``train.snapshots`` names other fractions, its weights at 1/4 and
    1/2 of the budget (for the learning curves). ``external``: ``NAME=DIR`` folders of another tool's held-out
    predictions, ranked beside the models (:mod:`unetzoo.experiments.external`)."""
    from unetzoo.experiments.executors import LocalExecutor
    from unetzoo.experiments.leaderboard import write_leaderboard

    config = copy.deepcopy(config) if config else Config()  # the caller's config stays as it was
    config.train.keep_probabilities = True
    config.train.snapshots = config.train.snapshots or list(SNAPSHOTS)
    experiment = Experiment.make(data, models, list(folds), config, steps=steps, minutes=minutes, seeds=seeds)
    if test is not None:  # its cases are listed before any training: an empty or unreadable folder fails now
        if not Path(test).exists():
            raise file_error(test, "test folder not found")
        dataset = load_dataset(experiment.data)
        test_cases(Path(test), len(dataset.cases[0].images))
    out = output_folder(out)
    recorded = experiment.record(out, test, margin, parse_external(external or [], experiment.models))
    executor = executor or LocalExecutor()
    runs = recorded.runs(out)
    todo = [Job("train", m, f, s) for (m, f, s), run in runs.items() if not run.is_finished()]
    resumed = sum(runs[j.model, j.fold, j.seed].checkpoint_file("last").is_file() for j in todo)
    log(
        f"compare: {len(runs)} runs ({', '.join(experiment.models)} x fold {', '.join(map(str, experiment.folds))} "
        f"x seed {', '.join(map(str, experiment.seeds))}): {len(runs) - len(todo)} finished, {resumed} to resume, "
        f"{len(todo) - resumed} to start; budget: {experiment.budget_text()}"
    )
    if todo:  # how the trainings ran (jobs at once, threads each) belongs to the answer; an invocation with nothing to train adds nothing
        recorded.executions.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **executor.describe()})
        recorded.save(out)
    if todo and needs_width(recorded):  # alone, before any training, with one job's threads
        failed = executor.run(out, [Job("width")], log, exclusive=True)
        if failed:
            raise UnetzooError(f"measuring the widths failed ({failed['width']}); no run was started")
        log(f"compare: widths (base_features) under the time budget: {Experiment.load(out).widths}")
    failures = executor.run(out, todo, log) if todo else {}
    for job in todo:  # stopped before its run's last file, whatever its exit status: the next invocation resumes it
        run = runs[job.model, job.fold, job.seed]
        if job.name not in failures and not run.is_finished():
            failures[job.name] = f"ended before its run finished ({run})"
    complete = [m for m in experiment.models if all(r.is_finished() for (k, _, _), r in runs.items() if k == m)]
    fold, seed = experiment.folds[0], experiment.seeds[0]
    if any(not runs[m, fold, seed].benchmark.is_file() for m in complete):
        failures.update(executor.run(out, [Job("benchmark")], log, exclusive=True))
    if unscored(out, recorded):
        failures.update(executor.run(out, [Job("ensemble")], log))
    if recorded.test:
        tests = [Job("test", m) for m in complete if not is_peer(m) and not test_done(out, m)]  # nnU-Net: its own
        failures.update(executor.run(out, tests, log))
    try:
        score_external(out, recorded)
    except UnetzooError as error:  # e.g. a held-out case the tool did not predict: the models are still ranked
        failures["external"] = str(error)
    if not todo and not failures and len(complete) == len(experiment.models):
        log("compare: every run is finished; nothing to train")
    page = write_leaderboard(out)
    log(f"compare: leaderboard {page}")
    if failures:
        lines = "; ".join(f"{name}: {message}" for name, message in failures.items())
        raise UnetzooError(
            f"{len(failures)} job(s) failed ({lines}); the other runs are kept: run the same command again to finish"
        )
    return page
