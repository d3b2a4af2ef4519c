"""Visual reports: one page comparing trained runs, and the error overlay of one case (as Fig. 1 of Carvalho et
al. 2021, arXiv:2103.11713).

``make_report(runs, out)`` writes ``out/report.md`` with ``curves.png`` and ``overlays.png`` beside it:

* per-class Dice, IoU (Jaccard), NSD and HD95 of each run's held-out fold (mean +- standard deviation over cases, from
  ``RUN/validation/summary.json``), the best value of each column in bold;
* Dice and HD95 with the run's connected-component post-processing (``RUN/validation/postprocessed/summary.json``
  and the per-class choice in ``RUN/postprocessing.json``, both written by training);
* paired differences of Dice and IoU to the first run (the difference of the figures with its bootstrap interval
  over subjects, :mod:`unetzoo.experiments.statistics`, the same as ``unetzoo compare``; cases better / worse);
* training: epochs, total and median epoch time (``history.json``), parameters, best pseudo Dice;
* the benchmark figures where the run has them (``RUN/benchmark.json``, written by
  ``unetzoo benchmark --run RUN``, or a ``benchmark.json`` given with ``benchmark=``, matched by model name);
* training curves of every run on shared axes: loss and pseudo Dice per epoch, pseudo Dice per hour;
* overlays of the same slice for every run: one row per validation case common to all runs, columns
  image, ground truth, then each run's prediction coloured by agreement with the reference.

Overlay colours (:func:`error_overlay`): true positives white, false positives red, false negatives blue,
blended with alpha over the grey image; elsewhere the grey image. Over all foreground classes a voxel
is a true positive where prediction and reference agree on a foreground class, a false positive where
the prediction says foreground but not the reference's class (a wrong class counts as a false
positive), a false negative where the reference is foreground and the prediction background. With
``label=L`` only class L counts (binary prediction == L against reference == L).

The slice: the one with the most reference foreground of the case, along the axis of largest voxel
spacing (the last axis when isotropic); the same slice for every run. The case's image is found through
``RUN/validation/cases.json`` (written by training) or, given ``data=``, the dataset folder.
"""

from __future__ import annotations

import io as _io
import math
from pathlib import Path

import numpy as np

from unetzoo.errors import UnetzooError, file_error
from unetzoo.formatting import duration, human, shape
from unetzoo.io import (
    label_frames,
    output_folder,
    read_image,
    read_json,
    read_label,
    write_bytes,
    write_text,
)
from unetzoo.runfolder import RunFolder

TP_COLOR = (1.0, 1.0, 1.0)
FP_COLOR = (1.0, 0.0, 0.0)
FN_COLOR = (0.0, 0.0, 1.0)
# ground-truth class colours: none of them white, red or blue, so they are never confused with the errors
CLASS_COLORS = [
    (0.1, 0.8, 0.1),
    (1.0, 0.85, 0.0),
    (1.0, 0.4, 1.0),
    (0.0, 0.9, 0.9),
    (1.0, 0.55, 0.0),
    (0.6, 0.4, 0.2),
    (0.6, 1.0, 0.6),
    (0.7, 0.5, 1.0),
]


