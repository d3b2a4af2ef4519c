"""The device and the precision a run uses.

``--device auto`` resolves to CUDA when a CUDA device is present, else the CPU. ``--precision auto`` (training)
resolves to

* ``bf16-mixed`` on a CUDA GPU with bf16 (Ampere and later) and on a CPU with native bf16 kernels (oneDNN's
  check ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX-512 BF16 / AMX, or AVX-512 core);
* ``16-mixed`` (fp16 autocast with Lightning's gradient scaler) on an older CUDA GPU;
* ``32-true`` otherwise.

An explicit ``bf16-mixed`` or ``16-mixed`` on a device without native support still runs (the user asked for it)
but logs one warning line: on an AVX2-only CPU bf16 autocast is emulated, and the hippocampus ``unet`` step took
about 2 minutes instead of 1-2 s in fp32. Prediction's precision: :mod:`unetzoo.inference.precision_check`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unetzoo.errors import UnetzooError
from unetzoo.io import read_json
from unetzoo.runfolder import RunFolder

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` (the default): CUDA when a CUDA device is present, else the CPU; ``cpu``; ``cuda`` (an error without one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise UnetzooError("--device cuda requested but no CUDA device is available")
        return torch.device("cuda")
    if name != "cpu":
        raise UnetzooError(f"unknown device {name!r} ({', '.join(DEVICES)})")
    return torch.device("cpu")


def device_line(name: str) -> str:
    """One log line: the device ``name`` resolves to, and why when it was ``auto``."""
    device = resolve_device(name)
    if name != "auto":
        return f"device {device.type}"
    return (
        f"device auto: {device.type} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'no CUDA device'})"
    )


PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
INFERENCE_PRECISIONS = ("auto", "32-true", "bf16-mixed")


def cpu_native_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions and matmuls natively (oneDNN's own check)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_native_fp16() -> bool:
    """Whether this CPU runs fp16 convolutions and matmuls natively (AVX-512 FP16 / AMX-FP16)."""
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def cuda_bf16() -> bool:
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def native(precision: str, device: torch.device) -> bool:
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
        if native(requested, device):
            return requested, f"precision {requested}"
        return requested, (
            f"warning: precision {requested} is emulated on this {where} (no native {requested.split('-')[0]}): training steps can be "
            f"10-100x slower than 32-true (unet, hippocampus patch on an AVX2 CPU: about 2 min instead of 1-2 s); use --precision auto"
        )
    if native("bf16-mixed", device):
        return "bf16-mixed", f"precision auto: bf16-mixed (native bf16 on this {where})"
    if device.type == "cuda":
        return "16-mixed", "precision auto: 16-mixed (this CUDA GPU has no bf16; fp16 with a gradient scaler)"
    return "32-true", "precision auto: 32-true (this CPU has no native bf16)"


def inference_precision(requested: str, device: torch.device, run_dir: str | Path | None = None) -> tuple[str, str]:
    """``(precision, one line)`` of prediction on ``device``: ``32-true`` or ``bf16-mixed`` as requested; ``auto`` gives
    ``bf16-mixed`` only when the run's ``inference_precision.json`` chose it and ``device`` runs bf16 natively."""
    if requested not in INFERENCE_PRECISIONS:
        raise UnetzooError(f"unknown inference precision {requested!r} ({', '.join(INFERENCE_PRECISIONS)})")
    if requested != "auto":
        return requested, f"inference precision {requested}"
    record = read_json(RunFolder(run_dir).inference_precision) if run_dir is not None else None
    if record is None:
        return "32-true", "inference precision auto: 32-true (the run has no bf16 check)"
    if record["choice"] != "bf16-mixed":
        return "32-true", f"inference precision auto: 32-true ({record['reason']})"
    if not native("bf16-mixed", device):
        return "32-true", "inference precision auto: 32-true (the run chose bf16, but this device has no native bf16)"
    return "bf16-mixed", f"inference precision auto: bf16-mixed ({record['reason']})"
