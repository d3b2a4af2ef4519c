"""The answer of ``unetzoo compare``: the models ranked by cross-validated accuracy, with its uncertainty, its
stability over the budget and their cost.

Computed from files only (the project's design: one experiment, many runs): each run's held-out fold
(``RUN/validation/summary.json``: the run's reported weights, the final ones unless ``train.select=best`` chose on an
inner split, and no post-processing, whose choice is made on that same fold), its ``snapshots.json`` (the held-out
fold at 1/4 and 1/2 of the budget), ``history.json`` (training time), ``config.json`` (width), the benchmark of the
model's first run (``RUN/benchmark.json``), the pairs' ensembles (``OUT/ensembles``) and the test folder's evaluation
(``OUT/test/MODEL/evaluation``). Writes ``leaderboard.md``, ``.csv``, ``.json``, ``pareto.png`` and
``learning_curves.png`` into the experiment folder.

Statistics (:mod:`unetzoo.experiments.statistics`, the module ``report`` uses too), over the held-out cases of every
fold pooled, every seed: the figure is nnU-Net's foreground mean (the mean over classes of each class's mean over
cases); intervals resample subjects (``data.group_by``; the frames of a 3D+t case are one subject), and seeds when
there are several; the paired difference to the most accurate model has the same interval, a permutation test over
subjects (Holm over the comparisons) and a one-sided 95 % lower bound, which decides the margin rule:
**most accurate** = highest mean Dice; **chosen** = the cheapest model (inference time per case, fewer parameters on a
tie) whose bound is above minus the margin (``--margin``, default 0.01): not worse than the best by more than it.

A model with a run not finished (or failed) is listed as incomplete and not ranked.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import textwrap
from pathlib import Path

import numpy as np

from unetzoo.errors import UnetzooError
from unetzoo.experiments import statistics as stats
from unetzoo.experiments.ensembles import ensemble_folder, ensemble_pairs
from unetzoo.experiments.experiment import Experiment, test_evaluation
from unetzoo.experiments.external import external_folder
from unetzoo.formatting import duration, human
from unetzoo.io import read_json, write_bytes, write_text
from unetzoo.runfolder import RunFolder

METRICS = ("Dice", "NSD", "HD95")
COST = ("params", "macs", "train_step_s", "train_peak_mem_mb", "infer_s", "infer_peak_mem_mb")


# ---- the held-out table ---------------------------------------------------------------------------------
def case_table(summaries: list[dict]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """The cases of several evaluation summaries pooled: case keys (3D+t: case and frame), label ids, and per metric
    an array (cases, classes) with NaN where a value is undefined."""
    keys, rows = [], []
    labels = [str(label) for label in summaries[0]["label_ids"]]
    for summary in summaries:
        for case in summary["cases"]:
            keys.append(case["case"] if "frame" not in case else f"{case['case']} frame {case['frame']}")
            rows.append([[case["metrics"][label].get(m) for label in labels] for m in METRICS])
    values = np.array(rows, dtype=float).reshape(len(rows), len(METRICS), len(labels))  # None -> NaN
    return keys, labels, {m: values[:, i] for i, m in enumerate(METRICS)}


def seed_table(summaries_per_seed: list[list[dict]]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """Per seed, the summaries of its folds pooled (:func:`case_table`), stacked: per metric an array (seeds, cases,
    classes), the cases in the first seed's order (every seed holds out the same cases)."""
    tables = [case_table(summaries) for summaries in summaries_per_seed]
    keys, labels, _ = tables[0]
    for other, _, _ in tables[1:]:
        if sorted(other) != sorted(keys):
            raise ValueError("the seeds held out different cases")
    order = [[table[0].index(k) for k in keys] for table in tables]
    return keys, labels, {m: np.stack([t[2][m][o] for t, o in zip(tables, order)]) for m in METRICS}


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _stat(values: np.ndarray, subjects) -> dict:
    lo, hi, method = stats.cluster_interval(values, subjects)
    return {"mean": _finite(stats.score(values)), "ci": [_finite(lo), _finite(hi)], "ci_method": method}


