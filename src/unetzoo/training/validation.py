"""After training: the held-out fold predicted by the full inference procedure with the run's reported weights,
evaluated, the same for each snapshot of the budget (learning curves), and the post-processing chosen on it
(nnU-Net's per-class keep-largest-component choice)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from unetzoo.config import Config, PredictConfig
from unetzoo.data.plan import Plan
from unetzoo.io import write_text
from unetzoo.runfolder import RunFolder, snapshot_name


def validate_run(run_dir: Path, dataset, val_names: list[str], log) -> dict:
    """Predict the held-out fold with the full inference procedure and the run's reported weights (its
    ``train.select``) into ``validation/`` and evaluate it; returns the summary. With ``train.keep_probabilities``
    each case's class probabilities are saved beside its prediction (``CASE.npz``, float16), so that an ensemble of
    runs can be scored later. With ``train.snapshots`` each snapshot is evaluated too (:func:`validate_snapshots`).
    Then the post-processing is chosen (:func:`postprocess_validation`): its summary is the run's last file."""
    from unetzoo.evaluation import evaluate_folder, link_references
    from unetzoo.inference.predictor import Predictor

    run = RunFolder(run_dir)
    out = run.validation
    config = Config.load(run.config)
    predictor = Predictor(run_dir, options=PredictConfig(device=config.train.device), keep_largest={})
    cases = [dataset.case(n) for n in val_names]
    predictor.predict_cases(
        {c.name: c.images for c in cases}, out, overwrite=True, save_probabilities=config.train.keep_probabilities
    )
    labels_dir = run.validation_labels
    link_references({c.name: c.label for c in cases}, labels_dir)
    # the source files of every validation case, so that `unetzoo report` can draw image/label/prediction overlays
    write_text(
        run.validation_cases,
        json.dumps(
            {c.name: {"image": [str(p.resolve()) for p in c.images], "label": str(c.label.resolve())} for c in cases},
            indent=1,
        ),
    )
    summary = evaluate_folder(
        out, labels_dir, out, label_ids=sorted(k for k in dataset.class_labels if k), ignore_label=dataset.ignore_label
    )
    log.info(
        f"validation: mean Dice {summary['foreground_mean']['Dice']:.4f} over {len(cases)} cases with "
        f"{predictor.checkpoint_path.name}; per class "
        + ", ".join(f"{k}: {v['Dice']:.4f}" for k, v in summary["mean"].items())
    )
    if config.train.snapshots:
        validate_snapshots(run_dir, {c.name: c.images for c in cases}, predictor.checkpoint_path, log)
    postprocess_validation(run_dir, log)
    return summary


def validate_snapshots(run_dir: Path, cases: dict[str, list[Path]], reported: Path, log) -> list[dict]:
    """Predict the held-out ``cases`` with each snapshot of the run (``train.snapshots``) into ``validation/at_N/``
    (raw predictions, no post-processing) and evaluate them there against ``validation/labels/``; write
    ``snapshots.json``, one entry per snapshot and, fraction 1, one for the ``reported`` weights (whose summary is
    ``validation/summary.json``): fraction, checkpoint, optimiser steps, training seconds, summary (relative to the
    run folder). A snapshot that training never reached (it stopped early) is left out, with a warning."""
    from unetzoo.evaluation import evaluate_folder
    from unetzoo.inference.predictor import Predictor

    run = RunFolder(run_dir)
    config = Config.load(run.config)
    plan = Plan.load(run.plan)
    entries = []
    for fraction in sorted(config.train.snapshots):
        name = snapshot_name(fraction)
        path = run.checkpoint_file(name)
        if not path.is_file():
            log.warning(f"no snapshot {name}: training ended before {fraction:.0%} of its budget")
            continue
        options = PredictConfig(device=config.train.device, checkpoint=name)
        out = run.snapshot_validation(fraction)
        Predictor(run_dir, options=options, keep_largest={}).predict_cases(cases, out, overwrite=True)
        summary = evaluate_folder(
            out, run.validation_labels, out, label_ids=plan.label_ids[1:], ignore_label=plan.ignore_label
        )
        entries.append(_snapshot_entry(run, fraction, path, out / "summary.json"))
        log.info(
            f"snapshot {name} (step {entries[-1]['steps']}, {entries[-1]['seconds']:.0f} s of training): mean Dice "
            f"{summary['foreground_mean']['Dice']:.4f} on the held-out fold"
        )
    entries.append(_snapshot_entry(run, 1.0, reported, run.summary))
    write_text(run.snapshots, json.dumps(entries, indent=1))
    return entries


def _snapshot_entry(run: RunFolder, fraction: float, checkpoint: Path, summary: Path) -> dict:
    """One entry of ``snapshots.json``: the steps and training seconds the checkpoint records."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return {
        "fraction": fraction,
        "checkpoint": checkpoint.name,
        "steps": saved["global_step"],
        "seconds": saved.get("training_seconds"),
        "summary": str(summary.relative_to(run.path)),
    }


def postprocess_validation(run_dir: Path, log) -> dict:
    """Choose the run's post-processing on its validation predictions (``postprocessing.json``), write the fold
    with it applied to ``validation/postprocessed/`` and evaluate it there; returns that summary."""
    from unetzoo.evaluation import evaluate_folder, label_files
    from unetzoo.inference.postprocessing import decide_for_run, keep_largest
    from unetzoo.io import label_dtype, read_label_frames, write_array

    run = RunFolder(run_dir)
    predictions, references = label_files(run.validation), label_files(run.validation_labels)
    plan = Plan.load(run.plan)
    classes = plan.label_ids[1:]
    record = decide_for_run(run_dir, predictions, references, classes, plan.ignore_label)
    rules = {int(c): k for c, k in record["keep_largest"].items()}
    out = run.postprocessed
    for case in references:
        frames = read_label_frames(predictions[case])  # 3D+t: every frame on its own
        label = frames[0].array if len(frames) == 1 else np.stack([f.array for f in frames], axis=-1)
        processed = keep_largest(label, rules, frames=len(frames) > 1)
        write_array(
            processed.astype(label_dtype(plan.label_ids)),
            out / predictions[case].name,
            frames[0].affine,
            frames[0].header,
        )
    summary = evaluate_folder(out, run.validation_labels, out, label_ids=classes, ignore_label=plan.ignore_label)
    dice = ", ".join(f"{c}: {v['without']:.4f} -> {v['with']:.4f}" for c, v in record["validation_dice"].items())
    log.info(
        f"post-processing: keep the largest component of classes {sorted(rules) or 'none'} (validation Dice without -> with, per class: {dice}); "
        f"mean Dice with it {summary['foreground_mean']['Dice']:.4f}"
    )
    return summary
