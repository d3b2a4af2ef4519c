"""The Lightning Trainer of a run: device, precision, clipping, checkpoints (atomic, best and last), history files and
loggers; ``trainer_settings`` is shared with the benchmark so both run the same step."""

from __future__ import annotations

import io
import json
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint

from unetzoo.config import Config
from unetzoo.device import resolve_device, resolve_precision
from unetzoo.io import write_bytes, write_text
from unetzoo.methods import Method
from unetzoo.runfolder import BEST, CHECKPOINT_EXT, LAST, RunFolder
from unetzoo.training.budget import TimeBudget
from unetzoo.training.progress import plot_progress


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are serialised in memory, then written to a temporary file in the run folder and renamed over the
    old one (:func:`unetzoo.io.write_bytes`): a full disk is one line naming the checkpoint, leaves no temporary file
    and keeps the previous checkpoint (``torch.save`` straight to the file reports it as an obscure RuntimeError)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes(path, buffer.getbuffer())


class HistoryFiles(Checkpoint):
    """Writes ``history.json`` and ``progress.png`` after the epoch's checkpoints, so that history.json never lists an
    epoch that no checkpoint holds (a full disk can stop the run between the two). A ``Checkpoint`` for its place
    only: Lightning calls checkpoint callbacks last, in their order, so this one runs after the ModelCheckpoints.

    Written once more when the fit ends: a run killed after its last epoch's checkpoint but before these files has, on
    ``--resume``, no epoch left to train, and would otherwise keep the history of one epoch fewer than it trained."""

    def on_train_epoch_end(self, trainer, module):
        if trainer.is_global_zero and module.run_dir is not None and module.history:
            run = RunFolder(module.run_dir)
            write_text(run.history, json.dumps(module.history, indent=1))
            plot_progress(module.history, run.progress_plot, title=f"{module.config.model}, fold {module.config.fold}")

    on_fit_end = on_train_epoch_end


def trainer_settings(config: Config, method: Method) -> dict:
    """The Trainer arguments that decide what a training step computes (device, precision, clipping, autograd in
    validation); shared by ``train`` and the benchmark so both run the same step. ``auto`` precision is resolved
    here (see :mod:`unetzoo.device`)."""
    cfg = config.train
    device = resolve_device(cfg.device)
    return {
        "accelerator": {"cpu": "cpu", "cuda": "gpu"}[device.type],
        "devices": cfg.devices,
        "strategy": "ddp" if cfg.devices > 1 else "auto",
        "precision": resolve_precision(cfg.precision, device)[0],
        "max_epochs": cfg.epochs,
        "gradient_clip_val": cfg.grad_clip or None,
        "enable_model_summary": False,
        "inference_mode": not method.grad_at_inference,  # a method that fits at test time needs autograd in validation
    }


def build_trainer(config: Config, run_dir: Path, method: Method, budget: TimeBudget | None = None) -> L.Trainer:
    # best: the epoch of highest validation Dice; last: every epoch (unmonitored), so that a --resume loses at most
    # the epoch in progress (Lightning's save_last is only written together with a new best)
    best = ModelCheckpoint(
        dirpath=run_dir, filename=BEST, monitor="val_dice", mode="max", save_top_k=1, enable_version_counter=False
    )
    last = ModelCheckpoint(dirpath=run_dir, filename=LAST, save_top_k=1, enable_version_counter=False)
    for checkpoint in (best, last):
        checkpoint.FILE_EXTENSION = CHECKPOINT_EXT
    return L.Trainer(
        **trainer_settings(config, method),
        callbacks=[best, last, HistoryFiles()]
        + ([budget] if budget is not None else [])
        + (
            [EarlyStopping(monitor="val_dice", mode="max", patience=config.train.early_stop)]
            if config.train.early_stop > 0
            else []
        ),
        plugins=[AtomicCheckpointIO()],
        logger=run_loggers(run_dir),
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )


def run_loggers(run_dir: Path) -> list:
    """Lightning's CSVLogger (``logs/csv/version_N/metrics.csv``) and, when tensorboard is installed, its
    TensorBoardLogger (``logs/tensorboard/version_N``); a resumed run adds a version instead of overwriting."""
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    logs = RunFolder(run_dir).logs
    loggers = [CSVLogger(logs, name="csv")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(logs, name="tensorboard", default_hp_metric=False))
    return loggers
