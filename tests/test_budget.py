"""Time budgets that anneal: the poly schedule over the fraction of --max-minutes spent, with an injected clock."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conftest import tiny_config
from unetzoo.training.budget import TimeBudget, poly_factor, poly_lr


class FakeClock:
    """Returns 0, then ``step`` seconds more at every call."""

    def __init__(self, step: float):
        self.now, self.step = -step, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _trainer():
    return SimpleNamespace(strategy=SimpleNamespace(broadcast=lambda value: value), should_stop=False)


def test_poly_factor_is_nnunets_and_reaches_zero():
    """nnU-Net's PolyLRScheduler: lr * (1 - epoch / max_epochs)^0.9."""
    assert poly_factor(0.0) == 1.0 and poly_factor(1.0) == 0.0 and poly_factor(1.5) == 0.0
    assert poly_factor(0.5) == pytest.approx(0.5**0.9)
    assert poly_lr(3, 10) == pytest.approx(0.7**0.9) and poly_lr(12, 10) == pytest.approx(0.1**0.9)


def test_time_budget_spends_stops_and_resumes():
    budget = TimeBudget(minutes=1, clock=FakeClock(15.0))
    trainer = _trainer()
    budget.on_train_start(trainer, None)  # clock 0
    spent = []
    for step in range(4):
        budget.on_before_optimizer_step(trainer, None, None)  # clock 15, 30, 45, 60
        spent.append(budget.spent)
        budget.on_train_batch_end(trainer, None, None, None, step)
    assert spent == [0.25, 0.5, 0.75, 1.0] and trainer.should_stop
    assert poly_factor(budget.progress(epoch=1, epochs=100)) == 0.0  # the learning rate is 0 at the budget
    # a resumed run continues the budget: 30 s were spent before it
    resumed = TimeBudget(minutes=1, clock=FakeClock(10.0))
    resumed.load_state_dict({"seconds_spent": 30.0})
    assert resumed.spent == 0.5
    resumed.on_train_start(trainer, None)
    resumed.on_before_optimizer_step(trainer, None, None)
    assert resumed.spent == pytest.approx(40 / 60) and resumed.state_dict() == {"seconds_spent": pytest.approx(40.0)}
    # the epoch fraction still counts when it is the larger one
    assert TimeBudget(minutes=1).progress(epoch=5, epochs=10) == 0.5


@pytest.mark.slow
def test_time_boxed_training_anneals_to_zero_and_stops_at_the_budget(organs, tmp_path, monkeypatch):
    """--max-minutes 1 with a clock that advances 6 s per step: training stops after 10 steps (epoch 3 of a 100-epoch
    schedule), with the learning rate at 0; each epoch starts at lr * (1 - time spent / budget)^0.9."""
    from unetzoo.training.run import train

    monkeypatch.setattr("unetzoo.training.budget.monotonic", FakeClock(6.0))
    config = tiny_config(epochs=100)
    config.train.max_minutes = 1.0
    config.train.min_steps = 0  # the width the budget affords is test_budget_width's
    run = train(organs, tmp_path / "run", config)
    history = json.loads((run / "history.json").read_text())
    lr = config.train.lr
    assert [h["lr"] for h in history[:3]] == pytest.approx([lr, lr * 0.7**0.9, lr * 0.4**0.9])
    log = next(run.glob("training_log_*.txt")).read_text()
    assert len(history) == 4 and "time budget of 1 min spent after 10 steps: learning rate 0.00e+00" in log
    assert [h["steps"] for h in history] == [3, 6, 9, 10]  # the last epoch cut short by the budget
