"""Per-case, per-class segmentation metrics and a folder evaluation that writes nnU-Net-style summaries.

For each label id: ``Dice``, ``IoU``, ``NSD`` (normalised surface Dice at a tolerance in mm), ``HD95``
(95th percentile Hausdorff distance in mm) and the voxel counts ``TP``, ``FP``, ``FN``, ``TN``,
``n_pred``, ``n_ref`` (the keys of nnU-Net's ``summary.json``). Surface metrics come from MONAI with
the voxel spacing, so anisotropic voxels are measured in mm.

Empty masks, per label:

* reference and prediction both empty: Dice, IoU, NSD and HD95 are NaN. As in nnU-Net, such a case is
  left out of the means (means and standard deviations use ``nanmean``/``nanstd``).
* only one of them empty: Dice = IoU = NSD = 0 and HD95 = the image diagonal in mm, the worst possible
  value, so that a missed or hallucinated structure is penalised instead of silently dropped.

Per case, over all classes including background (the voxels in none of the label ids), as in the
random 2.5D U-Net paper: ``MA`` (mean accuracy) = mean of the per-class recalls TP/(TP+FN), and
``mean_IU`` = mean of the per-class IoUs. A class absent from the reference has no recall, and a class
absent from both has no IoU; those are left out of the case's mean.

Predictions and references are compared voxel by voxel, so they must lie on one grid: the same shape and the same
voxel-to-world affine (to ``AFFINE_TOLERANCE_MM`` per entry, as an image and its label in training). A prediction on
another grid (flipped, shifted, resampled) is refused with one line naming both files, or, with ``resample``, taken
onto the reference grid by nearest neighbour (world outside the prediction counts as background).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import warnings
from io import StringIO
from pathlib import Path

import numpy as np

from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import (
    AFFINE_TOLERANCE_MM,
    SUPPORTED_ENDINGS,
    Image,
    output_folder,
    read_label_frames,
    strip_ending,
    write_text,
)

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("Dice", "IoU", "NSD", "HD95")
CSV_COLUMNS = ("case", "label", "Dice", "IoU", "NSD", "HD95", "TP", "FP", "FN", "n_pred", "n_ref")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def _surface_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], tolerance_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """HD95 and NSD for each channel of the boolean stacks ``(n, *spatial)``, none of them empty."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    y_pred = torch.from_numpy(pred[None].astype(np.float32))
    y = torch.from_numpy(ref[None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI warns about its own deprecated internals
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=list(spacing))
        nsd = compute_surface_dice(
            y_pred, y, [tolerance_mm] * len(pred), include_background=True, spacing=list(spacing)
        )
    return hd95[0].numpy().astype(float), nsd[0].numpy().astype(float)


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    label_ids: list[int],
    spacing: tuple[float, ...],
    nsd_tolerance_mm: float = 1.0,
    ignore_label: int | None = None,
) -> dict[int, dict[str, float]]:
    """Metrics of one case for each label id (2D or 3D label maps of equal shape, spacing in mm per axis). Voxels
    whose reference is ``ignore_label`` count nowhere: the prediction is restricted to the other voxels, for the
    counts and for the surfaces of NSD and HD95 alike."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} != reference shape {ref.shape}")
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {spacing} does not match a {ref.ndim}D label map")
    diagonal = float(np.linalg.norm(np.array(ref.shape) * np.array(spacing)))
    labelled = np.ones(ref.shape, bool) if ignore_label is None else ref != ignore_label
    results, both_present = {}, []
    for label in label_ids:
        p, r = (pred == label) & labelled, ref == label
        tp = int(np.count_nonzero(p & r))
        n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
        fp, fn = n_pred - tp, n_ref - tp
        metrics = {
            "Dice": _ratio(2 * tp, 2 * tp + fp + fn),
            "IoU": _ratio(tp, tp + fp + fn),
            "NSD": math.nan,
            "HD95": math.nan,
            "TP": tp,
            "FP": fp,
            "FN": fn,
            "TN": int(np.count_nonzero(labelled) - tp - fp - fn),
            "n_pred": n_pred,
            "n_ref": n_ref,
        }
        if n_pred and n_ref:
            both_present.append(label)
        elif n_pred or n_ref:
            metrics.update(NSD=0.0, HD95=diagonal)
        results[label] = metrics
    if both_present:
        hd95, nsd = _surface_metrics(
            np.stack([(pred == label) & labelled for label in both_present]),
            np.stack([ref == label for label in both_present]),
            spacing,
            nsd_tolerance_mm,
        )
        for label, hd, ns in zip(both_present, hd95, nsd):
            results[label].update(HD95=float(hd), NSD=float(ns))
    return results


def class_means(
    pred: np.ndarray, ref: np.ndarray, label_ids: list[int], ignore_label: int | None = None
) -> dict[str, float]:
    """``MA`` and ``mean_IU`` of one case over background (voxels in no label id) and every label id, on the voxels
    whose reference is not ``ignore_label``."""
    if ignore_label is not None:
        pred, ref = pred[ref != ignore_label], ref[ref != ignore_label]
    pred_classes = [~np.isin(pred, label_ids)] + [pred == label for label in label_ids]
    ref_classes = [~np.isin(ref, label_ids)] + [ref == label for label in label_ids]
    recalls, ious = [], []
    for p, r in zip(pred_classes, ref_classes):
        tp = np.count_nonzero(p & r)
        recalls.append(_ratio(tp, np.count_nonzero(r)))
        ious.append(_ratio(tp, np.count_nonzero(p | r)))
    return {"MA": nanmean(recalls), "mean_IU": nanmean(ious)}


def nanmean(values) -> float:
    """Mean of the values that are not NaN (None counts as NaN); NaN when there are none, without a warning."""
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else math.nan


def _nanstd(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanstd(values)) if np.any(~np.isnan(values)) else math.nan


def link_references(labels: dict[str, Path], folder: Path) -> Path:
    """Link each reference label file into ``folder`` under its case name (``CASE`` + the file's ending), since
    :func:`evaluate_folder` pairs predictions and references by name; returns ``folder``."""
    from unetzoo.io import file_ending

    folder.mkdir(parents=True, exist_ok=True)
    for name, label in labels.items():
        link = folder / f"{name}{file_ending(label)}"
        if not link.exists():
            link.symlink_to(Path(label).resolve())
    return folder


def label_files(folder: Path) -> dict[str, Path]:
    """Image files of a folder keyed by case name (file name without its ending)."""
    if not folder.is_dir():
        raise file_error(folder, "folder not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not path.name.lower().endswith(SUPPORTED_ENDINGS):
            continue
        case = strip_ending(path)
        if case in files:
            raise file_error(path, f"same case name as {files[case].name}")
        files[case] = path
    return files


def on_reference_grid(pred: Image, ref: Image, resample: bool = False) -> np.ndarray:
    """The prediction's label map on the reference's grid: as it is when both share shape and affine; resampled by
    nearest neighbour when ``resample`` (NIfTI only: a PNG has no geometry to resample by); else a one-line error
    naming both files."""
    same_shape = pred.array.shape == ref.array.shape
    offset = float(np.abs(pred.affine - ref.affine).max())
    if same_shape and offset <= AFFINE_TOLERANCE_MM:
        return pred.array
    problem = (
        f"shape {pred.array.shape} differs from the reference's {ref.array.shape}"
        if not same_shape
        else f"affine differs from the reference's by up to {offset:.4g} mm (flipped, shifted or another spacing?)"
    )
    if not resample or ref.spatial_dims == 2 or pred.spatial_dims == 2:
        hint = (
            "; pass --resample to take it onto the reference grid (nearest neighbour)" if ref.spatial_dims == 3 else ""
        )
        raise file_error(pred.path, f"not on the grid of the reference {ref.path}: {problem}{hint}")
    from scipy.ndimage import affine_transform

    ref_to_pred = np.linalg.inv(pred.affine) @ ref.affine  # reference voxel -> world -> prediction voxel
    return affine_transform(
        pred.array,
        ref_to_pred[:3, :3],
        ref_to_pred[:3, 3],
        output_shape=ref.array.shape,
        order=0,
        mode="constant",
        cval=0,
    ).astype(pred.array.dtype)


def _jsonable(value):
    """Replace NaN/inf by None and NumPy scalars by Python ones so the JSON stays valid."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate_folder(
    pred_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    label_ids: list[int] | None = None,
    nsd_tolerance_mm: float = 1.0,
    resample: bool = False,
    ignore_label: int | None = None,
) -> dict:
    """Compare every reference in ``label_dir`` with the prediction of the same case name in ``pred_dir``.

    Writes ``out_dir/summary.json`` (nnU-Net keys, ``metric_per_case`` included, plus ``cases``, ``std``, ``MA``, ``mean_IU`` and NSD/HD95) and
    ``out_dir/cases.csv`` (one row per case and label, NaN as an empty cell) and returns the summary as
    written (NaN as None). A 3D+t case (4D label maps (X, Y, Z, T)) is measured per frame: one entry per
    case and frame (with a ``frame`` key, and a ``frame`` column in the CSV); the means are over all entries.
    ``label_ids`` defaults to all non-zero values found; a subset evaluates those ids only (the other values count
    as background in MA and mean_IU). Spacing is taken from each reference's affine. A prediction on another grid
    than its reference is an error, or with ``resample`` resampled onto it (:func:`on_reference_grid`).
    A negative or non-finite ``nsd_tolerance_mm``, or a label id below 1, is refused before anything is written.
    ``ignore_label`` (the dataset's label named ``ignore``): the voxels whose reference holds it count in no metric
    (:func:`case_metrics`), and it is no label id.
    """
    from tqdm import tqdm

    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm >= 0):
        raise UnetzooError(f"--nsd-tolerance: expected a distance in mm >= 0, got {nsd_tolerance_mm}")
    if label_ids is not None and (not label_ids or min(label_ids) < 1 or len(set(label_ids)) < len(label_ids)):
        raise UnetzooError(f"--label-ids: expected distinct label ids >= 1 (0 is the background), got {label_ids}")
    if ignore_label is not None and label_ids is not None and ignore_label in label_ids:
        raise UnetzooError(
            f"--label-ids: {ignore_label} is the ignore label (unlabelled voxels), not a label to evaluate"
        )
    pred_dir, label_dir, out_dir = Path(pred_dir), Path(label_dir), output_folder(out_dir)
    if pred_dir.resolve() == label_dir.resolve():
        log.warning("%s: the predictions folder is the references folder: every case is compared with itself", pred_dir)
    refs, preds = label_files(label_dir), label_files(pred_dir)
    if not refs:
        raise file_error(label_dir, f"no reference label files ({', '.join(SUPPORTED_ENDINGS)})")
    missing = [refs[case].name for case in refs if case not in preds]
    if missing:
        raise file_error(pred_dir, f"no prediction for {len(missing)} reference(s): {', '.join(missing)}")
    extra = [preds[case].name for case in preds if case not in refs]
    if extra:
        log.warning("ignoring %d prediction(s) without a reference in %s: %s", len(extra), label_dir, ", ".join(extra))

    if label_ids is None:
        found: set[int] = set()
        for case in refs:
            for path in (refs[case], preds[case]):
                for frame in read_label_frames(path):
                    found.update(np.unique(frame.array).tolist())
        label_ids = sorted(found - {0, ignore_label})
    label_ids = [int(label) for label in label_ids]

    cases = []
    for case in tqdm(list(refs), desc="evaluating", unit="case", disable=len(refs) <= 5):
        ref_frames, pred_frames = read_label_frames(refs[case]), read_label_frames(preds[case])
        if len(pred_frames) != len(ref_frames):
            raise file_error(
                preds[case], f"has {len(pred_frames)} time frame(s), reference {refs[case]} has {len(ref_frames)}"
            )
        for t, (ref, pred) in enumerate(zip(ref_frames, pred_frames)):
            pred = Image(on_reference_grid(pred, ref, resample), ref.affine, pred.path)
            metrics = case_metrics(pred.array, ref.array, label_ids, ref.spacing, nsd_tolerance_mm, ignore_label)
            cases.append(
                {
                    "case": case,
                    **({"frame": t} if len(ref_frames) > 1 else {}),
                    "prediction_file": str(preds[case]),
                    "reference_file": str(refs[case]),
                    "metrics": metrics,
                    **class_means(pred.array, ref.array, label_ids, ignore_label),
                }
            )

    absent = [k for k in label_ids if not any(c["metrics"][k]["n_ref"] + c["metrics"][k]["n_pred"] for c in cases)]
    if absent:
        log.warning("label id(s) %s in no reference and no prediction: their metrics are n/a", absent)
    per_label = {label: {m: [c["metrics"][label][m] for c in cases] for m in SUMMARY_METRICS} for label in label_ids}
    mean = {label: {m: nanmean(v) for m, v in values.items()} for label, values in per_label.items()}
    std = {label: {m: _nanstd(v) for m, v in values.items()} for label, values in per_label.items()}
    foreground_mean = {m: nanmean([mean[label][m] for label in label_ids]) for m in SUMMARY_METRICS}
    foreground_mean.update({m: nanmean([c[m] for c in cases]) for m in ("MA", "mean_IU")})
    summary = _jsonable(
        {
            "mean": mean,
            "std": std,
            "foreground_mean": foreground_mean,
            "cases": cases,
            # nnU-Net's own name for the per-case list, so that its scripts read this file
            "metric_per_case": [{k: c[k] for k in ("prediction_file", "reference_file", "metrics")} for c in cases],
            "nsd_tolerance_mm": float(nsd_tolerance_mm),
            "label_ids": label_ids,
            **({"ignore_label": ignore_label} if ignore_label is not None else {}),
        }
    )

    write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    table = StringIO()
    writer = csv.writer(table, lineterminator="\n")
    frames = any("frame" in c for c in summary["cases"])  # 3D+t: a frame column after the case
    writer.writerow(CSV_COLUMNS[:1] + ("frame",) * frames + CSV_COLUMNS[1:])
    for c in summary["cases"]:
        for label, m in c["metrics"].items():
            first = [c["case"]] + [c.get("frame", "")] * frames
            writer.writerow(
                first + [label] + ["" if m[k] is None else m[k] for k in CSV_COLUMNS[2:]]
            )  # NaN -> empty cell
    write_text(out_dir / "cases.csv", table.getvalue())
    return summary
