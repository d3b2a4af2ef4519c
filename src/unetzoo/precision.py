"""Training precision: ``auto`` picks the fastest one the device runs natively; slow explicit choices are named.

``auto`` (the default) resolves to

* ``bf16-mixed`` on a CUDA GPU with bf16 (Ampere and later) and on a CPU with native bf16 kernels (oneDNN's
  check ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX-512 BF16 / AMX, or AVX-512 core);
* ``16-mixed`` (fp16 autocast with Lightning's gradient scaler) on an older CUDA GPU;
* ``32-true`` otherwise.

An explicit ``bf16-mixed`` or ``16-mixed`` on a device without native support still runs (the user asked for it)
but logs one warning line: on an AVX2-only CPU bf16 autocast is emulated, and the hippocampus ``unet`` step took
about 2 minutes instead of 1-2 s in fp32 (issue 13).
"""

from __future__ import annotations

import torch

from unetzoo.errors import UnetzooError

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")


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
