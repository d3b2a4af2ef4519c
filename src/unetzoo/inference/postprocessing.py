"""Connected-component post-processing: keep the K largest components of chosen classes.

The Regularized U-Net (Ding et al. 2021, FLARE 2021), section 4.3, keeps the largest component of liver, spleen and
pancreas and the three largest of the kidneys; nnU-Net (Isensee et al. 2021, "postprocessing") decides on the
validation fold, per class, whether keeping only the largest component raises that class's mean Dice, and applies
what helped to every later prediction. Both are here: :func:`keep_largest` applies rules ``{class: K}``,
:func:`decide` is nnU-Net's choice, recorded in the run folder as ``postprocessing.json`` and applied by
``unetzoo predict`` unless turned off.

Components are face-connected (SciPy's default structure: 4-neighbours in 2D, 6 in 3D); the voxels of a
removed component become background (0), as in nnU-Net.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from unetzoo.errors import UnetzooError
from unetzoo.evaluation import nanmean
from unetzoo.io import read_json, read_label_frames, write_text
from unetzoo.runfolder import RunFolder


def keep_largest(label: np.ndarray, rules: dict[int, int], frames: bool = False) -> np.ndarray:
    """A copy of the label map where each class ``c`` of ``rules`` keeps only its ``rules[c]`` largest connected
    components (ties broken by component order); the other voxels of ``c`` become 0. ``frames``: the last axis
    is time (a 3D+t label map), each frame is processed on its own."""
    if frames:
        return np.stack([keep_largest(label[..., t], rules) for t in range(label.shape[-1])], axis=-1)
    out = np.array(label, copy=True)
    for cls, k in rules.items():
        components, n = ndimage.label(label == cls)
        if n <= k:
            continue
        sizes = np.bincount(components.ravel())[1:]
        keep = np.argsort(-sizes, kind="stable")[:k] + 1
        out[(components > 0) & ~np.isin(components, keep)] = 0
    return out


def parse_rules(text: str, classes: list[int]) -> dict[int, int]:
    """``"K"`` (every class in ``classes`` keeps K components) or ``"1:1,2:3"`` (class:K pairs) -> ``{class: K}``."""
    try:
        if ":" not in text:
            return {c: _positive(int(text)) for c in classes}
        rules = {}
        for pair in text.split(","):
            cls, k = pair.split(":")
            rules[int(cls)] = _positive(int(k))
    except ValueError:
        raise UnetzooError(f"--keep-largest expects K or CLASS:K,CLASS:K (positive integers), got {text!r}") from None
    unknown = sorted(set(rules) - set(classes))
    if unknown:
        raise UnetzooError(
            f"--keep-largest names class(es) {unknown} that the run does not predict (classes {classes})"
        )
    return rules


def _positive(k: int) -> int:
    if k < 1:
        raise ValueError(k)
    return k


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = np.count_nonzero(pred) + np.count_nonzero(ref)
    return 2 * np.count_nonzero(pred & ref) / total if total else float("nan")


def decide(pairs: list[tuple[np.ndarray, np.ndarray]], classes: list[int], ignore_label: int | None = None) -> dict:
    """nnU-Net's decision on validation (prediction, reference) label maps: class ``c`` keeps its largest component
    when that raises its mean Dice over the cases (both-empty cases left out; voxels whose reference is
    ``ignore_label`` do not count). Returns ``{"keep_largest": {c: 1, ...}, "dice": {c: {"without": d0, "with": d1}}}``."""
    rules, dice = {}, {}
    labelled = [r != ignore_label if ignore_label is not None else np.ones(r.shape, bool) for _, r in pairs]
    for cls in classes:
        without = nanmean([_dice((p == cls) & m, r == cls) for (p, r), m in zip(pairs, labelled)])
        with_ = nanmean([_dice((keep_largest(p, {cls: 1}) == cls) & m, r == cls) for (p, r), m in zip(pairs, labelled)])
        dice[cls] = {"without": without, "with": with_}
        if with_ > without:
            rules[cls] = 1
    return {"keep_largest": rules, "dice": dice}


def decide_for_run(
    run_dir: Path,
    prediction_files: dict[str, Path],
    reference_files: dict[str, Path],
    classes: list[int],
    ignore_label: int | None = None,
) -> dict:
    """:func:`decide` on a run's validation predictions; writes ``RUN/postprocessing.json`` and returns it."""
    pairs = [
        (p.array, r.array)
        for c in sorted(reference_files)  # 3D+t: one pair per frame
        for p, r in zip(read_label_frames(prediction_files[c]), read_label_frames(reference_files[c]))
    ]
    decision = decide(pairs, classes, ignore_label)
    record = {
        "keep_largest": {str(c): k for c, k in decision["keep_largest"].items()},
        "validation_dice": {str(c): v for c, v in decision["dice"].items()},
        "cases": len(reference_files),
    }
    write_text(RunFolder(run_dir).postprocessing, json.dumps(record, indent=2) + "\n")
    return record


def run_rules(run_dir: Path) -> dict[int, int]:
    """The rules a run's training chose (``postprocessing.json``), or none."""
    record = read_json(RunFolder(run_dir).postprocessing, {"keep_largest": {}})
    return {int(c): int(k) for c, k in record["keep_largest"].items()}
