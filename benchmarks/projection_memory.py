"""Memory at scale: whole-volume random-2.5d-unet against whole-volume 3D unet, one phase per fresh
worker process (``unetzoo.experiments.benchmark``), fp32, batch 1, one thread, 0 warm-up steps and 1 timed step.

    python benchmarks/projection_memory.py JOB [JOB ...]      (JOB: a key of JOBS)

Each job writes ``benchmarks/results/projection_memory/JOB/benchmark.{json,csv,png}`` (the repository keeps json and csv). The runs in docs/results/projection-memory.md capped the
address space (``ulimit -v``: 12 GB for ``full_unet_train``, 10 GB for ``cube256_unet_infer``, 16 GB otherwise)
so that a job that does not fit fails itself instead of pushing other jobs on the shared machine out of memory.
"""

import sys
import time
from pathlib import Path

from unetzoo.config import Config
from unetzoo.experiments.benchmark import benchmark_models, format_table, synthetic_plan, write_outputs

OUT = Path(__file__).resolve().parent / "results" / "projection_memory"
JOBS = {  # name: (models, volume, phases, timeout per phase in s)
    "full_random": (["random-2.5d-unet"], [96, 288, 224], ("train", "infer"), 1200),
    "eighth_both": (["unet", "random-2.5d-unet"], [48, 144, 112], ("train", "infer"), 1200),
    "full_unet_infer": (["unet"], [96, 288, 224], ("infer",), 1500),
    "full_unet_train": (["unet"], [96, 288, 224], ("train",), 900),
    "cube256_random": (["random-2.5d-unet"], [256, 256, 256], ("infer",), 900),
    "cube256_random_train": (["random-2.5d-unet"], [256, 256, 256], ("train",), 600),
    "full_random_train_repeat": (["random-2.5d-unet"], [96, 288, 224], ("train",), 600),
    "cube256_unet_infer": (["unet"], [256, 256, 256], ("infer",), 900),
}


def run(name: str) -> None:
    models, shape, phases, timeout = JOBS[name]
    plan = synthetic_plan([1, *shape], classes=2, patch=list(shape))  # the whole volume is the patch: no sliding window
    config = Config()
    config.train.precision = "32-true"
    config.train.batch_size = 1
    start = time.time()
    result = benchmark_models(
        models,
        plan,
        config,
        device="cpu",
        warmup=0,
        steps=1,
        threads=1,
        timeout=timeout,
        patch_given=True,
        phases=phases,
    )
    write_outputs(result, OUT / name)
    print(f"== {name} ({time.time() - start:.0f} s)\n" + format_table(result), flush=True)


if __name__ == "__main__":
    for job in sys.argv[1:]:
        run(job)
