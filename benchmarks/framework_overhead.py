"""Framework overhead: training steps per second of ``unet`` with unetzoo's Trainer against a plain PyTorch/MONAI loop.

Both arms train the same network (``unet`` at the hippocampus plan: patch, spacing and depth from the data) on
the same cases with the same data pipeline objects (MONAI ``CacheDataset`` with unetzoo's preprocessing, the
method's training transform: 1:2 positive/negative crops and the augmentations, ``list_data_collate``), the same
batch size, loss (the method's ``training_loss``: Dice + CE with deep supervision), optimizer, gradient clipping
and precision (``--precision``, default ``auto``, resolved once for both):

* ``unetzoo``: :class:`unetzoo.training.module.SegmentationModule` under a Lightning ``Trainer`` with the settings of
  ``unetzoo train`` (``trainer_settings``: precision, clipping; progress bar and ``log_every_n_steps=10`` as
  training); the module's own ``train_dataloader``. Validation and checkpoints are off: this compares training
  steps (their per-epoch cost is separate and configurable: ``--set train.val_cases=N``).
* ``plain``: ``for batch in DataLoader(...)``: autocast, loss, ``backward``, ``clip_grad_norm_``, ``step``.

Steps per second are counted over ``--steps`` steps after ``--warmup`` untimed ones, from the start of the first
timed step to the end of the last (the data waits between them included), in wall time and in the CPU time of the
training process (its own work: the step and the framework around it; the loader workers, the same in both arms,
run beside it). On a shared machine the wall time depends on what other jobs take of the cores; the CPU time of a
one-thread process does not, so the ratio is given for both. The arms alternate for ``--rounds`` rounds (unetzoo
first in even rounds, plain first in odd ones); each round starts both from the same initial weights. Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/framework_overhead.py data/hippocampus \\
        [--cases 40] [--steps 40] [--warmup 5] [--rounds 3] [--num-workers 1] [--out benchmarks/results/framework_overhead]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from monai.data import CacheDataset, DataLoader, list_data_collate

from unetzoo.config import Config
from unetzoo.data.datasets import load_dataset
from unetzoo.data.plan import make_plan
from unetzoo.data.transforms import preprocessing
from unetzoo.device import resolve_precision
from unetzoo.methods import build_method
from unetzoo.training.module import PatchDataset, SegmentationModule, _plain, make_optimizer
from unetzoo.training.trainer import trainer_settings


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def rates(start: tuple[float, float], end: tuple[float, float], steps: int) -> tuple[float, float]:
    """(steps per wall second, steps per CPU second of this process)."""
    return steps / (end[0] - start[0]), steps / (end[1] - start[1])


class StepClock(L.Callback):
    """Wall and process CPU time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = clock()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.end = clock()


def unetzoo_arm(config: Config, plan, items: list[dict], initial: dict, warmup: int, steps: int) -> tuple[float, float]:
    method, config = build_method(config, plan, train_cases=len(items))
    method.model.load_state_dict(initial)
    module = SegmentationModule(method, config, plan, items, [])
    clock = StepClock(warmup)
    trainer = L.Trainer(
        **trainer_settings(config, method),
        max_steps=warmup + steps,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )
    trainer.fit(module)
    return rates(clock.start, clock.end, steps)


