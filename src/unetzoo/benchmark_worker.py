"""One measurement of ``unetzoo benchmark`` in a fresh process: ``python -m unetzoo.benchmark_worker SPEC OUT``.

``SPEC`` is a JSON file ``{"phase": "train" | "infer", "config": {...}, "plan": {...}, "device": "cpu",
"threads": null, "warmup": 2, "steps": 5, "infer_shape": [D, H, W], "infer_repeats": 1, "seed": 0}``;
the result is written as JSON to ``OUT``. Each phase runs in its own process so that no allocation, cache
or memory peak of a previous model or phase is seen by the next one.

Everything goes through the :class:`~unetzoo.methods.base.Method` contract (``build_method``, ``example_batch``,
``training_loss`` and ``parameter_groups`` inside the training's own Lightning module and Trainer settings,
``predict``), so a model registered later is measured with its own training and inference procedure without code
here.

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


def _setup(spec: dict):
    import torch

    from unetzoo.config import Config
    from unetzoo.data.plan import Plan
    from unetzoo.inference import resolve_device

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec.get("seed", 0)))
    device = resolve_device(spec.get("device", "cpu"))
    if device.type == "cuda":
        torch.cuda.init()  # cudnn.benchmark is left at torch's default, as the Lightning trainer leaves it
    return torch, Config.from_dict(spec["config"]), Plan.from_dict(spec["plan"]), device


def _sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_train(spec: dict) -> dict:
    """Median wall time and peak memory of training steps, then parameters and MACs.

    The steps are those of ``unetzoo train``: the same Lightning module (the method's loss and parameter groups)
    and the same Trainer settings (precision, gradient clipping), fed the method's ``example_batch``; only
    checkpoints, validation and logging are off. A step is timed from the Trainer's batch start to its batch end."""
    torch, config, plan, device = _setup(spec)
    import lightning as L
    from torch.utils.flop_counter import FlopCounterMode

    from unetzoo.methods import build_method
    from unetzoo.training import SegmentationModule, trainer_settings

    warmup, steps = int(spec["warmup"]), int(spec["steps"])
    generator = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    probe = MemoryProbe(device)
    method, config = build_method(config, plan, train_cases=spec.get("train_cases"))
    batches = [method.example_batch(generator) for _ in range(min(warmup + steps, 2))]
    times, losses = [], []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            _sync(torch, device)
            if batch_idx == warmup:
                probe.reset_peak()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            _sync(torch, device)
            if batch_idx >= warmup:
                times.append(time.perf_counter() - self.start)
                losses.append(float(outputs["loss"].detach()))

    module = SegmentationModule(method, config, plan)
    # batch_size=None: the loader hands over each prepared batch as it is
    loader = torch.utils.data.DataLoader([batches[i % len(batches)] for i in range(warmup + steps)], batch_size=None)
    settings = {**trainer_settings(config, method), "devices": 1, "strategy": "auto"}  # one process measures one device
    trainer = L.Trainer(**settings, max_steps=warmup + steps, callbacks=[StepTimer()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader)
    peak = probe.peak_mb()

    model = method.model
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.eval()
    window = torch.zeros(1, plan.in_channels, *method.patch_size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        method.predict_window(window)
    first = batches[0]
    return {
        "params": int(params),
        "macs": int(counter.get_total_flops() // 2),
        "train_step_s": statistics.median(times),
        "train_step_times_s": times,
        "train_peak_mem_mb": peak,
        "train_patch": [int(p) for p in method.train_patch_size()],
        "train_batch": int(next(iter(first.values())).shape[0]),  # samples per step, whatever the batch holds
        "train_loss": losses[-1] if losses else None,
        "memory_method": probe.method,
        "model_args": config.model_args,
    }


def measure_infer(spec: dict) -> dict:
    """Wall time and peak memory of ``method.predict`` (its full procedure: sliding windows and mirroring as
    configured, or whatever the method does) on one whole synthetic volume, after one warm-up prediction of a
    patch-sized volume."""
    torch, config, plan, device = _setup(spec)
    from unetzoo.data.phantoms import synthetic_case
    from unetzoo.methods import build_method, inference_context

    generator = torch.Generator().manual_seed(int(spec.get("seed", 0)) + 1)
    probe = MemoryProbe(device)
    method, config = build_method(config, plan, train_cases=spec.get("train_cases"))
    method.model.to(device).eval()
    shape = [int(s) for s in spec["infer_shape"]]
    image, _ = synthetic_case(shape, plan.in_channels, plan.num_classes, generator)
    image = image[None].to(device)
    warm = [min(p, s) for p, s in zip(method.patch_size, shape)]
    with inference_context(method):
        for _ in range(max(1, int(spec["warmup"]))):
            method.predict(image[(..., *[slice(0, w) for w in warm])])
    _sync(torch, device)
    probe.reset_peak()
    times = []
    for _ in range(max(1, int(spec.get("infer_repeats", 1)))):
        start = time.perf_counter()
        with inference_context(method):
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
