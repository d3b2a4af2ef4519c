"""The Lightning Trainer of a run: device, precision, clipping, checkpoints (atomic: last, best where a per-epoch
validation runs, snapshots), history files and loggers; ``trainer_settings`` is shared with the benchmark so both
run the same step."""

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
from unetzoo.runfolder import BEST, CHECKPOINT_EXT, LAST, RunFolder, snapshot_name
from unetzoo.training.budget import Snapshots, TimeBudget
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


def validates_per_epoch(config: Config) -> bool:
    """Whether the run needs a per-epoch validation signal: to keep its best checkpoint (``train.select=best``), to
    stop early or for the plateau schedule. Without one nothing is validated during training."""
    cfg = config.train
    return cfg.select == "best" or cfg.early_stop > 0 or cfg.scheduler == "plateau"


def build_trainer(config: Config, run_dir: Path, method: Method, budget: TimeBudget | None = None) -> L.Trainer:
    """The run's Trainer. Checkpoints: last, every epoch (unmonitored), so that a --resume loses at most the epoch in
    progress (Lightning's save_last is only written together with a new best); best, the epoch of highest
    pseudo Dice, where the run validates per epoch (:func:`validates_per_epoch`; otherwise no validation runs);
    the snapshots of ``train.snapshots`` (:class:`Snapshots`)."""
    validating = validates_per_epoch(config)
    best = {"filename": BEST, "monitor": "val_dice", "mode": "max"}
    checkpoints = [
        ModelCheckpoint(dirpath=run_dir, save_top_k=1, enable_version_counter=False, **chosen)
        for chosen in ([best] if validating else []) + [{"filename": LAST}]
    ]
    for checkpoint in checkpoints:
        checkpoint.FILE_EXTENSION = CHECKPOINT_EXT
    callbacks = [*checkpoints, HistoryFiles()] + ([budget] if budget is not None else [])
    if config.train.snapshots:
        run = RunFolder(run_dir)
        paths = {f: run.checkpoint_file(snapshot_name(f)) for f in config.train.snapshots}
        callbacks.append(Snapshots(paths, config.train.epochs * method.steps_per_epoch(), budget))
    if config.train.early_stop > 0:
        callbacks.append(EarlyStopping(monitor="val_dice", mode="max", patience=config.train.early_stop))
    return L.Trainer(
        **trainer_settings(config, method),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=run_loggers(run_dir),
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        limit_val_batches=None if validating else 0,
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
