"""Prediction precision: ``auto`` predicts in bf16 only where the run's one-off check after training
(:func:`check_inference_precision`, ``inference_precision.json`` in the run folder) found that bf16 labels agree with
fp32 labels on validation cases and come faster, and only on a device that runs bf16 natively; on any other device
the check is not made and prediction stays fp32 (the training precision: :mod:`unetzoo.device`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from unetzoo.config import PredictConfig
from unetzoo.device import native, resolve_device
from unetzoo.inference.predictor import Predictor
from unetzoo.io import write_text
from unetzoo.runfolder import RunFolder


def label_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the voxels labelled foreground in ``a`` or ``b`` that carry the same label in both (1 when none is)."""
    foreground = (a > 0) | (b > 0)
    return float((a[foreground] == b[foreground]).mean()) if foreground.any() else 1.0


def decide(agreement: float, fp32_s: float, bf16_s: float, min_agreement: float) -> tuple[str, str]:
    """``(choice, reason)``: bf16 when its labels agree with fp32's on at least ``min_agreement`` of the foreground
    voxels of every case checked and it is faster; fp32 otherwise."""
    measured = f"bf16 labels agree with fp32 on {agreement:.4f} of foreground voxels (worst case), {fp32_s:.2f} s -> {bf16_s:.2f} s per case"
    if agreement < min_agreement:
        return "32-true", f"{measured}: below {min_agreement}"
    if bf16_s >= fp32_s:
        return "32-true", f"{measured}: not faster"
    return "bf16-mixed", measured


def check_inference_precision(
    run_dir: str | Path,
    cases: dict[str, list[Path]],
    device_name: str,
    log,
    max_cases: int = 3,
    min_agreement: float = 0.999,
) -> dict:
    """The one-off check after training, written to ``RUN/inference_precision.json`` and logged: on a device with
    native bf16, the first ``max_cases`` validation ``cases`` are predicted in fp32 and in bf16 autocast (each
    precision warmed up on the first case, then timed), and bf16 is chosen by :func:`decide`. Elsewhere bf16 would
    be emulated (slow) and is not measured: the record says so and prediction stays fp32."""
    run_dir, device = Path(run_dir), resolve_device(device_name)
    where = "CUDA GPU" if device.type == "cuda" else "CPU"
    record = {"device": device.type, "native_bf16": native("bf16-mixed", device), "min_agreement": min_agreement}
    chosen = dict(list(sorted(cases.items()))[:max_cases])
    if not record["native_bf16"] or not chosen:
        why = f"no native bf16 on this {where}: bf16 not measured" if chosen else "no validation case to check bf16 on"
        record.update(choice="32-true", reason=why)
    else:
        labels, seconds = {}, {}
        for precision in ("32-true", "bf16-mixed"):
            predictor = Predictor(
                run_dir, options=PredictConfig(device=device_name, precision=precision), keep_largest={}
            )
            predictor.predict_probabilities(next(iter(chosen.values())))  # warm-up
            start = time.perf_counter()
            for name, files in chosen.items():
                labels[precision, name] = predictor.label_map(predictor.predict_probabilities(files))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[precision] = (time.perf_counter() - start) / len(chosen)
        agreement = {name: label_agreement(labels["32-true", name], labels["bf16-mixed", name]) for name in chosen}
        record.update(cases=agreement, fp32_s_per_case=seconds["32-true"], bf16_s_per_case=seconds["bf16-mixed"])
        choice, reason = decide(min(agreement.values()), seconds["32-true"], seconds["bf16-mixed"], min_agreement)
        record.update(choice=choice, reason=reason)
    write_text(RunFolder(run_dir).inference_precision, json.dumps(record, indent=1))
    log.info(f"inference precision: {record['choice']} ({record['reason']})")
    return record
