"""The answer of ``unetzoo compare``: the models ranked by cross-validated accuracy, with its uncertainty and their cost.

Computed from files only (the project's design: one experiment, many runs): each run's held-out fold with the run's own
post-processing (``RUN/validation/postprocessed/summary.json``), its ``history.json`` (training time), the benchmark
of the model's first run (``RUN/benchmark.json``) and the test folder's evaluation (``OUT/test/MODEL/evaluation``).
Writes ``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.json`` and ``pareto.png`` into the experiment folder.

Statistics, over the held-out cases of every fold pooled (each case is held out once; one fold: that fold's cases):

* a metric per class = its mean over the cases (a case where the class is absent from reference and prediction has
  no value and is skipped, nnU-Net's rule); the model's figure = the mean over the classes (nnU-Net's foreground mean);
* 95 % confidence interval: percentile bootstrap over cases (``BOOTSTRAP`` resamples of the cases with replacement,
  ``numpy.random.default_rng(0)``), the figure recomputed on each resample;
* paired difference to the best model (highest mean Dice) over the cases both predicted: the same resampled cases
  for both models, the difference of their figures; and the Wilcoxon signed-rank test (two-sided, SciPy) of the
  per-case differences of the mean Dice over classes, its p-values Holm-adjusted over the comparisons with the best;
* the rule of the two lines at the top: **most accurate** = highest mean Dice; a model is **not significantly below**
  it when its Holm-adjusted p >= ``ALPHA`` (0.05); the **cheapest** of those = the lowest inference time per case
  (benchmark), fewer parameters on a tie.

A model with a fold not finished (or failed) is listed as incomplete and not ranked.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import textwrap
import warnings
from pathlib import Path

import numpy as np

from unetzoo.experiments.experiment import Experiment, run_folder, test_evaluation
from unetzoo.formatting import duration, human
from unetzoo.io import read_json, write_bytes, write_text
from unetzoo.runfolder import RunFolder

METRICS = ("Dice", "NSD", "HD95")
COST = ("params", "macs", "train_step_s", "train_peak_mem_mb", "infer_s", "infer_peak_mem_mb")
BOOTSTRAP = 2000
ALPHA = 0.05


# ---- statistics -----------------------------------------------------------------------------------------
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


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class with no value in a resample: NaN, skipped above it
        return np.nanmean(values, axis=axis)


def figure(values: np.ndarray) -> np.ndarray:
    """(..., cases, classes) -> (...): the mean over classes of each class's mean over cases."""
    return _nanmean(_nanmean(values, axis=-2), axis=-1)


def resamples(n: int, count: int = BOOTSTRAP) -> np.ndarray:
    """``count`` bootstrap resamples of ``n`` cases: indices (count, n), always the same for the same n."""
    return np.random.default_rng(0).integers(0, n, size=(count, n))


def _percentiles(samples: np.ndarray) -> list[float | None]:
    samples = samples[np.isfinite(samples)]
    return [float(v) for v in np.percentile(samples, [2.5, 97.5])] if samples.size else [None, None]


def interval(values: np.ndarray) -> list[float | None]:
    """95 % percentile-bootstrap interval of :func:`figure` over the cases (rows) of ``values``."""
    return _percentiles(figure(values[resamples(len(values))]))


