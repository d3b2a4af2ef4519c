"""The network width a time budget affords: narrow ``base_features`` until the budget holds enough steps.

nnU-Net fixes the width (32 features, doubled per stage, capped at 320) and trains 250,000 steps. A budget of
minutes on a CPU holds a few hundred steps of that network, and there the number of steps, not the width, limits
the Dice (measured: the hippocampus ``unet`` reached 0.840 at 500 steps and 0.861 at 1,000; the ACDC 3D
``unet`` 0.394 after 271 steps of 6 s; docs/results/). So under ``--max-minutes`` the run times training steps
of the planned network on its own device and precision (:func:`unetzoo.training.step_timer.measure_train`: the
``unetzoo train`` step on a synthetic batch of the plan's patch and batch) and, while ``STEP_SHARE`` of the budget
affords fewer than ``train.min_steps`` steps, halves ``base_features`` (not below ``MIN_WIDTH``) and times again.

Only for models that take ``base_features`` and only when the user did not set it: ``--set
model_args.base_features=32`` (or ``train.min_steps=0``) keeps nnU-Net's width. The chosen width is logged with
the step times and recorded in the run folder (``budget_width.json``, written before Lightning starts the other DDP
processes, which read it; and ``config.json``'s ``model_args.base_features``, which a resumed run rebuilds). On a GPU the full width passes at the first measurement. The measurement (a few seconds a width) runs
before the budget's clock starts.
"""

from __future__ import annotations

import copy
import inspect
import time

from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.models import model_info

STEP_SHARE = 0.75  # of the budget for optimiser steps; the rest is data loading, validation and checkpoints
MIN_WIDTH = 8
WARMUP_STEPS, TIMED_STEPS = 1, 2


def default_width(model: str) -> int | None:
    """The model's default ``base_features``, or None if it takes no such argument."""
    parameter = inspect.signature(model_info(model).builder).parameters.get("base_features")
    return None if parameter is None else int(parameter.default)


def step_seconds(config: Config, plan: Plan, train_cases: int | None) -> float:
    """Median time of a training step of ``config``'s model on the plan's patch and batch, on its device."""
    from unetzoo.training.step_timer import measure_train

    spec = {
        "config": config.to_dict(),
        "plan": plan.to_dict(),
        "warmup": WARMUP_STEPS,
        "steps": TIMED_STEPS,
        "device": config.train.device,
        "train_cases": train_cases,
        "seed": config.seed,
    }
    return float(measure_train(spec)["train_step_s"])


def budget_width(config: Config, plan: Plan, train_cases: int | None, log, timer=None) -> Config:
    """``config`` with ``model_args.base_features`` set to the widest width (halving from the model's default) whose
    measured step (``timer``, default :func:`step_seconds`) lets ``STEP_SHARE`` of ``train.max_minutes`` hold ``train.min_steps`` steps; ``config``
    itself when there is no time budget, ``min_steps`` is 0, the model takes no width or the user set one."""
    width = default_width(config.model)
    cfg = config.train
    if cfg.max_minutes <= 0 or cfg.min_steps <= 0 or width is None or "base_features" in config.model_args:
        return config
    seconds = cfg.max_minutes * 60 * STEP_SHARE
    start = time.monotonic()
    trial = copy.deepcopy(config)
    while True:
        trial.model_args = {**config.model_args, "base_features": width}
        step = (timer or step_seconds)(trial, plan, train_cases)
        affords = int(seconds // step)
        log.info(
            f"time budget: base_features {width}: a training step takes {step:.2f} s, so {STEP_SHARE:.0%} of "
            f"{cfg.max_minutes:g} min holds {affords} steps (train.min_steps {cfg.min_steps})"
        )
        if affords >= cfg.min_steps or width // 2 < MIN_WIDTH:
            break
        width //= 2
    log.info(
        f"time budget: {config.model} trains with base_features {width} (measured in {time.monotonic() - start:.0f} s; "
        f"--set model_args.base_features=N fixes the width)"
    )
    return trial