# ---- overlays -------------------------------------------------------------------------------------------
def to_display(image: np.ndarray) -> np.ndarray:
    """A 2D slice as RGB in [0, 1]: ``(H, W)`` grey, normalised to its 0.5-99.5 percentiles, or ``(3, H, W)``
    RGB (2D colour images) scaled by its maximum."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 3:
        top = float(image.max())
        rgb = np.moveaxis(image, 0, -1) / (255.0 if top > 1 else max(top, 1e-8))
        return np.clip(rgb, 0, 1)
    if image.ndim == 3:
        image = image[0]
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    grey = np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)
    return np.repeat(grey[..., None], 3, axis=-1)


def error_masks(reference: np.ndarray, prediction: np.ndarray, label: int | None = None):
    """Boolean (TP, FP, FN) maps; see the module docstring for the multi-class rule."""
    reference, prediction = np.asarray(reference), np.asarray(prediction)
    if reference.shape != prediction.shape:
        raise UnetzooError(f"reference shape {reference.shape} differs from prediction shape {prediction.shape}")
    if label is not None:
        r, p = reference == label, prediction == label
        return p & r, p & ~r, ~p & r
    tp = (prediction == reference) & (reference > 0)
    fp = (prediction > 0) & (prediction != reference)
    fn = (reference > 0) & (prediction == 0)
    return tp, fp, fn


def _blend(rgb: np.ndarray, mask: np.ndarray, color, alpha: float) -> None:
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(color, dtype=rgb.dtype)


def error_overlay(
    image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, label: int | None = None, alpha: float = 0.75
) -> np.ndarray:
    """RGB ``(H, W, 3)`` in [0, 1]: the image in grey, true positives white, false positives red, false
    negatives blue, each blended with ``alpha`` (1: pure colours)."""
    rgb = to_display(image)
    for mask, color in zip(error_masks(reference, prediction, label), (TP_COLOR, FP_COLOR, FN_COLOR)):
        _blend(rgb, mask, color, alpha)
    return rgb


def class_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """RGB ``(H, W, 3)``: the image in grey with every foreground class in its own colour."""
    rgb = to_display(image)
    labels = np.asarray(labels)
    for value in np.unique(labels):
        if value > 0:
            _blend(rgb, labels == value, CLASS_COLORS[(int(value) - 1) % len(CLASS_COLORS)], alpha)
    return rgb


def slice_axis(spacing) -> int:
    """The axis of largest voxel spacing (the last one among ties)."""
    spacing = list(spacing)
    top = max(spacing)
    return max(i for i, s in enumerate(spacing) if math.isclose(s, top, rel_tol=1e-3))


def best_slice(reference: np.ndarray, axis: int) -> int:
    """Index along ``axis`` of the slice with the most foreground (the middle slice if there is none)."""
    counts = (np.asarray(reference) > 0).sum(axis=tuple(i for i in range(reference.ndim) if i != axis))
    return int(np.argmax(counts)) if counts.max() > 0 else reference.shape[axis] // 2


def take_slice(array: np.ndarray, axis: int | None, index: int | None) -> np.ndarray:
    """A 2D view for display: ``array[..., index along axis, ...]`` (leading channel axis kept when
    ``array`` has one more axis than a label), rotated 90 degrees so that the next array axis points up
    (the usual view of a RAS volume). 2D arrays (``axis`` None) are returned as they are."""
    if axis is None:
        return array
    extra = array.ndim - 3
    view = np.take(array, index, axis=axis + extra)
    return np.rot90(view, axes=(extra, extra + 1))


def _in_plane_aspect(spacing, axis: int | None) -> float:
    if axis is None:
        return 1.0
    rows_cols = [s for i, s in enumerate(spacing) if i != axis]
    return float(rows_cols[1] / rows_cols[0])  # after rot90 the second in-plane axis runs along the rows


def _plot_png(fig) -> bytes:
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Slice:
    """One case cut at one slice: image, reference and the geometry to show them. Of a 3D+t case (4D label map)
    the slice is cut from frame 0 (end-diastole in cine MRI)."""

    def __init__(self, image_paths, label_path, axis: int | None = None, index: int | None = None):
        self.frame = 0 if label_frames(label_path) > 1 else None
        reference = read_label(label_path, frame=self.frame)
        self.reference_full = reference.array
        self.spacing = reference.spacing
        dims = reference.array.ndim
        if image_paths:
            image = read_image(image_paths, dims, frame=self.frame)
            if image.spatial_shape != reference.array.shape:
                raise file_error(
                    image.path,
                    f"image shape {image.spatial_shape} differs from label shape {reference.array.shape} ({label_path})",
                )
            image_array = image.array
        else:
            image_array = np.zeros((1, *reference.array.shape), np.float32)
        if dims == 2:
            self.axis, self.index = None, None
        else:
            self.axis = slice_axis(self.spacing) if axis is None else int(axis)
            if not 0 <= self.axis < 3:
                raise UnetzooError(f"slice axis must be 0, 1 or 2, got {axis}")
            self.index = best_slice(reference.array, self.axis) if index is None else int(index)
            if not 0 <= self.index < reference.array.shape[self.axis]:
                raise UnetzooError(
                    f"slice {self.index} is outside axis {self.axis} of size {reference.array.shape[self.axis]}"
                )
        self.image = take_slice(image_array, self.axis, self.index)
        if dims == 3 or self.image.shape[0] != 3:  # first channel in grey; RGB only for 2D colour images
            self.image = self.image[0]
        self.reference = take_slice(reference.array, self.axis, self.index)
        self.aspect = _in_plane_aspect(self.spacing, self.axis)

    def prediction(self, path) -> np.ndarray:
        pred = read_label(path, self.reference_full.ndim, frame=self.frame)
        if pred.array.shape != self.reference_full.shape:
            raise file_error(
                path,
                f"prediction shape {pred.array.shape} differs from the reference shape {self.reference_full.shape}",
            )
        return take_slice(pred.array, self.axis, self.index)

    def where(self) -> str:
        frame = "" if self.frame is None else f"frame {self.frame}, "
        return "" if self.axis is None else f"{frame}slice {self.index} of axis {self.axis}"


def _check_alpha(alpha: float) -> None:
    """The opacity of the error colours (``--alpha``) lies in [0, 1]: one line otherwise, before any work."""
    if not 0 <= alpha <= 1:  # NaN too
        raise UnetzooError(f"--alpha: expected an opacity in [0, 1], got {alpha}")


def _legend(fig) -> None:
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=c, edgecolor="black", label=n)
        for c, n in ((TP_COLOR, "true positive"), (FP_COLOR, "false positive"), (FN_COLOR, "false negative"))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=9)


def write_overlay(
    image,
    label,
    prediction,
    out_png,
    axis: int | None = None,
    index: int | None = None,
    label_id: int | None = None,
    alpha: float = 0.75,
) -> Path:
    """One case: image | ground truth | prediction (class colours) | errors (TP white, FP red, FN blue)."""
    _check_alpha(alpha)
    plt = _pyplot()
    images = image if isinstance(image, (list, tuple)) else [image]
    cut = Slice(images, label, axis, index)
    pred = cut.prediction(prediction)
    panels = [
        ("image", to_display(cut.image)),
        ("ground truth", class_overlay(cut.image, cut.reference)),
        ("prediction", class_overlay(cut.image, pred)),
        (
            "errors" + (f" (label {label_id})" if label_id is not None else ""),
            error_overlay(cut.image, cut.reference, pred, label_id, alpha),
        ),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.8))
    for ax, (title, rgb) in zip(axes, panels):
        ax.imshow(rgb, aspect=cut.aspect, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{Path(prediction).name} {cut.where()}", fontsize=10)
    _legend(fig)
    return write_bytes(out_png, _plot_png(fig))


def _run_names(runs: list[dict]) -> list[str]:
    names = [r["dir"].resolve().name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r['dir'].resolve().parent.name}/{r['dir'].resolve().name}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


def _parameters(run: dict) -> int | None:
    try:
        from unetzoo.config import Config
        from unetzoo.data.plan import Plan
        from unetzoo.methods import build_method

        method, _ = build_method(Config.from_dict(run["config"]), Plan.from_dict(run["plan"]))
        return sum(p.numel() for p in method.model.parameters() if p.requires_grad)
    except Exception:  # an old or foreign run folder: the report still shows the rest
        return None


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _metric_tables(runs: list[dict], names: list[str], metrics=("Dice", "IoU", "NSD", "HD95")) -> list[str]:
    lines = []
    labels = {}
    for run in runs:
        labels.update({str(k): v for k, v in (run["plan"].get("labels") or {}).items() if str(k) != "0"})
    ids = sorted(
        {k for run in runs if run["summary"] for k in run["summary"]["mean"]},
        key=lambda k: int(k) if k.isdigit() else k,
    )
    for metric in metrics:
        better = min if metric == "HD95" else max
        header = [f"{labels.get(k, k)} ({k})" for k in ids] + ["mean"]
        cells, values = [], []
        for run in runs:
            summary = run["summary"]
            row, vals = [], []
            for k in ids:
                mean = (summary or {}).get("mean", {}).get(k, {}).get(metric)
                std = (summary or {}).get("std", {}).get(k, {}).get(metric)
                row.append("n/a" if mean is None else f"{_fmt(mean)} ± {_fmt(std)}")
                vals.append(mean)
            mean = (summary or {}).get("foreground_mean", {}).get(metric)
            row.append(_fmt(mean))
            vals.append(mean)
            cells.append(row)
            values.append(vals)
        if len(runs) > 1:  # bold the best value of each column
            for j in range(len(header)):
                column = [v[j] for v in values if v[j] is not None]
                if column:
                    best = better(column)
                    for i, v in enumerate(values):
                        if v[j] is not None and v[j] == best:
                            cells[i][j] = f"**{cells[i][j]}**"
        # distances are in mm where the data has a spacing (NIfTI), in pixels where it has none (PNG)
        unit = (" (mm)" if runs[0]["plan"].get("target_spacing") else " (px)") if metric == "HD95" else ""
        title = "IoU (Jaccard)" if metric == "IoU" else metric
        lines += [f"### {title}{unit}", "", "| run | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(row) + " |" for name, row in zip(names, cells)]
        lines.append("")
    return lines


def _postprocessing_section(runs: list[dict], names: list[str]) -> list[str]:
    """Dice and HD95 of the held-out fold with each run's post-processing, and the per-class choice behind it."""
    done = [(n, r) for n, r in zip(names, runs) if r["postprocessed"] and r["postprocessing"]]
    if not done:
        return []
    lines = [
        "## Held-out fold with connected-component post-processing",
        "",
        "Keep-largest-component per class, chosen on this fold by training (nnU-Net's rule: kept where it raises the "
        "class's mean Dice). Validation Dice per class without -> with keeping the largest component:",
        "",
    ]
    for name, run in done:
        chosen = ", ".join(run["postprocessing"]["keep_largest"]) or "none"
        dice = ", ".join(
            f"{c}: {_fmt(v['without'])} -> {_fmt(v['with'])}"
            for c, v in run["postprocessing"]["validation_dice"].items()
        )
        lines.append(f"- {name}: classes kept to their largest component: {chosen} ({dice})")
    lines.append("")
    post = [dict(run, summary=run["postprocessed"]) for _, run in done]
    return lines + _metric_tables(post, [n for n, _ in done], metrics=("Dice", "HD95"))