# ---- one model --------------------------------------------------------------------------------------------
def _model_entry(out: Path, experiment: Experiment, model: str) -> dict:
    runs = {(f, s): r for (m, f, s), r in experiment.runs(out).items() if m == model}
    done = [r for r in runs.values() if r.is_finished()]
    entry = {
        "model": model,
        "runs": [str(r) for r in runs.values()],
        "finished_runs": len(done),
        "complete": len(done) == len(runs),
    }
    histories = [read_json(r.history) or [] for r in done]
    entry["training_time_s"] = (
        sum(h.get("epoch_time_s") or 0.0 for history in histories for h in history) if entry["complete"] else None
    )
    entry["epochs"] = [len(history) for history in histories]
    entry["steps"] = [history[-1].get("steps") if history else None for history in histories]
    configs = [read_json(r.config) for r in done]  # resolved by training: what one step saw
    first = configs[0] if configs else None
    entry["step"] = (
        {"batch_size": first["train"]["batch_size"], "patch": first["data"]["patch_size"]} if first else None
    )
    entry["widths"] = sorted({c["model_args"].get("base_features") for c in configs if c}, key=str)
    entry["reported"] = sorted({r.selected() for r in done})  # "last" (final weights) or "best" (inner split)
    entry["width_measured"] = experiment.widths.get(model)
    bench = read_json(runs[experiment.folds[0], experiment.seeds[0]].benchmark)
    entry["cost"] = {k: bench["models"][0].get(k) for k in COST} if bench else None
    entry["benchmark"] = (
        {k: bench.get(k) for k in ("device", "device_name", "threads", "precision", "torch", "infer_shape")}
        if bench
        else None
    )
    if entry["complete"]:
        summaries = [[read_json(runs[f, s].summary) for f in experiment.folds] for s in experiment.seeds]
        entry["_cases"] = seed_table(summaries)
        entry["_snapshots"] = _snapshot_tables(runs, experiment)
    test = read_json(test_evaluation(out, model) / "summary.json")
    if test:
        keys, _, values = case_table([test])
        subjects = stats.subjects_of(keys, experiment.config["data"].get("group_by", ""), require_match=False)
        entry["test"] = {"cases": len(keys), "Dice": _stat(values["Dice"][None], subjects)}
    else:
        entry["test"] = None
    return entry


def _external_entry(out: Path, experiment: Experiment, name: str) -> dict:
    """Another tool's held-out predictions (``compare --external``), evaluated per fold: ranked as a model with one
    seed, no learning curve and unknown costs."""
    summaries = [external_folder(out, name, f) / "summary.json" for f in experiment.folds]
    done = [s for s in summaries if s.is_file()]
    entry = {
        "model": name,
        "external": experiment.external[name],
        "runs": [str(s.parent) for s in summaries],
        "finished_runs": len(done),
        "complete": len(done) == len(summaries),
        "training_time_s": None,
        "epochs": [],
        "steps": [],
        "step": None,
        "widths": [],
        "width_measured": None,
        "reported": [],
        "cost": None,
        "benchmark": None,
        "test": None,
    }
    if entry["complete"]:
        entry["_cases"] = seed_table([[read_json(s) for s in summaries]])
        entry["_snapshots"] = []
    return entry


def _snapshot_tables(runs: dict, experiment: Experiment) -> list[dict]:
    """The held-out Dice at each fraction of the budget every run recorded (``RUN/snapshots.json``), as
    ``{"fraction", "steps", "seconds", "_dice": (seeds, cases, classes)}``; the full budget is the last point."""
    records = {key: read_json(run.path / "snapshots.json") or [] for key, run in runs.items()}
    fractions = sorted(set.intersection(*[{r["fraction"] for r in rs} for rs in records.values()]))
    points = []
    for fraction in fractions:
        chosen = {key: next(r for r in rs if r["fraction"] == fraction) for key, rs in records.items()}
        summaries = [
            [read_json(runs[f, s].path / chosen[f, s]["summary"]) for f in experiment.folds] for s in experiment.seeds
        ]
        points.append(
            {
                "fraction": fraction,
                "steps": float(np.mean([r["steps"] for r in chosen.values()])),
                "seconds": float(np.mean([r["seconds"] for r in chosen.values()])),
                "_dice": seed_table(summaries)[2]["Dice"],
            }
        )
    return points