def paired_interval(a: np.ndarray, b: np.ndarray) -> list[float | None]:
    """95 % bootstrap interval of figure(a) - figure(b) over the same cases (rows aligned), resampled together."""
    index = resamples(len(a))
    return _percentiles(figure(a[index]) - figure(b[index]))


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p of the per-case differences of the mean over classes (rows aligned); 1 when
    every difference is zero, None without a case where both have a value."""
    from scipy.stats import wilcoxon

    diff = _nanmean(a, axis=1) - _nanmean(b, axis=1)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return None
    if not np.any(diff):
        return 1.0
    return float(wilcoxon(diff).pvalue)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None): the i-th smallest of m times (m - i),
    made monotone, at most 1."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted, running = list(pvalues), 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def _model_entry(out: Path, experiment: Experiment, model: str) -> dict:
    runs = [run_folder(out, model, f) for f in experiment.folds]
    done = [r for r in runs if r.is_finished()]
    entry = {
        "model": model,
        "runs": [str(r) for r in runs],
        "finished_runs": len(done),
        "complete": len(done) == len(runs),
    }
    histories = [read_json(r.history) or [] for r in done]
    entry["training_time_s"] = (
        sum(h.get("epoch_time_s") or 0.0 for history in histories for h in history) if entry["complete"] else None
    )
    entry["epochs"] = [len(history) for history in histories]
    entry["steps"] = [
        history[-1].get("steps") if history else None for history in histories
    ]  # None: written before steps were
    config = read_json(runs[0].config) if done else None  # resolved by training: what one step saw
    entry["step"] = (
        {"batch_size": config["train"]["batch_size"], "patch": config["data"]["patch_size"]} if config else None
    )
    bench = read_json(runs[0].benchmark)
    entry["cost"] = {k: bench["models"][0].get(k) for k in COST} if bench else None
    entry["benchmark"] = (
        {k: bench.get(k) for k in ("device", "device_name", "threads", "precision", "torch", "infer_shape")}
        if bench
        else None
    )
    if entry["complete"]:
        entry["_cases"] = case_table([read_json(r.postprocessed_summary) for r in runs])
    test = read_json(test_evaluation(out, model) / "summary.json")
    if test:
        keys, _, values = case_table([test])
        entry["test"] = {
            "cases": len(keys),
            "Dice": {"mean": _finite(figure(values["Dice"])), "ci": interval(values["Dice"])},
        }
    else:
        entry["test"] = None
    return entry


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _accuracy(entry: dict) -> None:
    keys, labels, values = entry["_cases"]
    entry["cases"] = len(keys)
    for metric in METRICS:
        per_class = {
            label: {
                "mean": _finite(_nanmean(values[metric][:, j], axis=0)),
                "ci": _percentiles(_nanmean(values[metric][resamples(len(keys)), j], axis=-1)),
            }
            for j, label in enumerate(labels)
        }
        entry[metric] = {
            "mean": _finite(figure(values[metric])),
            "ci": interval(values[metric]),
            "per_class": per_class,
        }


def _against_best(entries: list[dict], best: dict) -> None:
    """Paired difference of every other complete model to the best, its interval, Wilcoxon p and Holm's p."""
    others = [e for e in entries if e is not best]
    best_keys, _, best_values = best["_cases"]
    for entry in others:
        keys, _, values = entry["_cases"]
        common = sorted(set(keys) & set(best_keys))
        a = values["Dice"][[keys.index(k) for k in common]]
        b = best_values["Dice"][[best_keys.index(k) for k in common]]
        entry["to_best"] = {
            "model": best["model"],
            "cases": len(common),
            "Dice": _finite(figure(a) - figure(b)) if common else None,
            "ci": paired_interval(a, b) if common else [None, None],
            "p": wilcoxon_p(a, b),
        }
    for entry, adjusted in zip(others, holm([e["to_best"]["p"] for e in others])):
        entry["to_best"]["p_holm"] = adjusted
        entry["significantly_below_best"] = adjusted is not None and adjusted < ALPHA
    best["to_best"], best["significantly_below_best"] = None, False


