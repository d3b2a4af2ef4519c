"""Time budgets size the network (training/width.py): base_features halves until the budget holds train.min_steps."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import tiny_config
from unetzoo.data.plan import Plan
from unetzoo.training.width import MIN_WIDTH, STEP_SHARE, budget_width, default_width

PLAN = Plan.synthetic([16, 16, 16])
LOG = logging.getLogger("test")


def timer_of(step_by_width: dict[int, float]):
    """A step timer with fixed times per width, recording the widths it was asked for."""
    asked = []

    def timer(config, plan, train_cases):
        asked.append(config.model_args["base_features"])
        return step_by_width[config.model_args["base_features"]]

    return timer, asked


def budgeted(minutes: float, model: str = "unet"):
    config = tiny_config(model)
    config.train.max_minutes = minutes
    return config


def test_the_widest_width_whose_steps_fit_is_chosen():
    """20 minutes, 75 % for steps = 900 s: 32 features at 3 s hold 300 steps, 16 at 0.8 s hold 1,125 >= 1,000."""
    timer, asked = timer_of({32: 3.0, 16: 0.8, 8: 0.4})
    config = budgeted(20)
    chosen = budget_width(config, PLAN, 10, LOG, timer=timer)
    assert STEP_SHARE == 0.75 and config.train.min_steps == 1000
    assert asked == [32, 16] and chosen.model_args["base_features"] == 16
    assert "base_features" not in config.model_args  # the caller's config is not changed


def test_the_width_stops_at_the_floor_and_a_fast_device_keeps_the_default():
    slow, asked = timer_of({32: 60.0, 16: 30.0, 8: 15.0})
    assert budget_width(budgeted(20), PLAN, 10, LOG, timer=slow).model_args["base_features"] == MIN_WIDTH == 8
    assert asked == [32, 16, 8]
    fast, asked = timer_of({32: 0.05})  # a GPU step
    assert budget_width(budgeted(20), PLAN, 10, LOG, timer=fast).model_args["base_features"] == 32 and asked == [32]


@pytest.mark.parametrize("change", ["no budget", "min_steps 0", "width given", "no width argument"])
def test_nothing_is_measured_without_a_budget_or_with_a_width(change):
    config = budgeted(0 if change == "no budget" else 20, model="nisf" if change == "no width argument" else "unet")
    if change == "min_steps 0":
        config.train.min_steps = 0
    if change == "width given":
        config.model_args = {"base_features": 32}
    timer, asked = timer_of({})
    assert budget_width(config, PLAN, 10, LOG, timer=timer) is config and asked == []


def test_default_width_reads_the_builders_signature():
    """Every model built on the nnU-Net-style encoder takes a width (32 features doubled per stage), SegResNet MONAI's
    8; NISF's MLP does not."""
    from unetzoo.models import list_models

    expected = {m: {"nisf": None, "segresnet": 8}.get(m, 32) for m in list_models()}
    assert {m: default_width(m) for m in list_models()} == expected


@pytest.mark.slow
def test_a_time_boxed_run_records_the_measured_width_and_a_resume_keeps_it(organs, tmp_path):
    """The real measurement on the phantom (a min_steps no width reaches: the floor), recorded in config.json; a
    --resume rebuilds that network from the checkpoint without measuring again."""
    from unetzoo.config import Config
    from unetzoo.training.run import train

    config = budgeted(5)
    config.train.min_steps = 10**9
    run = train(organs, tmp_path / "run", config)
    assert Config.load(run / "config.json").model_args["base_features"] == MIN_WIDTH
    assert json.loads((run / "budget_width.json").read_text()) == MIN_WIDTH  # what later DDP processes read
    log = next(run.glob("training_log_*.txt")).read_text()
    assert log.count("time budget: base_features") == 3 and "unet trains with base_features 8" in log
    again = budgeted(5)
    again.train.epochs = 2
    again.train.min_steps = 10**9
    train(organs, run, again, resume=True)
    logs = sorted(run.glob("training_log_*.txt"))
    assert Config.load(run / "config.json").model_args["base_features"] == MIN_WIDTH
    assert sum(path.read_text().count("time budget: base_features") for path in logs) == 3  # not measured again
