"""One measurement of ``unetzoo benchmark`` in a fresh process: ``python -m unetzoo.benchmark_worker SPEC OUT``.

``SPEC`` is a JSON file ``{"phase": "train" | "infer", "config": {...}, "plan": {...}, "device": "cpu",
"threads": null, "warmup": 2, "steps": 5, "infer_shape": [D, H, W], "infer_repeats": 1, "seed": 0}``;
the result is written as JSON to ``OUT``. Each phase runs in its own process so that no allocation, cache
or memory peak of a previous model or phase is seen by the next one.

Everything goes through the :class:`~unetzoo.methods.base.Method` contract (``build_method``,
``train_patch_size``, ``samples_per_case``, ``training_loss``, ``predict_window``, ``predict``), so a model
registered later is measured with its own training and inference procedure without code here.

Memory
------
* CUDA: ``torch.cuda.max_memory_allocated`` (the caching allocator's peak of live tensors), its peak
  counter reset after the warm-up.
* CPU: the peak resident set size (``VmHWM`` in ``/proc/self/status``) minus the resident size measured
  just before the model was built. The kernel's peak counter is reset after the warm-up by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux >= 4.0), so the figure covers the timed steps only. Where that reset is
  refused (another OS, a locked-down /proc), the peak since the process started is used instead
  (``ru_maxrss``), which then includes the warm-up; the result says which (``memory_method``). Python
  imports happen before the baseline, so they never count.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import sys
import time


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


class MemoryProbe:
    """Peak memory of a phase: CUDA max allocated, or CPU peak RSS above the RSS at construction."""

    def __init__(self, device):
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.method = "cuda max_memory_allocated"
            self.baseline = 0.0
        else:
            self.baseline = _status_mb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.method = "cpu peak RSS (VmHWM, reset after warm-up) - RSS before model build"

    def reset_peak(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.method = "cpu peak RSS since process start (ru_maxrss, warm-up included) - RSS before model build"

    def peak_mb(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = _status_mb("VmHWM") if "VmHWM" in self.method else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        return peak - self.baseline


def synthetic_case(shape, channels: int, num_classes: int, generator, blobs: int = 3):
    """An image ``(C, *shape)`` and a label ``(1, *shape)`` of class ids: ``blobs`` random ellipsoids per
    foreground class (every label holds foreground, so point-sampling methods find boundaries), the image
    their class intensity plus Gaussian noise."""
    import torch

    shape = [int(s) for s in shape]
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    label = torch.zeros(shape, dtype=torch.float32)
    for cls in range(1, num_classes):
        for _ in range(blobs):
            center = [torch.rand((), generator=generator) * s for s in shape]
            radius = [(0.1 + 0.2 * torch.rand((), generator=generator)) * max(s, 2) if s > 1 else 1.0 for s in shape]
            distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radius))
            label[distance <= 1] = cls
        # at least the voxel nearest the last centre, whatever the radii
        label[tuple(min(int(c), s - 1) for c, s in zip(center, shape))] = cls
    image = label[None].repeat(channels, *[1] * len(shape)) / max(num_classes - 1, 1)
    image = image + 0.3 * torch.randn(image.shape, generator=generator)
    return image, label[None]


def _setup(spec: dict):
    import torch

    from unetzoo.config import Config
    from unetzoo.inference import resolve_device

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec.get("seed", 0)))
    device = resolve_device(spec.get("device", "cpu"))
    if device.type == "cuda":
        torch.cuda.init()  # cudnn.benchmark is left at torch's default, as the Lightning trainer leaves it
    return torch, Config.from_dict(spec["config"]), spec["plan"], device


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


AUTOCAST_DTYPES = {"32-true": None, "bf16-mixed": "bfloat16", "16-mixed": "float16"}  # Lightning precision -> autocast


def measure_train(spec: dict) -> dict:
    """Median wall time and peak memory of full training steps (forward, loss, backward, gradient clip,
    optimizer step) on the batch the training loader would give; then parameters and MACs.

    The step runs in the config's ``train.precision`` as Lightning's mixed-precision plugin does: forward
    and loss under ``torch.autocast`` (bf16 or fp16), fp16 with a gradient scaler; 32-true in fp32."""
    torch, config, plan, device = _setup(spec)
    from torch.utils.flop_counter import FlopCounterMode

    from unetzoo.methods import build_method
    from unetzoo.training import make_optimizer

    generator = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    probe = MemoryProbe(device)
    method = build_method(config, plan)
    model = method.model.to(device).train()
    optimizer = make_optimizer(model.parameters(), config.train)
    patch = method.train_patch_size()
    n = config.train.batch_size * method.samples_per_case(config.data.samples_per_case)
    cases = [synthetic_case(patch, len(plan["channel_names"]), plan["num_classes"], generator) for _ in range(n)]
    batch = {"image": torch.stack([c[0] for c in cases]).to(device), "label": torch.stack([c[1] for c in cases]).to(device)}
    del cases
    dtype = AUTOCAST_DTYPES[config.train.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=getattr(torch, dtype or "float32"), enabled=dtype is not None):
            loss = method.training_loss(batch)
        scaler.scale(loss).backward()
        if config.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    for _ in range(int(spec["warmup"])):
        step()
    _sync(torch, device)
    probe.reset_peak()
    times, losses = [], []
    for _ in range(int(spec["steps"])):
        start = time.perf_counter()
        losses.append(step())
        _sync(torch, device)
        times.append(time.perf_counter() - start)
    peak = probe.peak_mb()

    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    window = torch.zeros(1, len(plan["channel_names"]), *method.patch_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        method.predict_window(window)
    return {
        "params": int(params),
        "macs": int(counter.get_total_flops() // 2),
        "train_step_s": statistics.median(times),
        "train_step_times_s": times,
        "train_peak_mem_mb": peak,
        "train_patch": [int(p) for p in patch],
        "train_batch": int(n),
        "train_loss": losses[-1] if losses else None,
        "memory_method": probe.method,
        "model_args": config.model_args,
    }


def measure_infer(spec: dict) -> dict:
    """Wall time and peak memory of ``method.predict`` (sliding windows, mirroring as configured) on one
    whole synthetic volume, after warm-up calls of ``predict_window`` on one batch of windows."""
    torch, config, plan, device = _setup(spec)
    from unetzoo.methods import build_method

    generator = torch.Generator().manual_seed(int(spec.get("seed", 0)) + 1)
    probe = MemoryProbe(device)
    method = build_method(config, plan)
    method.model.to(device).eval()
    shape = [int(s) for s in spec["infer_shape"]]
    image, _ = synthetic_case(shape, len(plan["channel_names"]), plan["num_classes"], generator)
    image = image[None].to(device)
    roi = [min(p, s) if p == 1 else p for p, s in zip(method.patch_size, shape)]
    window = torch.zeros(config.inference.sw_batch_size, image.shape[1], *roi, device=device)
    with torch.no_grad():
        for _ in range(max(1, int(spec["warmup"]))):
            method.predict_window(window)
    del window
    _sync(torch, device)
    probe.reset_peak()
    times = []
    for _ in range(max(1, int(spec.get("infer_repeats", 1)))):
        start = time.perf_counter()
        probs = method.predict(image)
        _sync(torch, device)
        times.append(time.perf_counter() - start)
        if tuple(probs.shape[2:]) != tuple(shape):
            raise RuntimeError(f"predict returned shape {tuple(probs.shape)} for a volume of {tuple(shape)}")
        del probs
    return {
        "infer_s": statistics.median(times),
        "infer_times_s": times,
        "infer_peak_mem_mb": probe.peak_mb(),
        "infer_shape": shape,
        "memory_method": probe.method,
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    import torch

    try:
        result = {"train": measure_train, "infer": measure_infer}[spec["phase"]](spec)
        result["threads"] = torch.get_num_threads()
    except Exception as exc:  # reported to the parent, which names the model and phase
        import traceback

        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    tmp = f"{out_path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
