"""Training progress: the per-epoch history plot (``progress.png``) and the timestamped run log.

Mirrors nnU-Net's ``progress.png`` (loss and, where the run validates per epoch, validation Dice per epoch; epoch
time) and
``training_log_<timestamp>.txt`` (every line also printed to the console).
"""

from __future__ import annotations

import io as _io
import logging
import time
from pathlib import Path

from unetzoo.runfolder import RunFolder


def run_logger(run_dir: Path, name: str = "unetzoo.train") -> logging.Logger:
    """A logger writing timestamped lines to ``run_dir/training_log_<timestamp>.txt`` and to the console.

    Under DDP every rank runs the training script; only global rank 0 (Lightning's ``rank_zero_only.rank``,
    read from the launcher's environment) opens the file and prints, so a run has one log as in nnU-Net.
    """
    from lightning.pytorch.utilities import rank_zero_only

    logger = logging.getLogger(f"{name}.{run_dir.resolve()}")
    if not logger.handlers:
        logger.setLevel(logging.INFO)
        logger.propagate = False
        if rank_zero_only.rank != 0:
            logger.addHandler(logging.NullHandler())
            return logger
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
        formatter = logging.Formatter("%(asctime)s: %(message)s", "%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(RunFolder(run_dir).training_log(stamp)), logging.StreamHandler()):
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    return logger


def close_run_logger(run_dir: Path, name: str = "unetzoo.train") -> None:
    """Close the run log of ``run_dir`` (a failed run's files are removed): a later run there opens a new one."""
    logger = logging.getLogger(f"{name}.{run_dir.resolve()}")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def plot_progress(history: list[dict], path: Path, title: str = "") -> None:
    """Three panels: training loss and validation Dice per epoch (the epochs that have one: none where the run has no
    per-epoch validation); epoch time; learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unetzoo.io import write_bytes

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax = axes[0]
    ax.plot(epochs, [h["train_loss"] for h in history], color="tab:blue", label="training loss")
    ax.set_ylabel("loss")
    lines = ax.get_legend_handles_labels()[0]
    validated = [h for h in history if "val_dice" in h]
    if validated:
        twin = ax.twinx()
        twin.plot(
            [h["epoch"] for h in validated],
            [h["val_dice"] for h in validated],
            color="tab:green",
            marker=".",
            label="per-epoch pseudo Dice (mean fg)",
        )
        twin.set_ylabel("Dice")
        twin.set_ylim(0, 1)
        lines += twin.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax.set_title(title)
    axes[1].plot(epochs, [h["epoch_time_s"] for h in history], color="tab:orange")
    axes[1].set_ylabel("epoch time (s)")
    axes[2].plot(epochs, [h["lr"] for h in history], color="tab:red")
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())
