"""Training on Lightning's Trainer: the module, the Trainer's settings, one run (``train``), the time budget and the
width it affords, the timed training step and the run's log and progress plot. ``from unetzoo.training import
train`` is the public API."""

from unetzoo.training.run import train

__all__ = ["train"]