def plain_arm(
    config: Config, plan, items: list[dict], initial: dict, warmup: int, steps: int, precision: str
) -> tuple[float, float]:
    method, config = build_method(config, plan, train_cases=len(items))
    model = method.model
    model.load_state_dict(initial)
    model.train()
    cfg = config.train
    cases = CacheDataset(items, preprocessing(plan), num_workers=config.data.cache_workers, progress=False)
    dataset = PatchDataset(cases, method.train_transform(), (warmup + steps) * cfg.batch_size)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=config.data.num_workers,
        collate_fn=list_data_collate,
        drop_last=True,
    )
    optimizer = make_optimizer(method.parameter_groups(), cfg)
    parameters = [p for p in model.parameters() if p.requires_grad]
    start = None
    for index, batch in enumerate(loader):
        if index == warmup:
            start = clock()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = method.training_loss(_plain(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
        optimizer.step()
    return rates(start, clock(), steps)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--cases", type=int, default=40, help="training cases (the first N of the dataset)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/framework_overhead"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, torch.device("cpu"))[0]
    if precision not in ("32-true", "bf16-mixed"):
        raise SystemExit(f"the plain loop supports 32-true and bf16-mixed on CPU, not {precision}")
    dataset = load_dataset(args.data)
    cases = dataset.cases[: args.cases]
    config = Config(model="unet")
    config.data.num_workers = args.num_workers
    config.train.batch_size = args.batch_size
    config.train.precision = precision
    config.train.iters_per_epoch = args.warmup + args.steps
    plan = make_plan(dataset, cases, seed=config.seed)
    L.seed_everything(config.seed, verbose=False)
    initial = {
        k: v.clone() for k, v in build_method(config, plan, train_cases=len(cases))[0].model.state_dict().items()
    }
    items = [{**c.as_dict(), "case_index": i} for i, c in enumerate(cases)]
    measured: dict[str, list[tuple[float, float]]] = {"unetzoo": [], "plain": []}
    for round_ in range(args.rounds):
        order = ["unetzoo", "plain"] if round_ % 2 == 0 else ["plain", "unetzoo"]
        for arm in order:
            L.seed_everything(config.seed + round_, verbose=False)
            if arm == "unetzoo":
                rate = unetzoo_arm(config, plan, items, initial, args.warmup, args.steps)
            else:
                rate = plain_arm(config, plan, items, initial, args.warmup, args.steps, precision)
            measured[arm].append(rate)
            print(f"round {round_ + 1} {arm}: {rate[0]:.3f} steps/s wall, {rate[1]:.3f} steps per CPU s", flush=True)
    wall = {arm: [r[0] for r in m] for arm, m in measured.items()}
    cpu = {arm: [r[1] for r in m] for arm, m in measured.items()}
    median = {
        kind: {arm: statistics.median(r) for arm, r in values.items()}
        for kind, values in (("wall", wall), ("cpu", cpu))
    }
    ratio = {kind: m["unetzoo"] / m["plain"] for kind, m in median.items()}
    result = {
        "model": "unet",
        "patch": list(plan.patch_size),
        "batch_size": args.batch_size,
        "precision": precision,
        "cases": len(cases),
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "num_workers": args.num_workers,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "load_average": os.getloadavg()[0],
        "steps_per_wall_s": wall,
        "steps_per_cpu_s": cpu,
        "median": median,
        "ratio": ratio,
    }
    rows = "\n".join(
        f"| {arm} | {kind} | " + " | ".join(f"{r:.3f}" for r in values[arm]) + f" | **{median[kind][arm]:.3f}** |"
        for kind, values in (("wall", wall), ("cpu", cpu))
        for arm in values
    )
    table = (
        f"# Framework overhead: `unet`, hippocampus plan (patch {'x'.join(map(str, plan.patch_size))}, batch {args.batch_size}, {precision})\n\n"
        f"{len(cases)} cases, {args.steps} timed steps after {args.warmup} per arm and round, arms alternating over {args.rounds} rounds; "
        f"{args.num_workers} loader worker(s), {args.threads} torch thread(s); {result['cpu']}, torch {torch.__version__}; "
        f"load average at the end {result['load_average']:.1f} (shared machine).\n\n"
        "steps per second of wall time (wall) and of the training process's CPU time (cpu):\n\n"
        f"| arm | clock | " + " | ".join(f"round {i + 1}" for i in range(args.rounds)) + " | median |\n"
        "|---|---|" + "---:|" * (args.rounds + 1) + "\n" + rows + "\n\n"
        f"unetzoo / plain: **{ratio['cpu']:.2f}x** in CPU time, {ratio['wall']:.2f}x in wall time\n"
    )
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "framework_overhead.md").write_text(table)
    (args.out / "framework_overhead.json").write_text(json.dumps(result, indent=1))
    return result


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "CPU"


if __name__ == "__main__":
    main()
