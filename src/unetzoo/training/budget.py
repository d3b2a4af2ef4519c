"""Training budgets and the poly learning-rate schedule over them.

nnU-Net's poly schedule lr x (1 - progress)^0.9 reaches 0 at the end of training, and a run learns much of its
final accuracy in that low-rate end. With an epoch budget progress is ``epoch / epochs``. With a time budget
(``--max-minutes``) stopping at the deadline would cut the schedule off at a high rate (measured: 0.6x the start
after 17 of 40 epochs), so progress is the larger of the epoch fraction and the fraction of the time spent, updated
after every step: a time-boxed run ends at a rate of ~0, as a finished schedule does, and stops at the deadline.

Snapshots (``train.snapshots``, for learning curves) are the weights at fractions of the same budget
(:class:`Snapshots`).
"""

from __future__ import annotations

import io
from pathlib import Path
from time import monotonic

import torch
from lightning.pytorch.callbacks import Callback

from unetzoo.io import write_bytes


def poly_factor(progress: float, exponent: float = 0.9) -> float:
    """nnU-Net's poly factor (1 - progress)^0.9, progress clamped to [0, 1]."""
    return (1 - min(max(progress, 0.0), 1.0)) ** exponent


def poly_lr(epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """The epoch schedule's factor (1 - epoch/epochs)^0.9 (never 0: the last epoch trains at 1/epochs)."""
    return poly_factor(min(epoch, epochs - 1) / epochs, exponent)


class TimeBudget(Callback):
    """Stops training once ``minutes`` of training time are spent and exposes the fraction spent (:attr:`spent`) to the
    learning-rate schedule. The clock (``time.monotonic`` unless another is given) is read at the start and before
    every optimizer step, and rank 0's fraction is broadcast, so every DDP process steps with the same rate and stops at the same
    step. The time spent is saved in checkpoints, so a ``--resume`` continues the budget instead of restarting it."""

    def __init__(self, minutes: float, clock=None):
        self.seconds = float(minutes) * 60
        self.clock = clock or monotonic
        self.spent = 0.0  # fraction of the budget spent, at the end of the last step
        self._before = 0.0  # seconds spent before this process started (a resumed run)
        self._start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self.clock()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # here, not at the batch end: Lightning steps the schedulers before on_train_batch_end
        elapsed = self._before + self.clock() - self._start
        self.spent = float(trainer.strategy.broadcast(min(elapsed / self.seconds, 1.0)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.spent >= 1.0:
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"seconds_spent": self.spent * self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self._before = float(state_dict["seconds_spent"])
        self.spent = min(self._before / self.seconds, 1.0)

    def progress(self, epoch: int, epochs: int) -> float:
        """Schedule progress at ``epoch``: the larger of the epoch fraction and the time fraction spent."""
        return max(min(epoch, epochs - 1) / epochs, self.spent)


class Snapshots(Callback):
    """Saves the model weights when training reaches each fraction of its budget, into ``paths`` (fraction -> file):
    the fraction done is that of its ``steps`` optimiser steps or, under a time ``budget``, the larger of that and
    the fraction of the time spent (the poly schedule's progress). A snapshot is a checkpoint as Lightning writes
    them, weights only (``state_dict``, ``global_step``, ``training_seconds``), written atomically by rank 0. One
    already on disk is not rewritten, so a ``--resume`` that crosses its fraction again keeps the first; fractions
    crossed at one step are saved from that step; one taken after the checkpoint a ``--resume`` starts from is removed
    and taken again.

    ``training_seconds``, the clock's seconds since training started (``time.monotonic`` unless another is given),
    summed over resumes, also goes into the run's other checkpoints, which carry it over a ``--resume``."""

    def __init__(self, paths: dict[float, Path], steps: int, budget: TimeBudget | None = None, clock=None):
        self.paths, self.steps, self.budget = dict(sorted(paths.items())), steps, budget
        self.clock = clock or monotonic
        self._before = 0.0  # seconds trained before this process started (a resumed run)
        self._start = 0.0

    def seconds(self) -> float:
        """Training seconds so far."""
        return self._before + self.clock() - self._start

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        done = trainer.global_step / self.steps
        if self.budget is not None:
            done = max(done, self.budget.spent)
        for fraction, path in self.paths.items():
            if fraction <= done and not path.is_file():
                checkpoint = {
                    "state_dict": pl_module.state_dict(),
                    "epoch": trainer.current_epoch,
                    "global_step": trainer.global_step,
                    "training_seconds": self.seconds(),
                    "fraction": fraction,
                }
                pl_module.on_save_checkpoint(checkpoint)  # the run's config and plan, as in its other checkpoints
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                write_bytes(path, buffer.getbuffer())

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["training_seconds"] = self.seconds()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        """A resumed run: its training seconds so far, and the snapshots written after the checkpoint it resumes
        from removed (the progress they hold is lost with the killed process; the run reaches them again)."""
        self._before = float(checkpoint.get("training_seconds", 0.0))
        if trainer.is_global_zero:
            for path in self.paths.values():
                if path.is_file() and _step(path) > checkpoint.get("global_step", 0):
                    path.unlink()


def _step(path: Path) -> int:
    """The optimiser step a snapshot was taken at."""
    return int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", 0))
