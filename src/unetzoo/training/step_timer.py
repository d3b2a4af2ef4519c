"""The training step as ``unetzoo train`` runs it, timed: median wall time and peak memory of a few steps on a
synthetic batch, then parameters and MACs. The benchmark (:mod:`unetzoo.experiments.benchmark_worker`) and the
width a time budget affords (:mod:`unetzoo.training.width`) both measure through it.

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

import re
import resource
import statistics
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


def setup(spec: dict):
    import torch

    from unetzoo.config import Config
    from unetzoo.data.plan import Plan
    from unetzoo.device import resolve_device

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec.get("seed", 0)))
    device = resolve_device(spec.get("device", "cpu"))
    if device.type == "cuda":
        torch.cuda.init()  # cudnn.benchmark is left at torch's default, as the Lightning trainer leaves it
    return torch, Config.from_dict(spec["config"]), Plan.from_dict(spec["plan"]), device


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_train(spec: dict) -> dict:
    """Median wall time and peak memory of training steps, then parameters and MACs.

    The steps are those of ``unetzoo train``: the same Lightning module (the method's loss and parameter groups)
    and the same Trainer settings (precision, gradient clipping), fed the method's ``example_batch``; only
    checkpoints, validation and logging are off. A step is timed from the Trainer's batch start to its batch end."""
    torch, config, plan, device = setup(spec)
    import lightning as L
    from torch.utils.flop_counter import FlopCounterMode

    from unetzoo.methods import build_method
    from unetzoo.training.module import SegmentationModule
    from unetzoo.training.trainer import trainer_settings

    warmup, steps = int(spec["warmup"]), int(spec["steps"])
    generator = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    probe = MemoryProbe(device)
    method, config = build_method(config, plan, train_cases=spec.get("train_cases"))
    batches = [method.example_batch(generator) for _ in range(min(warmup + steps, 2))]
    times, losses = [], []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            sync(torch, device)
            if batch_idx == warmup:
                probe.reset_peak()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync(torch, device)
            if batch_idx >= warmup:
                times.append(time.perf_counter() - self.start)
                losses.append(float(outputs["loss"].detach()))

    module = SegmentationModule(method, config, plan)
    # batch_size=None: the loader hands over each prepared batch as it is
    loader = torch.utils.data.DataLoader([batches[i % len(batches)] for i in range(warmup + steps)], batch_size=None)
    settings = {**trainer_settings(config, method), "devices": 1, "strategy": "auto"}  # one process measures one device
    trainer = L.Trainer(
        **settings,
        max_steps=warmup + steps,
        callbacks=[StepTimer()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
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
