"""One measurement of ``unetzoo benchmark`` in a fresh process: ``python -m unetzoo.experiments.benchmark_worker SPEC OUT``.

``SPEC`` is a JSON file ``{"phase": "train" | "infer", "config": {...}, "plan": {...}, "device": "cpu",
"threads": null, "warmup": 2, "steps": 5, "infer_shape": [D, H, W], "infer_repeats": 1, "seed": 0}``;
the result is written as JSON to ``OUT``. Each phase runs in its own process so that no allocation, cache
or memory peak of a previous model or phase is seen by the next one.

Everything goes through the :class:`~unetzoo.methods.base.Method` contract (``build_method``, ``example_batch``,
``training_loss`` and ``parameter_groups`` inside the training's own Lightning module and Trainer settings,
``predict``), so a model registered later is measured with its own training and inference procedure without code
here.

Memory is measured as :mod:`unetzoo.training.step_timer` describes.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from unetzoo.training.step_timer import MemoryProbe, measure_train, setup, sync


def measure_infer(spec: dict) -> dict:
    """Wall time and peak memory of ``method.predict`` (its full procedure: sliding windows and mirroring as
    configured, or whatever the method does) on one whole synthetic volume, after one warm-up prediction of a
    patch-sized volume."""
    torch, config, plan, device = setup(spec)
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
    sync(torch, device)
    probe.reset_peak()
    times = []
    for _ in range(max(1, int(spec.get("infer_repeats", 1)))):
        start = time.perf_counter()
        with inference_context(method):
            probs = method.predict(image)
        sync(torch, device)
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
