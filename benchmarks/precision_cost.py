"""Cost of a training step of ``unet`` in fp32 and under bf16 autocast on this CPU (what ``--precision auto`` weighs).

One thread, ``unet`` at the hippocampus patch 40x56x40, batch 2, the method's synthetic batch; each step prints its
wall and CPU time. To see what a CPU without native bf16 does, limit oneDNN to AVX2::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/precision_cost.py [--steps 2] [fp32 bf16]
    ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/precision_cost.py
"""

from __future__ import annotations

import argparse
import time

import torch

from unetzoo.config import Config
from unetzoo.device import cpu_native_bf16
from unetzoo.experiments.benchmark import synthetic_plan
from unetzoo.methods import build_method


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        f"native bf16 (torch.ops.mkldnn._is_mkldnn_bf16_supported, which follows ONEDNN_MAX_CPU_ISA): {cpu_native_bf16()}"
    )
    plan = synthetic_plan([1, 40, 56, 40], patch=[40, 56, 40])
    method, _ = build_method(Config(model="unet"), plan)
    batch = method.example_batch(torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(method.model.parameters(), 1e-4)
    for precision in args.precisions:
        for step in range(args.steps):
            wall, cpu = time.perf_counter(), time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = method.training_loss(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            print(
                f"{precision} step {step}: wall {time.perf_counter() - wall:.2f} s, CPU {time.process_time() - cpu:.2f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
