"""Training and prediction precision: ``auto`` picks the fastest one the device runs natively (training) or that
gives fp32's labels (prediction); slow explicit choices are named.

``auto`` (the default) resolves to

* ``bf16-mixed`` on a CUDA GPU with bf16 (Ampere and later) and on a CPU with native bf16 kernels (oneDNN's
  check ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX-512 BF16 / AMX, or AVX-512 core);
* ``16-mixed`` (fp16 autocast with Lightning's gradient scaler) on an older CUDA GPU;
* ``32-true`` otherwise.

An explicit ``bf16-mixed`` or ``16-mixed`` on a device without native support still runs (the user asked for it)
but logs one warning line: on an AVX2-only CPU bf16 autocast is emulated, and the hippocampus ``unet`` step took
about 2 minutes instead of 1-2 s in fp32 (issue 13).

Prediction runs in fp32 unless asked otherwise. ``auto`` (the default, ``inference.precision``) predicts in bf16 only
where the run's one-off check after training (:func:`check_inference_precision`, ``inference_precision.json`` in the
run folder) found that bf16 labels agree with fp32 labels on validation cases and come faster, and only on a device
that runs bf16 natively; on any other device the check is not made and prediction stays fp32.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from unetzoo.errors import UnetzooError

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
INFERENCE_PRECISIONS = ("auto", "32-true", "bf16-mixed")
CHECK_FILE = "inference_precision.json"


def cpu_native_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions and matmuls natively (oneDNN's own check)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_native_fp16() -> bool:
    """Whether this CPU runs fp16 convolutions and matmuls natively (AVX-512 FP16 / AMX-FP16)."""
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def cuda_bf16() -> bool:
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def _native(precision: str, device: torch.device) -> bool:
    if precision == "32-true":
        return True
    if device.type == "cuda":
        return precision == "16-mixed" or cuda_bf16()
    return cpu_native_bf16() if precision == "bf16-mixed" else cpu_native_fp16()


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """``(Lightning precision, one log line)`` for the requested precision on ``device``; unknown names raise."""
    if requested not in PRECISIONS:
        raise UnetzooError(f"unknown precision {requested!r} ({', '.join(PRECISIONS)})")
    where = "CUDA GPU" if device.type == "cuda" else "CPU"
    if requested != "auto":
        if _native(requested, device):
            return requested, f"precision {requested}"
        return requested, (
            f"warning: precision {requested} is emulated on this {where} (no native {requested.split('-')[0]}): training steps can be "
            f"10-100x slower than 32-true (unet, hippocampus patch on an AVX2 CPU: about 2 min instead of 1-2 s); use --precision auto"
        )
    if _native("bf16-mixed", device):
        return "bf16-mixed", f"precision auto: bf16-mixed (native bf16 on this {where})"
    if device.type == "cuda":
        return "16-mixed", "precision auto: 16-mixed (this CUDA GPU has no bf16; fp16 with a gradient scaler)"
    return "32-true", "precision auto: 32-true (this CPU has no native bf16)"


# ---- prediction -------------------------------------------------------------------------------------------
def inference_precision(requested: str, device: torch.device, run_dir: str | Path | None = None) -> tuple[str, str]:
    """``(precision, one line)`` of prediction on ``device``: ``32-true`` or ``bf16-mixed`` as requested; ``auto`` gives
    ``bf16-mixed`` only when the run's ``inference_precision.json`` chose it and ``device`` runs bf16 natively."""
    if requested not in INFERENCE_PRECISIONS:
        raise UnetzooError(f"unknown inference precision {requested!r} ({', '.join(INFERENCE_PRECISIONS)})")
    if requested != "auto":
        return requested, f"inference precision {requested}"
    path = Path(run_dir) / CHECK_FILE if run_dir is not None else None
    record = json.loads(path.read_text()) if path is not None and path.is_file() else None
    if record is None:
        return "32-true", "inference precision auto: 32-true (the run has no bf16 check)"
    if record["choice"] != "bf16-mixed":
        return "32-true", f"inference precision auto: 32-true ({record['reason']})"
    if not _native("bf16-mixed", device):
        return "32-true", "inference precision auto: 32-true (the run chose bf16, but this device has no native bf16)"
    return "bf16-mixed", f"inference precision auto: bf16-mixed ({record['reason']})"


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


def check_inference_precision(run_dir: str | Path, cases: dict[str, list[Path]], device_name: str, log, max_cases: int = 3,
                              min_agreement: float = 0.999) -> dict:
    """The one-off check after training, written to ``RUN/inference_precision.json`` and logged: on a device with
    native bf16, the first ``max_cases`` validation ``cases`` are predicted in fp32 and in bf16 autocast (each
    precision warmed up on the first case, then timed), and bf16 is chosen by :func:`decide`. Elsewhere bf16 would
    be emulated (slow) and is not measured: the record says so and prediction stays fp32."""
    from unetzoo.inference import Predictor, resolve_device
    from unetzoo.io import write_text

    run_dir, device = Path(run_dir), resolve_device(device_name)
    where = "CUDA GPU" if device.type == "cuda" else "CPU"
    record = {"device": device.type, "native_bf16": _native("bf16-mixed", device), "min_agreement": min_agreement}
    chosen = dict(list(sorted(cases.items()))[:max_cases])
    if not record["native_bf16"] or not chosen:
        why = f"no native bf16 on this {where}: bf16 not measured" if chosen else "no validation case to check bf16 on"
        record.update(choice="32-true", reason=why)
    else:
        labels, seconds = {}, {}
        for precision in ("32-true", "bf16-mixed"):
            predictor = Predictor(run_dir, device=device_name, keep_largest={}, precision=precision)
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
    write_text(run_dir / CHECK_FILE, json.dumps(record, indent=1))
    log.info(f"inference precision: {record['choice']} ({record['reason']})")
    return record