def _aligned(entry: dict, keys: list[str]) -> None:
    """The entry's held-out table (and its snapshots') in the order of ``keys``, the cases of the first ranked model:
    paired statistics pair rows by position. Models that held out other cases cannot be compared: an error."""
    own, labels, values = entry["_cases"]
    if sorted(own) != sorted(keys):
        raise UnetzooError(f"{entry['model']} held out other cases than the other models: the runs used other folds")
    order = [own.index(k) for k in keys]
    entry["_cases"] = (list(keys), labels, {m: v[:, order] for m, v in values.items()})
    for point in entry["_snapshots"]:
        point["_dice"] = point["_dice"][:, order]


def _accuracy(entry: dict, subjects) -> None:
    keys, labels, values = entry["_cases"]
    entry["cases"], entry["subjects"] = len(keys), len(set(subjects))
    for metric in METRICS:
        entry[metric] = {
            **_stat(values[metric], subjects),
            "per_class": {label: _stat(values[metric][..., j : j + 1], subjects) for j, label in enumerate(labels)},
        }
    entry["Dice"]["per_seed"] = [_finite(stats.score(values["Dice"][k : k + 1])) for k in range(len(values["Dice"]))]
    entry["curve"] = [
        {k: v for k, v in point.items() if k != "_dice"} | _stat(point["_dice"], subjects)
        for point in entry["_snapshots"]
    ]


def _against_best(entries: list[dict], best: dict, subjects, margin: float) -> None:
    """Paired difference of every other complete model (and the best ensemble) to the best: its interval, the
    permutation p (Holm over the comparisons), its one-sided lower bound and the margin decision."""
    others = [e for e in entries if e is not best]
    for entry in others:
        entry["to_best"] = {
            "model": best["model"],
            **stats.paired_difference(entry["_cases"][2]["Dice"], best["_cases"][2]["Dice"], subjects, margin=margin),
        }
    for entry, adjusted in zip(others, stats.holm([e["to_best"]["p"] for e in others])):
        entry["to_best"]["p_holm"] = adjusted
        entry["significantly_below_best"] = (
            adjusted is not None and adjusted < stats.ALPHA and entry["to_best"]["difference"] < 0
        )
    best["to_best"], best["significantly_below_best"] = None, False


def _best_ensemble(out: Path, experiment: Experiment, ranked: list[dict], subjects) -> dict | None:
    """The pair of models whose averaged held-out probabilities score highest (every fold and seed scored), as a
    leaderboard entry; None when no pair is."""
    keys = ranked[0]["_cases"][0] if ranked else []
    found = []
    for pair in ensemble_pairs(out, experiment):
        paths = [
            [ensemble_folder(out, pair, f, s) / "summary.json" for f in experiment.folds] for s in experiment.seeds
        ]
        if not all(p.is_file() for seed in paths for p in seed):
            continue
        cases = seed_table([[read_json(p) for p in seed] for seed in paths])
        candidate = {"model": " + ".join(pair), "pair": list(pair), "_cases": cases, "_snapshots": []}
        _aligned(candidate, keys)  # in the ranked models' case order
        found.append(candidate)
    if not found:
        return None
    entry = max(found, key=lambda e: stats.score(e["_cases"][2]["Dice"]))
    entry.pop("_snapshots")
    values = entry["_cases"][2]
    entry["pairs_scored"], entry["cases"] = len(found), len(keys)
    for metric in METRICS:
        entry[metric] = _stat(values[metric], subjects)
    return entry