def _case_metrics(run: dict) -> dict[str, dict[str, dict]]:
    """Per held-out case (3D+t: case and frame), its metrics per class."""
    return {
        case["case"] if "frame" not in case else f"{case['case']} frame {case['frame']}": case.get("metrics", {})
        for case in (run["summary"] or {}).get("cases", [])
    }


def _table(cases: dict[str, dict[str, dict]], keys: list[str], labels: list[str], metric: str) -> np.ndarray:
    """``metric`` of the cases ``keys`` per class in ``labels``: (cases, classes), NaN where a case has no value."""
    rows = [[cases[key].get(label, {}).get(metric) for label in labels] for key in keys]
    return np.array(rows, dtype=float).reshape(len(keys), len(labels))


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _paired_table(runs: list[dict], names: list[str]) -> list[str]:
    """Each run against the first on the held-out cases both predicted: the difference of their figures with the
    bootstrap interval of :func:`unetzoo.experiments.statistics.paired_difference` (cases of one subject resampled
    together, as ``unetzoo compare`` does), and on how many cases it is better / worse -- whether a gap between two
    models is more than case-to-case noise."""
    from unetzoo.experiments.statistics import figure, paired_difference, subjects_of

    if len(runs) < 2 or not (runs[0]["summary"] or {}).get("cases"):
        return []
    group_by = runs[0]["config"].get("data", {}).get("group_by", "")
    grouped = f" (subjects by `{names[0]}`'s `data.group_by`, `{group_by}`)" if group_by else ""
    lines = [
        f"## Paired differences to `{names[0]}`",
        "",
        f"On the held-out cases both runs predicted: the run's figure minus `{names[0]}`'s (the mean over foreground "
        "classes of each class's mean over the cases), its 95 % BCa bootstrap interval over subjects (a subject's "
        f"cases{grouped} and a 3D+t case's frames resampled together; the percentile interval, marked, where BCa "
        "cannot be computed), and the number of cases on which the run's mean over classes is better / worse.",
        "",
        "| run | cases / subjects | Δ Dice [95 % CI] | better / worse | Δ IoU [95 % CI] | better / worse |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in zip(names[1:], runs[1:]):
        ours, theirs = _case_metrics(runs[0]), _case_metrics(run)
        common = sorted(set(ours) & set(theirs))
        subjects = subjects_of(common, group_by)
        labels = sorted({label for key in common for label in (*ours[key], *theirs[key])})
        cells = []
        for metric in ("Dice", "IoU"):
            base, other = _table(ours, common, labels, metric), _table(theirs, common, labels, metric)
            result = paired_difference(other, base, subjects)
            if result["difference"] is None:
                cells += ["n/a", "n/a"]
                continue
            lo, hi = result["ci"]
            mark = "" if result["ci_method"] == "BCa" else f" ({result['ci_method']})"
            diff = figure(other[:, None]) - figure(base[:, None])  # per case, the mean over its classes
            cells += [
                f"{_signed(result['difference'])} [{_signed(lo)}, {_signed(hi)}]{mark}",
                f"{int((diff > 0).sum())} / {int((diff < 0).sum())}",
            ]
        lines.append(f"| {name} | {len(common)} / {len(set(subjects))} | " + " | ".join(cells) + " |")
    return lines + [""]


def _training_table(runs: list[dict], names: list[str]) -> list[str]:
    lines = [
        "| run | model | parameters | epochs | training time (h:mm:ss) | median epoch (s) | best pseudo Dice | last train loss | validation cases |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in zip(names, runs):
        history = run["history"] or []
        times = [h.get("epoch_time_s") for h in history if h.get("epoch_time_s") is not None]
        params = _parameters(run)
        best = max((h.get("val_dice") for h in history if h.get("val_dice") is not None), default=None)
        last = history[-1].get("train_loss") if history else None
        n_val = len({c["case"] for c in run["summary"]["cases"]}) if run["summary"] else 0  # 3D+t: cases, not frames
        lines.append(
            f"| {name} | {run['config'].get('model')} | {'n/a' if params is None else f'{params:,}'} | {len(history)} | "
            f"{duration(sum(times) if times else None)} | {_fmt(float(np.median(times)) if times else None, 1)} | {_fmt(best)} | "
            f"{_fmt(last)} | {n_val} |"
        )
    return lines + [""]


def _benchmark_rows(runs: list[dict], benchmark: dict | None) -> list[tuple[dict, dict]]:
    rows = []
    for run in runs:
        found = None
        if run["benchmark"]:
            found = (run["benchmark"], run["benchmark"]["models"][0])
        elif benchmark:
            match = [m for m in benchmark["models"] if m["model"] == run["config"].get("model")]
            if match:
                found = (benchmark, match[0])
        rows.append(found)
    return rows


def _benchmark_table(runs: list[dict], names: list[str], benchmark: dict | None) -> list[str]:
    from unetzoo.experiments.benchmark import FIGURES, LABELS

    rows = _benchmark_rows(runs, benchmark)
    if not any(rows):
        return [
            "No benchmark figures: run `unetzoo benchmark --run RUN ...` (or pass `--benchmark benchmark.json`).",
            "",
        ]
    lines = [
        "| run | " + " | ".join(LABELS[f] for f in FIGURES) + " | measured on |",
        "|---" * (len(FIGURES) + 2) + "|",
    ]
    for name, found in zip(names, rows):
        if not found:
            lines.append(f"| {name} | " + " | ".join("n/a" for _ in FIGURES) + " | |")
            continue
        result, row = found
        where = (
            f"{result['device']}, {result['threads']} threads, torch {result['torch']}, patch {shape(row.get('patch') or result['patch'])}, "
            f"batch {row.get('batch_size', result['batch_size'])}, volume {shape(row.get('infer_shape') or result['infer_shape'])}"
        )
        lines.append(f"| {name} | " + " | ".join(human(f, row.get(f)) for f in FIGURES) + f" | {where} |")
    return lines + [""]


def plot_curves(runs: list[dict], names: list[str]) -> bytes:
    """Training loss and pseudo Dice per epoch, and pseudo Dice against cumulative training time."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = plt.get_cmap("tab10").colors
    for i, (name, run) in enumerate(zip(names, runs)):
        history = run["history"] or []
        if not history:
            continue
        color = colors[i % 10]
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h.get("train_loss") for h in history], color=color, label=name)
        axes[1].plot(epochs, [h.get("val_dice") for h in history], color=color, marker=".", label=name)
        hours = np.cumsum([h.get("epoch_time_s") or 0 for h in history]) / 3600
        axes[2].plot(hours, [h.get("val_dice") for h in history], color=color, marker=".", label=name)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss")
    axes[1].set(xlabel="epoch", ylabel="pseudo Dice (validation, mean fg)", title="validation pseudo Dice", ylim=(0, 1))
    axes[2].set(xlabel="training time (h)", ylabel="pseudo Dice", title="pseudo Dice per training time", ylim=(0, 1))
    from matplotlib.ticker import MaxNLocator

    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _plot_png(fig)


def _common_cases(runs: list[dict], wanted: list[str] | None, n_cases: int) -> list[str]:
    common = set(runs[0]["predictions"])
    for run in runs:
        common &= set(run["predictions"]) & (set(run["references"]) | set(run["cases"]))
    if wanted:
        missing = [c for c in wanted if c not in common]
        if missing:
            raise UnetzooError(
                f"case(s) {', '.join(missing)} not predicted in every run's validation/ folder; common cases: {', '.join(sorted(common)) or 'none'}"
            )
        return list(wanted)
    return sorted(common)[:n_cases]


def _case_sources(case: str, runs: list[dict], data) -> tuple[list | None, Path]:
    for run in runs:
        if case in run["references"]:
            label = run["references"][case]
            break
    else:
        label = Path(next(r["cases"][case]["label"] for r in runs if case in r["cases"]))
    images = next((r["cases"][case]["image"] for r in runs if case in r["cases"]), None)
    if data is not None:
        from unetzoo.data.datasets import load_dataset

        images = [str(p) for p in load_dataset(data).case(case).images]
    if images and not all(Path(p).is_file() for p in images):
        images = None  # the dataset moved: overlays on a black background rather than no page
    return images, label


def plot_overlays(
    runs: list[dict], names: list[str], cases: list[str], data=None, axis=None, label_id=None, alpha: float = 0.75
) -> tuple[bytes, list[str]]:
    """Rows: cases; columns: image, ground truth, each run's errors on the same slice."""
    plt = _pyplot()
    notes = []
    ncols = 2 + len(runs)
    fig, axes = plt.subplots(len(cases), ncols, figsize=(2.6 * ncols, 2.8 * len(cases) + 0.6), squeeze=False)
    for row, case in enumerate(cases):
        images, label = _case_sources(case, runs, data)
        if images is None:
            notes.append(f"{case}: image files not found (pass --data DATASET); overlays drawn on black")
        cut = Slice(images, label, axis)
        panels = [("image", to_display(cut.image)), ("ground truth", class_overlay(cut.image, cut.reference))]
        for name, run in zip(names, runs):
            pred = cut.prediction(run["predictions"][case])
            dice = _case_dice(run, case)
            panels.append(
                (
                    name + (f"\nDice {dice:.3f}" if dice is not None else ""),
                    error_overlay(cut.image, cut.reference, pred, label_id, alpha),
                )
            )
        for col, (title, rgb) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(rgb, aspect=cut.aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(f"{case}\n{cut.where()}", fontsize=8)
    _legend(fig)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _plot_png(fig), notes


def _case_dice(run: dict, case: str) -> float | None:
    """Mean foreground Dice of a case in the run's summary (3D+t: of frame 0, the frame the overlays show)."""
    for entry in (run["summary"] or {}).get("cases", []):
        if entry.get("case") == case:
            values = [m.get("Dice") for m in entry.get("metrics", {}).values() if m.get("Dice") is not None]
            return float(np.mean(values)) if values else None
    return None


def _check_one_dataset(runs: list[dict]) -> None:
    """The runs share the dataset's labels, channels and dimensions (their plans'), so that a column of the report
    holds one class: one line naming two runs that differ otherwise."""
    from unetzoo.inference.predictor import COMPATIBLE

    planned = [run for run in runs if run["plan"]]
    for run in planned[1:]:
        for field in COMPATIBLE:
            ours, first = run["plan"].get(field), planned[0]["plan"].get(field)
            if ours != first:
                raise UnetzooError(
                    f"runs of different datasets: {run['dir']} has {field} {ours}, {planned[0]['dir']} has {first}; "
                    "report runs of one dataset"
                )


BENCHMARK_CONTEXT = ("device", "threads", "torch", "patch", "batch_size", "infer_shape")  # what the cost table shows


def _read_benchmark(path) -> dict:
    """A ``benchmark.json`` written by ``unetzoo benchmark`` (``--benchmark``): one line naming the file where it is
    missing or of another shape."""
    bench = read_json(Path(path), missing="file not found")
    models = bench.get("models") if isinstance(bench, dict) else None
    rows = isinstance(models, list) and all(isinstance(m, dict) and isinstance(m.get("model"), str) for m in models)
    if not rows or any(key not in bench for key in BENCHMARK_CONTEXT):
        raise file_error(
            path,
            "not a benchmark.json of `unetzoo benchmark` (an object with 'models', a list of {\"model\": NAME, ...}, "
            f"and {', '.join(BENCHMARK_CONTEXT)})",
        )
    return bench


def make_report(
    runs,
    out_dir,
    cases: list[str] | None = None,
    n_cases: int = 3,
    axis: int | None = None,
    benchmark=None,
    data=None,
    label_id: int | None = None,
    alpha: float = 0.75,
) -> Path:
    """Write ``out_dir/report.md`` (+ ``curves.png``, ``overlays.png``) comparing the trained ``runs``."""
    if not runs:
        raise UnetzooError("no runs to report")
    _check_alpha(alpha)
    loaded = [RunFolder(r).load() for r in runs]
    _check_one_dataset(loaded)
    names = _run_names(loaded)
    bench = _read_benchmark(benchmark) if benchmark is not None else None
    out = output_folder(out_dir)
    without = [n for n, r in zip(names, loaded) if not r["summary"]]
    lines = [
        "# unetzoo report",
        "",
        "Runs: "
        + ", ".join(
            f"`{n}` ({r['config'].get('model')}, fold {r['config'].get('fold')}, `{r['dir']}`)"
            for n, r in zip(names, loaded)
        ),
        "",
    ]
    lines += ["## Held-out fold: mean ± standard deviation over cases", ""]
    if without:
        lines += [f"No `validation/summary.json` (training not finished?): {', '.join(without)}.", ""]
    lines += _metric_tables(loaded, names)
    lines += _postprocessing_section(loaded, names)
    lines += _paired_table(loaded, names)
    lines += ["## Training", ""] + _training_table(loaded, names)
    lines += ["## Cost (unetzoo benchmark)", ""] + _benchmark_table(loaded, names, bench)
    write_bytes(out / "curves.png", plot_curves(loaded, names))
    lines += ["## Training curves", "", "![training curves](curves.png)", ""]
    chosen = _common_cases(loaded, cases, n_cases)
    lines += ["## Overlays", ""]
    if chosen:
        png, notes = plot_overlays(loaded, names, chosen, data, axis, label_id, alpha)
        write_bytes(out / "overlays.png", png)
        rule = (
            f"label {label_id} only"
            if label_id is not None
            else "all foreground classes; a wrong class counts as a false positive"
        )
        lines += [
            f"Same slice for every run (the one with most reference foreground). White: true positive, red: false positive, "
            f"blue: false negative ({rule}).",
            "",
            "![overlays](overlays.png)",
            "",
        ]
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    else:
        lines += ["No validation case is predicted in every run (runs of different folds?): no overlays.", ""]
    return write_text(out / "report.md", "\n".join(lines))