def leaderboard(out) -> dict:
    """The leaderboard of the experiment in ``out`` as a JSON-ready dict (``leaderboard.json``)."""
    out = Path(out)
    experiment = Experiment.load(out)
    entries = [_model_entry(out, experiment, m) for m in experiment.models]
    ranked = [e for e in entries if e["complete"]]
    for entry in ranked:
        _accuracy(entry)
    ranked.sort(key=lambda e: -(e["Dice"]["mean"] if e["Dice"]["mean"] is not None else -math.inf))
    best = ranked[0] if ranked else None
    if best:
        _against_best(ranked, best)
    candidates = [
        e for e in ranked if not e["significantly_below_best"] and e["cost"] and e["cost"].get("infer_s") is not None
    ]
    cheapest = (
        min(candidates, key=lambda e: (e["cost"]["infer_s"], e["cost"].get("params") or 0)) if candidates else None
    )
    for entry in entries:
        entry.pop("_cases", None)
    return {
        "data": experiment.data,
        "folds": experiment.folds,
        "budget": experiment.budget,
        "budget_text": experiment.budget_text(),
        "test": experiment.test,
        "rule": (
            f"most accurate: highest mean Dice (mean over classes of the per-class mean over the held-out cases of every fold); "
            f"not significantly below it: Wilcoxon signed-rank p (two-sided, per-case mean Dice differences, Holm-adjusted over "
            f"the {max(len(ranked) - 1, 0)} comparison(s) with it) >= {ALPHA}; cheapest: lowest inference time per case "
            f"(unetzoo benchmark), fewer parameters on a tie"
        ),
        "most_accurate": best["model"] if best else None,
        "cheapest_not_significantly_below": cheapest["model"] if cheapest else None,
        "bootstrap_resamples": BOOTSTRAP,
        "executions": experiment.executions,
        "models": ranked + [e for e in entries if not e["complete"]],
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


def _headline(board: dict) -> list[str]:
    ranked = [e for e in board["models"] if e["complete"]]
    if not ranked:
        return ["No model has finished every fold yet: no ranking."]
    best = ranked[0]
    lines = [
        f"**Most accurate:** `{best['model']}`, mean Dice {_ci(best['Dice'])} over {best['cases']} held-out cases."
    ]
    cheap = next((e for e in ranked if e["model"] == board["cheapest_not_significantly_below"]), None)
    if cheap is None:
        lines.append(
            "**Cheapest not significantly below it:** no benchmark figures (the benchmark job failed or has not run)."
        )
    elif cheap is best:
        lines.append(
            f"**Cheapest not significantly below it:** `{best['model']}` itself (inference {_num(best['cost']['infer_s'])} s per case): "
            "every cheaper model is significantly less accurate."
        )
    else:
        diff = cheap["to_best"]
        lines.append(
            f"**Cheapest not significantly below it:** `{cheap['model']}`, inference {_num(cheap['cost']['infer_s'])} s per case "
            f"(against {_num(best['cost']['infer_s']) if best['cost'] else 'n/a'} s), Δ Dice {_num(diff['Dice'], 4)} "
            f"[{_num(diff['ci'][0], 4)}, {_num(diff['ci'][1], 4)}], Wilcoxon p = {_num(diff['p_holm'])} (Holm)."
        )
    return lines


def _hd_unit(out: Path, board: dict) -> str:
    first = next((e for e in board["models"] if e["complete"]), None)
    plan = read_json(RunFolder(first["runs"][0]).plan) if first else None
    return "mm" if plan and plan.get("target_spacing") else "px"


def _markdown(out: Path, board: dict) -> str:

    ranked = [e for e in board["models"] if e["complete"]]
    unit = _hd_unit(out, board)
    lines = [
        f"# unetzoo compare: `{board['data']}`",
        "",
        *_headline(board),
        "",
        f"Rule: {board['rule']}.",
        "",
        f"Budget: {board['budget_text']}. Held-out folds: {', '.join(map(str, board['folds']))}; 95 % intervals: percentile "
        f"bootstrap over cases ({board['bootstrap_resamples']} resamples); figures with each run's own post-processing.",
        "",
    ]
    test = any(e["test"] for e in ranked)
    header = [
        "rank",
        "model",
        "cases",
        "mean Dice [95 % CI]",
        "Δ Dice to best [95 % CI]",
        "Wilcoxon p (Holm)",
        "NSD [95 % CI]",
        f"HD95 ({unit}) [95 % CI]",
    ]
    header += ["test Dice [95 % CI]"] * test
    lines += ["## Accuracy", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for rank, e in enumerate(ranked, 1):
        diff = e["to_best"]
        delta = "-" if diff is None else f"{_num(diff['Dice'], 4)} [{_num(diff['ci'][0], 4)}, {_num(diff['ci'][1], 4)}]"
        p = "-" if diff is None else _num(diff["p_holm"]) + (" (below)" if e["significantly_below_best"] else "")
        row = [
            str(rank),
            f"`{e['model']}`",
            str(e["cases"]),
            _ci(e["Dice"]),
            delta,
            p,
            _ci(e["NSD"]),
            _ci(e["HD95"], 2),
        ]
        row += [_ci(e["test"]["Dice"]) + f" ({e['test']['cases']} cases)" if e["test"] else "n/a"] * test
        lines.append("| " + " | ".join(row) + " |")
    few = [e["model"] for e in ranked if e["to_best"] and e["to_best"]["cases"] < 6]
    if few:
        lines += [
            "",
            f"With fewer than 6 paired cases ({', '.join(f'`{m}`' for m in few)}) the two-sided Wilcoxon test cannot reach "
            "p < 0.05 (its smallest p is 2/2^n): no difference can be significant; hold out more cases (more folds).",
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
    lines += [
        "",
        "## Cost",
        "",
        "| model | parameters | MACs / patch | train step (s) | train peak mem (MB) | inference per case (s) | "
        "infer peak mem (MB) | training time, all folds (h:mm:ss) | steps (epochs) per run | a step: batch x patch |",
        "|---" * 10 + "|",
    ]
    for e in ranked + [x for x in board["models"] if not x["complete"]]:
        cost, step = e["cost"] or {}, e["step"]
        lines.append(
            f"| `{e['model']}` | "
            + " | ".join(human(k, cost.get(k)) if e["cost"] else "n/a" for k in COST)
            + f" | {duration(e['training_time_s'])} | {_steps(e) or 'n/a'} | "
            + (f"{step['batch_size']} x {'x'.join(map(str, step['patch']))}" if step else "n/a")
            + " |"
        )
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
            "Not ranked (a fold not finished or failed): "
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
        ("training time, all folds (min)", lambda e: e["training_time_s"] / 60 if e["training_time_s"] else None),
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
            err = [[ys[i] - lo], [hi - ys[i]]] if lo is not None else None
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
        ["model", "complete", "cases"]
        + [f"{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]
        + [f"Dice_{k}" for k in labels]
    )
    columns += [
        "delta_Dice",
        "delta_lo",
        "delta_hi",
        "p_wilcoxon",
        "p_holm",
        "significantly_below_best",
        *COST,
        "training_time_s",
        "test_Dice",
        "test_lo",
        "test_hi",
    ]
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for e in board["models"]:
        row = {
            "model": e["model"],
            "complete": e["complete"],
            "cases": e.get("cases"),
            "training_time_s": e["training_time_s"],
            **(e["cost"] or {}),
        }
        for m in METRICS if e["complete"] else ():
            row.update({m: e[m]["mean"], f"{m}_lo": e[m]["ci"][0], f"{m}_hi": e[m]["ci"][1]})
            row.update({f"Dice_{k}": v["mean"] for k, v in e["Dice"]["per_class"].items()} if m == "Dice" else {})
        if e.get("to_best"):
            d = e["to_best"]
            row.update(
                delta_Dice=d["Dice"], delta_lo=d["ci"][0], delta_hi=d["ci"][1], p_wilcoxon=d["p"], p_holm=d["p_holm"]
            )
        if e["complete"]:
            row["significantly_below_best"] = e["significantly_below_best"]
        if e["test"]:
            row.update(
                test_Dice=e["test"]["Dice"]["mean"],
                test_lo=e["test"]["Dice"]["ci"][0],
                test_hi=e["test"]["Dice"]["ci"][1],
            )
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return buffer.getvalue()


def write_leaderboard(out) -> Path:
    """Write ``leaderboard.json``, ``.csv``, ``pareto.png`` and ``leaderboard.md`` into ``out``; returns the page."""
    out = Path(out)
    board = leaderboard(out)
    write_text(out / "leaderboard.json", json.dumps(board, indent=2) + "\n")
    write_text(out / "leaderboard.csv", _csv(board))
    png = plot_pareto(board)
    if png is not None:
        write_bytes(out / "pareto.png", png)
    return write_text(out / "leaderboard.md", _markdown(out, board))