def leaderboard(out) -> dict:
    """The leaderboard of the experiment in ``out`` as a JSON-ready dict (``leaderboard.json``)."""
    out = Path(out)
    experiment = Experiment.load(out)
    entries = [_model_entry(out, experiment, m) for m in experiment.models]
    entries += [_external_entry(out, experiment, name) for name in experiment.external]
    ranked = [e for e in entries if e["complete"]]
    group_by = experiment.config["data"].get("group_by", "")
    keys = ranked[0]["_cases"][0] if ranked else []
    subjects = stats.subjects_of(keys, group_by) if ranked else []
    for entry in ranked:
        _aligned(entry, keys)
        _accuracy(entry, subjects)
    ranked.sort(key=lambda e: -(e["Dice"]["mean"] if e["Dice"]["mean"] is not None else -math.inf))
    best = ranked[0] if ranked else None
    ensemble = _best_ensemble(out, experiment, ranked, subjects) if len(ranked) >= 2 else None
    if best:
        _against_best(ranked, best, subjects, experiment.margin)
    if ensemble:  # chosen among the pairs on these very cases: its p is Bonferroni-adjusted over every pair scored
        ensemble["to_best"] = {
            "model": best["model"],
            **stats.paired_difference(
                ensemble["_cases"][2]["Dice"], best["_cases"][2]["Dice"], subjects, margin=experiment.margin
            ),
        }
        p = ensemble["to_best"]["p"]
        ensemble["to_best"]["p_holm"] = None if p is None else min(1.0, p * ensemble["pairs_scored"])
    candidates = [
        e
        for e in ranked
        if (e is best or e["to_best"]["within_margin"]) and e["cost"] and e["cost"].get("infer_s") is not None
    ]
    chosen = min(candidates, key=lambda e: (e["cost"]["infer_s"], e["cost"].get("params") or 0)) if candidates else None
    stability = _stability(ranked)
    for entry in entries + ([ensemble] if ensemble else []):
        for key in ("_cases", "_snapshots"):
            entry.pop(key, None)
    return {
        "data": experiment.data,
        "folds": experiment.folds,
        "seeds": experiment.seeds,
        "budget": experiment.budget,
        "budget_text": experiment.budget_text(),
        "group_by": group_by,
        "subjects": len(set(subjects)),
        "test": experiment.test,
        "margin": experiment.margin,
        "reported": sorted({r for e in ranked for r in e["reported"]}),
        "rule": (
            "most accurate: highest mean Dice (the mean over classes of the per-class mean over the held-out cases of "
            f"every fold and seed); chosen: the cheapest model (inference time per case, fewer parameters on a tie) "
            f"whose paired difference to it has a one-sided 95 % lower bound above -{experiment.margin:g} Dice, i.e. "
            f"not worse by more than the margin ({experiment.margin:g}); significantly below: permutation p over "
            f"subjects, Holm-adjusted over the {max(len(ranked) - 1, 0)} comparison(s), < {stats.ALPHA}"
        ),
        "most_accurate": best["model"] if best else None,
        "chosen": chosen["model"] if chosen else None,
        "ensemble": ensemble,
        "stability": stability,
        "bootstrap_resamples": stats.BOOTSTRAP,
        "executions": experiment.executions,
        "widths": experiment.widths,
        "models": ranked + [e for e in entries if not e["complete"]],
    }


def _stability(ranked: list[dict]) -> dict | None:
    """Whether the ranking at half the budget is the ranking at the full budget: Kendall's tau between the two and the
    pairs whose order swapped (None without a half-budget point or with fewer than two models)."""
    curves = [e for e in ranked if any(p["fraction"] == 0.5 for p in e["curve"])]  # not the external tools
    if len(curves) < 2:
        return None
    half = [next(p["mean"] for p in e["curve"] if p["fraction"] == 0.5) for e in curves]
    full = [e["Dice"]["mean"] for e in curves]
    names = [e["model"] for e in curves]
    tau, p = stats.kendall_tau(half, full)
    return {
        "from_fraction": 0.5,
        "kendall_tau": _finite(tau) if tau is not None else None,
        "p": p,
        "swapped": [list(pair) for pair in stats.swapped_pairs(names, half, full)],
    }


