"""After training: the held-out fold predicted by the full inference procedure, evaluated, and the post-processing
chosen on it (nnU-Net's per-class keep-largest-component choice)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from unetzoo.config import Config, PredictConfig
from unetzoo.data.plan import Plan
from unetzoo.io import write_text
from unetzoo.runfolder import RunFolder


def validate_run(run_dir: Path, dataset, val_names: list[str], log) -> dict:
    """Predict the held-out fold with the full inference procedure into ``validation/`` and evaluate it."""
    from unetzoo.evaluation import evaluate_folder
    from unetzoo.inference.predictor import Predictor

    run = RunFolder(run_dir)
    out = run.validation
    device = Config.load(run.config).train.device
    predictor = Predictor(run_dir, options=PredictConfig(device=device), keep_largest={})
    cases = [dataset.case(n) for n in val_names]
    predictor.predict_cases({c.name: c.images for c in cases}, out, overwrite=True)
    labels_dir = run.validation_labels
    labels_dir.mkdir(exist_ok=True)
    for case in cases:  # evaluate_folder pairs files by name: link the references under the case names
        link = labels_dir / f"{case.name}{dataset.file_ending}"
        if not link.exists():
            os.symlink(case.label.resolve(), link)
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
        f"validation: mean Dice {summary['foreground_mean']['Dice']:.4f} over {len(cases)} cases; per class "
        + ", ".join(f"{k}: {v['Dice']:.4f}" for k, v in summary["mean"].items())
    )
    postprocess_validation(run_dir, log)
    return summary


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