# ---- outputs --------------------------------------------------------------------------------------------
def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ci(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    lo, hi = stat["ci"]
    return f"{stat['mean']:.{digits}f} [{_num(lo, digits)}, {_num(hi, digits)}]"


def _steps(entry: dict) -> str:
    """Each run's optimiser steps and epochs, "? (4)" for a run whose history predates step counts."""
    return ", ".join(f"{'?' if s is None else s} ({n})" for s, n in zip(entry["steps"], entry["epochs"]))


def _p(value) -> str:
    """A p-value: three decimals, or "< 0.001"."""
    return "n/a" if value is None else "< 0.001" if value < 0.001 else f"{value:.3f}"


def _delta(diff: dict | None) -> str:
    if diff is None:
        return "-"
    lo, hi = diff["ci"]
    return f"{_num(diff['difference'], 4)} [{_num(lo, 4)}, {_num(hi, 4)}]"


def _headline(board: dict) -> list[str]:
    ranked = [e for e in board["models"] if e["complete"]]
    if not ranked:
        return ["No model has finished every run yet: no ranking."]
    best = ranked[0]
    lines = [
        f"**Most accurate:** `{best['model']}`, mean Dice {_ci(best['Dice'])} over {best['cases']} held-out cases "
        f"({best['subjects']} subjects) x {len(board['seeds'])} seed(s).",
    ]
    chosen = next((e for e in ranked if e["model"] == board["chosen"]), None)
    margin = board["margin"]
    if chosen is None:
        lines.append(
            f"**Chosen (cheapest within {margin:g} Dice of it):** no benchmark figures (the benchmark job failed or has not run)."
        )
    elif chosen is best:
        lines.append(
            f"**Chosen (cheapest within {margin:g} Dice of it):** `{best['model']}` itself (inference "
            f"{_num(best['cost']['infer_s'])} s per case): no cheaper model is shown to be within the margin."
        )
    else:
        diff = chosen["to_best"]
        lines.append(
            f"**Chosen (cheapest within {margin:g} Dice of it):** `{chosen['model']}`, inference "
            f"{_num(chosen['cost']['infer_s'])} s per case (against {_num(best['cost']['infer_s']) if best['cost'] else 'n/a'} s), "
            f"Δ Dice {_delta(diff)}, one-sided 95 % lower bound {_num(diff['lower_one_sided'], 4)} > -{margin:g}."
        )
    stability = board["stability"]
    if stability:
        swapped = ", ".join(f"`{a}`/`{b}`" for a, b in stability["swapped"])
        lines.append(
            f"**Stable over the budget?** Kendall's tau between the ranking at half the budget and at the full budget: "
            f"{_num(stability['kendall_tau'], 2)}"
            + (
                f"; pairs that swapped: {swapped}."
                if swapped
                else "; no pair swapped: the ranking held from half the budget on."
            )
        )
    return lines


def _hd_unit(out: Path, board: dict) -> str:
    plans = [RunFolder(e["runs"][0]).plan for e in board["models"] if e["complete"]]
    plan = next((read_json(p) for p in plans if p.is_file()), None)  # nnU-Net's runs and other tools' have none
    return "mm" if plan and plan.get("target_spacing") else "px"


def _reported(board: dict) -> str:
    """Which weights the runs reported, in words."""
    words = {
        "last": "the final weights",
        "best": "the highest pseudo Dice on an inner validation split of the training cases (train.select=best)",
    }
    return "; ".join(words[r] for r in board["reported"]) or "n/a"


def _spread(entry: dict) -> str:
    seeds = [v for v in entry["Dice"].get("per_seed", []) if v is not None]
    return ", ".join(f"{v:.3f}" for v in seeds) + (f" (sd {np.std(seeds, ddof=1):.3f})" if len(seeds) > 1 else "")


def _width(entry: dict) -> str:
    widths = ", ".join("default" if w is None else str(w) for w in entry.get("widths", []))
    return widths or "n/a"


def _markdown(out: Path, board: dict) -> str:
    ranked = [e for e in board["models"] if e["complete"]]
    unit = _hd_unit(out, board)
    method = ranked[0]["Dice"]["ci_method"] if ranked else ""
    grouped = f"subjects of `data.group_by` '{board['group_by']}'" if board["group_by"] else "cases (one subject each)"
    lines = [
        f"# unetzoo compare: `{board['data']}`",
        "",
        *_headline(board),
        "",
        f"Rule: {board['rule']}.",
        "",
        f"Budget: {board['budget_text']}. Held-out folds: {', '.join(map(str, board['folds']))}; seeds: "
        f"{', '.join(map(str, board['seeds']))}. Figures: each run's reported weights ({_reported(board)}) on its held-out fold, "
        f"without post-processing. 95 % intervals: bootstrap over {grouped} ({method}, "
        f"{board['bootstrap_resamples']} resamples), seeds resampled too when there are several.",
        "",
    ]
    test = any(e["test"] for e in ranked)
    header = [
        "rank",
        "model",
        "cases (subjects)",
        "mean Dice [95 % CI]",
        "Dice per seed",
        "Δ Dice to best [95 % CI]",
        "one-sided 95 % bound",
        "permutation p (Holm)",
        "NSD [95 % CI]",
        f"HD95 ({unit}) [95 % CI]",
    ]
    header += ["test Dice [95 % CI]"] * test
    lines += ["## Accuracy", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    rows = list(enumerate(ranked, 1)) + ([("ensemble", board["ensemble"])] if board["ensemble"] else [])
    for rank, e in rows:
        diff = e["to_best"]
        bound = (
            "-" if diff is None else _num(diff["lower_one_sided"], 4) + (" (within)" if diff["within_margin"] else "")
        )
        p = (
            "-"
            if diff is None or "p_holm" not in diff
            else _p(diff["p_holm"]) + (" (below)" if e.get("significantly_below_best") else "")
        )
        row = [
            str(rank),
            f"`{e['model']}`" + (" (external)" if e.get("external") else ""),
            f"{e['cases']} ({e.get('subjects', board['subjects'])})",
            _ci(e["Dice"]),
            _spread(e) if rank != "ensemble" else "-",
            _delta(diff),
            bound,
            p if rank != "ensemble" else _p(diff["p_holm"]) + f" (Bonferroni over {e['pairs_scored']} pairs)",
            _ci(e["NSD"]),
            _ci(e["HD95"], 2),
        ]
        row += [(_ci(e["test"]["Dice"]) + f" ({e['test']['cases']} cases)") if e.get("test") else "n/a"] * test
        lines.append("| " + " | ".join(row) + " |")
    if board["ensemble"]:
        lines += [
            "",
            f"ensemble: the best of {board['ensemble']['pairs_scored']} two-model ensembles (the mean of the two models' "
            "held-out probabilities, nnU-Net's `find_best_configuration`), compared with the best single model. It is "
            "chosen on the same held-out cases it is scored on, so its figure is optimistic (the winner of several "
            "tries); its p is multiplied by the number of pairs tried.",
        ]
    if ranked:
        labels = list(ranked[0]["Dice"]["per_class"])
        lines += [
            "",
            "Dice per class (label id) [95 % CI]:",
            "",
            "| model | " + " | ".join(labels) + " |",
            "|---" * (len(labels) + 1) + "|",
        ]
        lines += [
            f"| `{e['model']}` | " + " | ".join(_ci(e["Dice"]["per_class"][k]) for k in labels) + " |" for e in ranked
        ]
    curved = [e for e in ranked if e["curve"]]  # the trained models (an external tool has no curve)
    if curved:
        x_unit = "min" if board["budget"].get("minutes") else "steps"
        fractions = [p["fraction"] for p in curved[0]["curve"]]
        lines += [
            "",
            "## Learning curves",
            "",
            "Held-out mean Dice [95 % CI] with the weights each run had at these fractions of its budget "
            "(mean steps, or minutes, at that point in brackets):",
            "",
            "| model | " + " | ".join(f"{f:g} of the budget" for f in fractions) + " |",
            "|---" * (len(fractions) + 1) + "|",
        ]
        for e in curved:
            cells = [
                _ci(p) + f" ({p['seconds'] / 60:.1f} min)" if x_unit == "min" else _ci(p) + f" ({p['steps']:.0f} steps)"
                for p in e["curve"]
            ]
            lines.append(f"| `{e['model']}` | " + " | ".join(cells) + " |")
        if (out / "learning_curves.png").is_file():
            lines += ["", "![learning curves](learning_curves.png)"]
    lines += [
        "",
        "## Cost",
        "",
        "| model | width (base_features) | parameters | MACs / patch | train step (s) | train peak mem (MB) | "
        "inference per case (s) | infer peak mem (MB) | training time, all runs (h:mm:ss) | steps (epochs) per run | "
        "a step: batch x patch |",
        "|---" * 11 + "|",
    ]
    for e in ranked + [x for x in board["models"] if not x["complete"]]:
        cost, step = e["cost"] or {}, e["step"]
        lines.append(
            f"| `{e['model']}` | {_width(e)} | "
            + " | ".join(human(k, cost.get(k)) if e["cost"] else "n/a" for k in COST)
            + f" | {duration(e['training_time_s'])} | {_steps(e) or 'n/a'} | "
            + (f"{step['batch_size']} x {'x'.join(map(str, step['patch']))}" if step else "n/a")
            + " |"
        )
    if board["widths"]:
        lines += [
            "",
            "Widths measured once per model, alone, before the trainings (the time budget's width rule); every fold "
            "and seed trained that width: "
            + ", ".join(f"`{m}` {'default' if w is None else w}" for m, w in board["widths"].items())
            + ".",
        ]
    bench = next((e["benchmark"] for e in ranked if e["benchmark"]), None)
    if bench:
        lines += [
            "",
            f"Measured by `unetzoo benchmark` on {bench['device']} ({bench['device_name']}), {bench['threads']} thread(s), "
            f"{bench['precision']} training steps, fp32 inference of a {'x'.join(map(str, bench['infer_shape']))} volume, torch {bench['torch']}.",
        ]
    for run in board["executions"]:
        where = ", ".join(f"{k} {v}" for k, v in run.items() if k != "started")
        lines.append(f"- invocation {run['started']}: {where}")
    incomplete = [e for e in board["models"] if not e["complete"]]
    if incomplete:
        lines += [
            "",
            "Not ranked (a run not finished or failed): "
            + ", ".join(f"`{e['model']}` ({e['finished_runs']}/{len(e['runs'])} runs)" for e in incomplete)
            + ".",
        ]
    if (out / "pareto.png").is_file():
        lines += [
            "",
            "## Accuracy against cost",
            "",
            "![pareto](pareto.png)",
            "",
            "Pareto front (outlined, joined): no other model is both cheaper and more accurate. Bars: 95 % intervals of the mean Dice.",
        ]
    return "\n".join(lines) + "\n"


def plot_learning_curves(board: dict) -> bytes | None:
    """Held-out mean Dice (95 % interval) against the budget spent (minutes or steps), one line per model; None
    without snapshot points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = [e for e in board["models"] if e["complete"] and e.get("curve")]
    if not ranked:
        return None
    minutes = bool(board["budget"].get("minutes"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, e in enumerate(ranked):
        xs = [p["seconds"] / 60 if minutes else p["steps"] for p in e["curve"]]
        ys = [p["mean"] for p in e["curve"]]
        lo = [max(p["mean"] - p["ci"][0], 0) if p["ci"][0] is not None else 0 for p in e["curve"]]  # rounding
        hi = [max(p["ci"][1] - p["mean"], 0) if p["ci"][1] is not None else 0 for p in e["curve"]]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=e["model"], color=plt.get_cmap("tab10")(k % 10))
    ax.set(
        xlabel="training minutes" if minutes else "optimiser steps",
        ylabel="mean Dice, held-out cases",
        title="held-out Dice over the budget (95 % intervals)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def pareto_front(costs: list[float], scores: list[float]) -> list[int]:
    """Indices of the points no other point dominates (cost no higher and score no lower, one of them strictly)."""
    return [
        i
        for i, (c, s) in enumerate(zip(costs, scores))
        if not any((c2 <= c and s2 >= s) and (c2 < c or s2 > s) for c2, s2 in zip(costs, scores))
    ]


def cost_axes(board: dict) -> list[tuple]:
    """The two costs ``pareto.png`` plots Dice against, as (axis label, cost of a leaderboard entry): inference time
    per case, and the training time of all folds under a step budget or, under a minutes budget (where every run
    took the same time), the time of one training step."""
    inference = ("inference time per case (s)", lambda e: (e["cost"] or {}).get("infer_s"))
    if board["budget"].get("minutes"):
        return [inference, ("training step time (s)", lambda e: (e["cost"] or {}).get("train_step_s"))]
    return [
        inference,
        ("training time, all runs (min)", lambda e: e["training_time_s"] / 60 if e["training_time_s"] else None),
    ]


def plot_pareto(board: dict) -> bytes | None:
    """Mean Dice (95 % interval) against the two :func:`cost_axes`, the Pareto front of each marked; None when no
    ranked model has either figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = [e for e in board["models"] if e["complete"] and e["Dice"]["mean"] is not None]
    panels = cost_axes(board)
    if not any(cost(e) for e in ranked for _, cost in panels):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.get_cmap("tab10").colors
    for ax, (label, cost) in zip(axes, panels):
        points = [(k, e, cost(e)) for k, e in enumerate(ranked) if cost(e)]  # k: the model's colour in both panels
        if not points:
            ax.set_axis_off()
            continue
        xs, ys = [c for _, _, c in points], [e["Dice"]["mean"] for _, e, _ in points]
        front = sorted(pareto_front(xs, ys), key=lambda i: xs[i])
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="grey", alpha=0.6, zorder=1)
        for i, (k, e, x) in enumerate(points):
            lo, hi = e["Dice"]["ci"]
            err = [[max(ys[i] - lo, 0)], [max(hi - ys[i], 0)]] if lo is not None else None
            ax.errorbar(
                [x],
                [ys[i]],
                yerr=err,
                fmt="o",
                color=colors[k % 10],
                markersize=9 if i in front else 6,
                markeredgecolor="black" if i in front else colors[k % 10],
                markeredgewidth=1.5,
                capsize=3,
                zorder=2,
            )
            ax.annotate(e["model"], (x, ys[i]), xytext=(5, 5), textcoords="offset points", fontsize=9)
        if max(xs) > 10 * min(xs):
            ax.set_xscale("log")
            label += ", log scale"
        ax.set(xlabel=label, ylabel="mean Dice, held-out cases", title=f"accuracy against {label.split(' (')[0]}")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(textwrap.fill(board["budget_text"], 150), fontsize=9)
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _csv(board: dict) -> str:
    ranked = [e for e in board["models"] if e["complete"]]
    labels = list(ranked[0]["Dice"]["per_class"]) if ranked else []
    columns = (
        ["model", "complete", "cases", "subjects"]
        + [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]
        + [f"Dice_{k}" for k in labels]
    )
    columns += [
        "delta_Dice",
        "delta_lo",
        "delta_hi",
        "delta_lower_one_sided",
        "within_margin",
        "p_permutation",
        "p_holm",
        "significantly_below_best",
        "widths",
        *COST,
        "training_time_s",
        "test_Dice",
        "test_lo",
        "test_hi",
    ]
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    ensemble = [{**board["ensemble"], "complete": True}] if board["ensemble"] else []
    for e in board["models"] + ensemble:  # the ensemble's row: its model is "A + B"
        row = {
            "model": e["model"],
            "complete": e["complete"],
            "cases": e.get("cases"),
            "subjects": e.get("subjects", board["subjects"] if e["complete"] else None),
            "training_time_s": e.get("training_time_s"),
            "widths": " ".join(map(str, e.get("widths", []))),
            **(e.get("cost") or {}),
        }
        for m in METRICS if e["complete"] else ():
            row.update({m: e[m]["mean"], f"{m}_lo": e[m]["ci"][0], f"{m}_hi": e[m]["ci"][1]})
        row.update({f"Dice_{k}": v["mean"] for k, v in e["Dice"].get("per_class", {}).items()} if e["complete"] else {})
        if e.get("to_best"):
            d = e["to_best"]
            row.update(
                delta_Dice=d["difference"],
                delta_lo=d["ci"][0],
                delta_hi=d["ci"][1],
                delta_lower_one_sided=d["lower_one_sided"],
                within_margin=d["within_margin"],
                p_permutation=d["p"],
                p_holm=d["p_holm"],
            )
        if "significantly_below_best" in e:
            row["significantly_below_best"] = e["significantly_below_best"]
        if e.get("test"):
            row.update(
                test_Dice=e["test"]["Dice"]["mean"],
                test_lo=e["test"]["Dice"]["ci"][0],
                test_hi=e["test"]["Dice"]["ci"][1],
            )
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return buffer.getvalue()


def write_leaderboard(out) -> Path:
    """Write ``leaderboard.json``, ``.csv``, ``pareto.png``, ``learning_curves.png`` and ``leaderboard.md`` into
    ``out``; returns the page."""
    out = Path(out)
    board = leaderboard(out)
    write_text(out / "leaderboard.json", json.dumps(board, indent=2) + "\n")
    write_text(out / "leaderboard.csv", _csv(board))
    for name, png in (("pareto.png", plot_pareto(board)), ("learning_curves.png", plot_learning_curves(board))):
        if png is not None:
            write_bytes(out / name, png)
    return write_text(out / "leaderboard.md", _markdown(out, board))
