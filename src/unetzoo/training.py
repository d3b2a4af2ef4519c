"""Training on Lightning's Trainer: one run folder per (dataset, model, fold), resumable, DDP-ready.

Run folder (nnU-Net's outputs, so its users find their way): ``config.json`` (resolved), ``plan.json``,
``splits.json``, ``budget_width.json`` (under ``--max-minutes``: the width the budget affords), ``checkpoint_best.pt``, ``checkpoint_last.pt`` (both written to a temporary name and
renamed), ``training_log_<timestamp>.txt``, ``progress.png``, ``history.json``, Lightning's ``logs/`` (CSV, and
TensorBoard when installed) and, after training,
``validation/`` with the held-out fold predicted by the full inference procedure and ``summary.json``, then
``postprocessing.json`` (nnU-Net's per-class keep-largest-component choice on that fold) and
``validation/postprocessed/`` (the fold with that choice applied, and its ``summary.json``).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from monai.data import DataLoader, MetaTensor

from unetzoo.budget import TimeBudget, poly_factor, poly_lr
from unetzoo.budget_width import budget_width
from unetzoo.config import Config
from unetzoo.data.cache import cache_root, preprocessed_cases
from unetzoo.data.datasets import load_dataset
from unetzoo.data.plan import Plan, make_plan, verify_against_plan
from unetzoo.data.splits import fold_split, splits_for
from unetzoo.data.val_patches import spread, validation_patches
from unetzoo.errors import UnetzooError, file_error
from unetzoo.inference import device_line, resolve_device
from unetzoo.io import output_folder, remove_leftovers, write_bytes, write_text
from unetzoo.methods import Method, build_method, method_class
from unetzoo.precision import check_inference_precision, resolve_precision
from unetzoo.progress import close_run_logger, plot_progress, run_logger

BEST, LAST = "checkpoint_best", "checkpoint_last"
CHECKPOINT_EXT = ".pt"


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
    only: Lightning calls checkpoint callbacks last, in their order, so this one runs after the ModelCheckpoints."""

    def on_train_epoch_end(self, trainer, module):
        if trainer.is_global_zero and module.run_dir is not None and module.history:
            write_text(module.run_dir / "history.json", json.dumps(module.history, indent=1))
            plot_progress(module.history, module.run_dir / "progress.png", title=f"{module.config.model}, fold {module.config.fold}")


class PatchDataset(torch.utils.data.Dataset):
    """``length`` random training samples drawn from cached, preprocessed cases (an "epoch" of iterations).

    Each draw takes a case at random (torch's generator: seeded by ``seed_everything``, per worker by Lightning),
    as nnU-Net does, so that an epoch of fewer draws than cases still sees cases from the whole list.
    """

    def __init__(self, cases: list[dict], transform, length: int):
        self.cases, self.transform, self.length = cases, transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.transform(self.cases[int(torch.randint(len(self.cases), ()))])


def _plain(batch: dict) -> dict:
    return {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in batch.items()}


def make_optimizer(parameters, cfg) -> torch.optim.Optimizer:
    """The optimizer of ``config.train`` (AdamW, SGD with Nesterov momentum, or Adam); shared with the benchmark."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=cfg.lr)
    raise UnetzooError(f"unknown optimizer {cfg.optimizer!r} (adamw, sgd or adam)")


class SegmentationModule(L.LightningModule):
    """Wraps a :class:`Method`: training steps give its loss, the optimizer takes its parameter groups, the
    per-epoch validation reports nnU-Net's pseudo Dice (global TP/FP/FN per class) over ``train.val_patches`` fixed
    validation patches (:mod:`unetzoo.data.val_patches`; 0: whole validation cases), predicted by the method's
    :meth:`Method.validation_predict`. Without ``run_dir`` (the benchmark) nothing is written. With a ``budget`` the poly
    schedule runs on its time spent (:mod:`unetzoo.budget`)."""

    def __init__(self, method: Method, config: Config, plan: Plan, train_items: list[dict] = (), val_items: list[dict] = (),
                 run_dir: Path | None = None, budget: TimeBudget | None = None):
        super().__init__()
        self.method, self.model = method, method.model
        self.config, self.plan, self.run_dir, self.budget = config, plan, run_dir, budget
        self.train_items, self.val_items = list(train_items), list(val_items)
        self.history: list[dict] = []
        self._loss_sum, self._loss_count, self._epoch_start, self._epoch_lr = 0.0, 0, time.time(), 0.0
        self._counts = None
        self.log_file = None

    # ---- data -------------------------------------------------------------------------------------
    def _cached(self, items):
        """The preprocessed cases, in memory, from the disk cache of this dataset and plan (computed once)."""
        return preprocessed_cases(items, self.plan, cache_root(self.config.data.cache_dir), self.config.data.cache_workers)

    def train_dataloader(self):
        cfg = self.config
        # each draw yields the method's samples; the loader batches draws so a step sees batch_size draws
        length = cfg.train.iters_per_epoch * cfg.train.batch_size * self.trainer.world_size
        dataset = PatchDataset(self._cached(self.train_items), self.method.train_transform(), length)
        return DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            shuffle=True,
            num_workers=cfg.data.num_workers,
            collate_fn=self.method.collate,
            persistent_workers=cfg.data.num_workers > 0,
            drop_last=True,
        )

    def val_dataloader(self):
        cfg = self.config
        limit = cfg.train.val_cases  # the first N validation cases (3D+t: with all their frames)
        items = [item for item in self.val_items if not limit or item["case_index"] < limit]
        if cfg.train.val_patches == 0:  # whole cases
            return DataLoader(self._cached(items), batch_size=1, num_workers=0)
        positive, negative = cfg.data.pos_neg_ratio
        count = min(cfg.train.val_patches, self.method.max_validation_patches or cfg.train.val_patches)
        chosen = self._cached(spread(items, count))
        patches = validation_patches(chosen, self.plan.patch_size, count, cfg.seed, positive / (positive + negative))
        return DataLoader(patches, batch_size=1, num_workers=0)

    # ---- steps ------------------------------------------------------------------------------------
    def on_train_start(self):
        # written here, after a resumed checkpoint has been restored: a --resume that fails leaves config.json as it was
        if self.run_dir is not None and self.trainer.is_global_zero:
            self.config.save(self.run_dir / "config.json")

    def on_train_epoch_start(self):
        self._loss_sum, self._loss_count, self._epoch_start = 0.0, 0, time.time()
        self._epoch_lr = self.optimizers().param_groups[0]["lr"]  # the scheduler steps before validation ends
        self.method.start_epoch(self.current_epoch)

    def training_step(self, batch, batch_idx):
        loss = self.method.training_loss(_plain(batch))
        if not torch.isfinite(loss):
            raise UnetzooError(f"training diverged: loss is {loss.item()} at epoch {self.current_epoch}, step {batch_idx}; lower --lr")
        self._loss_sum += float(loss.detach())
        self._loss_count += 1
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=self.config.train.batch_size)
        return loss

    def on_validation_epoch_start(self):
        self._counts = torch.zeros(3, self.plan.num_classes, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        batch = _plain(batch)
        prediction = self.method.validation_predict(batch["image"]).argmax(1)
        label = batch["label"][:, 0].long()
        for c in range(1, self.plan.num_classes):
            p, r = prediction == c, label == c
            self._counts[0, c] += (p & r).sum()
            self._counts[1, c] += (p & ~r).sum()
            self._counts[2, c] += (~p & r).sum()

    def on_validation_epoch_end(self):
        counts = self._counts
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        tp, fp, fn = counts[:, 1:]
        dice = (2 * tp / (2 * tp + fp + fn).clamp_min(1)).tolist()
        mean_dice = float(np.mean(dice)) if dice else 0.0
        self.log("val_dice", mean_dice, prog_bar=True, sync_dist=False)
        if self.trainer.sanity_checking or self.run_dir is None:
            return
        loss_sum = torch.tensor([self._loss_sum, self._loss_count], dtype=torch.float64, device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(loss_sum)
        record = {
            "epoch": self.current_epoch,
            "train_loss": float(loss_sum[0] / max(loss_sum[1], 1)),
            "val_dice": mean_dice,
            "val_dice_per_class": dict(zip(map(str, self.plan.label_ids[1:]), dice)),
            "epoch_time_s": time.time() - self._epoch_start,
            "lr": self._epoch_lr,
            "steps": self.trainer.global_step,  # optimiser steps so far: a time budget can end an epoch early
        }
        self.history.append(record)
        self.log_dict({"train_loss": record["train_loss"], "lr": record["lr"],
                       **{f"val_dice_{name}": d for name, d in record["val_dice_per_class"].items()}}, sync_dist=False)
        if self.trainer.is_global_zero:
            best = max(h["val_dice"] for h in self.history)
            per_class = ", ".join(f"{d:.4f}" for d in dice)
            log = run_logger(self.run_dir)
            log.info(
                f"epoch {record['epoch']}: train_loss {record['train_loss']:.4f}  pseudo Dice [{per_class}]  "
                f"epoch time {record['epoch_time_s']:.1f} s  lr {record['lr']:.2e}" + ("  (new best)" if best == mean_dice else "")
            )

    # ---- optimisation and checkpoint state ---------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.config.train
        optimizer = make_optimizer(self.method.parameter_groups(), cfg)
        if cfg.scheduler == "constant":
            return optimizer
        if cfg.scheduler == "plateau":  # random-2.5d-unet.md Sec. 4: halve after 3 epochs without improvement
            # torch halves once more than ``patience`` epochs are flat (Keras: ``patience``), so 2 = the 3rd flat epoch
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": "val_dice"}}
        if cfg.scheduler != "poly":
            raise UnetzooError(f"unknown scheduler {cfg.scheduler!r} (poly, constant or plateau)")
        if self.budget is None:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: poly_lr(epoch, cfg.epochs))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        # a time budget: after every step, on the larger of the epoch and the time fractions spent
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: poly_factor(self.budget.progress(self.current_epoch, cfg.epochs)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["unetzoo"] = {"config": self.config.to_dict(), "plan": self.plan.to_dict(), "history": self.history}

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint.get("unetzoo", {}).get("history", []))


def _load_or_make(path: Path, make):
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    write_text(path, json.dumps(value, indent=2))
    return value


def train(data_dir: str | Path, run_dir: str | Path, config: Config, resume: bool = False) -> Path:
    """Train ``config.model`` on fold ``config.fold`` of the dataset in ``data_dir``; returns the run folder.

    ``fold="all"`` trains on every case (nnU-Net's final-model fold): no ``splits.json``, no held-out validation.
    Otherwise the folds are ``data.splits_file`` (nnU-Net's ``splits_final.json``) or made over the subjects of
    ``data.group_by`` (:mod:`unetzoo.data.splits`), and saved as ``splits.json``.

    With ``resume`` the run continues from ``checkpoint_last.pt`` (weights, optimizer, scheduler, epoch);
    ``splits.json`` and ``plan.json`` of an existing run folder are reused, never recomputed. A run that fails before
    its first checkpoint removes what it wrote (:func:`_after_failure`). ``config.json`` records the device and the
    precision the run resolved (``auto`` picks one, see :mod:`unetzoo.precision`).
    """
    config.validate()
    run_dir = Path(run_dir)
    last = run_dir / f"{LAST}{CHECKPOINT_EXT}"
    if resume and not last.is_file():
        raise UnetzooError(f"{last}: no checkpoint to resume from")
    if not resume and last.is_file():
        raise UnetzooError(f"{run_dir}: already holds a trained run; pass --resume to continue it or choose another --out")
    before = set(run_dir.iterdir()) if run_dir.is_dir() else None
    try:
        return _train(data_dir, run_dir, config, resume)
    except BaseException as exc:
        if rank_zero_only.rank == 0:
            _after_failure(run_dir, before, exc)
        raise


def _after_failure(run_dir: Path, before: set[Path] | None, exc: BaseException) -> None:
    """A run that failed before its first checkpoint leaves nothing a later ``--resume`` or ``report`` would take for
    a run: what it made is removed (the folder too, if it made it). One with a checkpoint stays, resumable, and its
    log says why it stopped."""
    if not run_dir.is_dir():
        return
    if any(run_dir.glob(f"checkpoint_*{CHECKPOINT_EXT}")):
        reason = str(exc) if isinstance(exc, UnetzooError) else f"{type(exc).__name__} {exc}".strip()
        run_logger(run_dir).error(f"training stopped: {reason}; `--resume` continues from the last checkpoint")
        return
    close_run_logger(run_dir)
    for path in [run_dir] if before is None else set(run_dir.iterdir()) - before:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _train(data_dir, run_dir: Path, config: Config, resume: bool) -> Path:
    last = run_dir / f"{LAST}{CHECKPOINT_EXT}"
    output_folder(run_dir)
    log = run_logger(run_dir)
    if rank_zero_only.rank == 0:
        for leftover in remove_leftovers(run_dir):
            log.info(f"removed {leftover.name}, left by an interrupted write")
    dataset = load_dataset(data_dir)
    names = [c.name for c in dataset.cases]
    if config.fold == "all":  # nnU-Net's fold "all": every case trains; pseudo Dice is on training cases
        split = {"train": sorted(names), "val": sorted(names)}
    else:
        splits_path = run_dir / "splits.json"
        source = splits_path if splits_path.is_file() else config.data.splits_file or "the splits"
        split = fold_split(_load_or_make(splits_path, lambda: splits_for(names, config.data, config.seed)), config.fold, str(source))
    train_names, calibration_names = _calibration_split(split["train"], config) if config.fold != "all" else (split["train"], [])
    log.info(f"dataset {dataset.root} ({dataset.layout} layout): {len(names)} cases; fold {config.fold}: {len(split['train'])} training, {len(split['val'])} validation")
    if calibration_names:
        log.info(f"{len(calibration_names)} of the training cases kept out of training to calibrate {config.model}'s inference settings: {', '.join(calibration_names)}")
    plan_path = run_dir / "plan.json"
    if plan_path.is_file():
        plan = Plan.load(plan_path)
        verify_against_plan(dataset, plan, plan_path)
    else:
        whole = method_class(config.model).whole_volumes
        plan = make_plan(dataset, dataset.cases, config.data.patch_size, config.data.target_spacing, config.seed, cap_patch=not whole,
                         device=resolve_device(config.train.device).type)
        plan.save(plan_path)
    log.info(plan.describe())
    saved = Config.load(run_dir / "config.json") if resume and (run_dir / "config.json").is_file() else None
    if saved is None:  # rank 0 measures; the DDP processes Lightning starts later read its choice, as they read plan.json
        width = _load_or_make(run_dir / "budget_width.json",
                              lambda: budget_width(config, plan, len(train_names), log).model_args.get("base_features"))
    else:  # the width a time budget chose is the checkpoint's
        width = saved.model_args.get("base_features")
    if width is not None:
        config.model_args = {"base_features": width, **config.model_args}
    L.seed_everything(config.seed, workers=True, verbose=False)
    method, config = build_method(config, plan, train_cases=len(train_names))
    config.data.patch_size = plan.patch_size
    if saved is not None:
        _check_resume(saved, config, run_dir / "config.json", log)
    n_params = sum(p.numel() for p in method.model.parameters() if p.requires_grad)
    log.info(f"model {config.model}: {n_params:,} parameters, patch {plan.patch_size}, spacing {plan.target_spacing}, args {config.model_args}")
    train_items, val_items = dataset.frame_items(train_names), dataset.frame_items(split["val"])
    if len(train_items) + len(val_items) > len(train_names) + len(split["val"]):
        log.info(f"3D+t cases: {len(train_items)} training and {len(val_items)} validation frames")
    device = resolve_device(config.train.device)
    precision, precision_line = resolve_precision(config.train.precision, device)
    log.info(f"{device_line(config.train.device)}; {precision_line}")
    config.train.device, config.train.precision = device.type, precision  # config.json records what ran, not "auto"
    budget = TimeBudget(config.train.max_minutes) if config.train.max_minutes > 0 else None
    module = SegmentationModule(method, config, plan, train_items, val_items, run_dir, budget)
    trainer = _trainer(config, run_dir, method, budget)
    trainer.fit(module, ckpt_path=str(last) if resume else None)
    if trainer.is_global_zero:
        if budget is not None and budget.spent >= 1:
            log.info(f"time budget of {config.train.max_minutes:g} min spent after {trainer.global_step} steps: "
                     f"learning rate {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        log.info("training done")
        if config.fold == "all":
            log.info("fold all: no held-out cases, so no validation/ folder (evaluate a separate test set with predict + evaluate)")
        else:
            _calibrate(module, dataset.frame_items(calibration_names), run_dir, log)
            validate_run(run_dir, dataset, split["val"], log)
            check_inference_precision(run_dir, {n: dataset.case(n).images for n in split["val"]}, config.train.device, log)
    return run_dir


def _check_resume(saved: Config, config: Config, path: Path, log) -> None:
    """What a resumed run may change: not the network (the checkpoint would not fit) nor the fold; a new number of
    epochs is allowed, but the poly schedule is then recomputed over it, which the log says."""
    for name in ("model", "model_args", "fold"):
        if getattr(saved, name) != getattr(config, name):
            raise file_error(path, f"--resume cannot change {name} ({getattr(saved, name)!r} -> {getattr(config, name)!r}); train into a new run folder")
    if saved.train.epochs != config.train.epochs and config.train.scheduler == "poly":
        log.warning(f"resuming with {config.train.epochs} epochs instead of {saved.train.epochs}: the poly learning-rate schedule is "
                    f"recomputed over {config.train.epochs} epochs, so the rate changes from the next epoch on")


def _calibration_split(names: list[str], config: Config) -> tuple[list[str], list[str]]:
    """The fold's training cases without those the method keeps out of training to calibrate its inference
    settings (:meth:`Method.calibration_subjects`), and those cases: drawn with ``config.seed``, so that a resumed
    run keeps out the same ones. The validation fold stays whole and untouched by the calibration."""
    count = method_class(config.model).calibration_subjects(config.method_args)
    if count <= 0:
        return list(names), []
    if count >= len(names):
        raise UnetzooError(f"{config.model}: {count} training cases kept out for calibration (method_args) leave none of fold {config.fold}'s {len(names)} to train on")
    held = set(random.Random(config.seed).sample(sorted(names), count))
    return [n for n in names if n not in held], sorted(held)


def _calibrate(module: SegmentationModule, items: list[dict], run_dir: Path, log) -> None:
    """Let the method choose its inference settings, with the best weights, on the calibration cases ``items``
    (kept out of training; see :func:`_calibration_split`), and record them in ``config.json`` (e.g. NISF's number
    of latent-fitting steps)."""
    from unetzoo.inference import load_weights

    if type(module.method).calibrate is Method.calibrate or not items:  # the method chooses nothing
        return
    best = run_dir / f"{BEST}{CHECKPOINT_EXT}"
    load_weights(module.method.model, best if best.is_file() else run_dir / f"{LAST}{CHECKPOINT_EXT}")
    cases = module._cached(items)
    updates = module.method.calibrate([cases[i] for i in range(len(cases))], log, run_dir)
    if updates:
        module.config.method_args.update(updates)
        module.config.save(run_dir / "config.json")
        log.info(f"calibrated on {len(cases)} held-out training frames/volumes: {updates}")


def trainer_settings(config: Config, method: Method) -> dict:
    """The Trainer arguments that decide what a training step computes (device, precision, clipping, autograd in
    validation); shared by ``train`` and the benchmark so both run the same step. ``auto`` precision is resolved
    here (see :mod:`unetzoo.precision`)."""
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


def _trainer(config: Config, run_dir: Path, method: Method, budget: TimeBudget | None = None) -> L.Trainer:
    # best: the epoch of highest validation Dice; last: every epoch (unmonitored), so that a --resume loses at most
    # the epoch in progress (Lightning's save_last is only written together with a new best)
    best = ModelCheckpoint(dirpath=run_dir, filename=BEST, monitor="val_dice", mode="max", save_top_k=1, enable_version_counter=False)
    last = ModelCheckpoint(dirpath=run_dir, filename=LAST, save_top_k=1, enable_version_counter=False)
    for checkpoint in (best, last):
        checkpoint.FILE_EXTENSION = CHECKPOINT_EXT
    return L.Trainer(
        **trainer_settings(config, method),
        callbacks=[best, last, HistoryFiles()] + ([budget] if budget is not None else [])
        + ([EarlyStopping(monitor="val_dice", mode="max", patience=config.train.early_stop)] if config.train.early_stop > 0 else []),
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

    loggers = [CSVLogger(run_dir / "logs", name="csv")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(run_dir / "logs", name="tensorboard", default_hp_metric=False))
    return loggers


def validate_run(run_dir: Path, dataset, val_names: list[str], log) -> dict:
    """Predict the held-out fold with the full inference procedure into ``validation/`` and evaluate it."""
    from unetzoo.evaluation import evaluate_folder
    from unetzoo.inference import Predictor

    out = run_dir / "validation"
    predictor = Predictor(run_dir, device=Config.load(run_dir / "config.json").train.device, keep_largest={})
    cases = [dataset.case(n) for n in val_names]
    predictor.predict_cases({c.name: c.images for c in cases}, out, overwrite=True)
    labels_dir = out / "labels"
    labels_dir.mkdir(exist_ok=True)
    for case in cases:  # evaluate_folder pairs files by name: link the references under the case names
        link = labels_dir / f"{case.name}{dataset.file_ending}"
        if not link.exists():
            os.symlink(case.label.resolve(), link)
    # the source files of every validation case, so that `unetzoo report` can draw image/label/prediction overlays
    write_text(out / "cases.json", json.dumps({c.name: {"image": [str(p.resolve()) for p in c.images], "label": str(c.label.resolve())} for c in cases}, indent=1))
    summary = evaluate_folder(out, labels_dir, out, label_ids=sorted(k for k in dataset.labels if k))
    log.info(f"validation: mean Dice {summary['foreground_mean']['Dice']:.4f} over {len(cases)} cases; per class " + ", ".join(f"{k}: {v['Dice']:.4f}" for k, v in summary["mean"].items()))
    postprocess_validation(run_dir, log)
    return summary


def postprocess_validation(run_dir: Path, log) -> dict:
    """Choose the run's post-processing on its validation predictions (``postprocessing.json``), write the fold
    with it applied to ``validation/postprocessed/`` and evaluate it there; returns that summary."""
    from unetzoo.evaluation import evaluate_folder, label_files
    from unetzoo.io import read_label_frames, write_array
    from unetzoo.postprocessing import decide_for_run, keep_largest

    validation = run_dir / "validation"
    predictions, references = label_files(validation), label_files(validation / "labels")
    classes = Plan.load(run_dir / "plan.json").label_ids[1:]
    record = decide_for_run(run_dir, predictions, references, classes)
    rules = {int(c): k for c, k in record["keep_largest"].items()}
    out = validation / "postprocessed"
    for case in references:
        frames = read_label_frames(predictions[case])  # 3D+t: every frame on its own
        label = frames[0].array if len(frames) == 1 else np.stack([f.array for f in frames], axis=-1)
        processed = keep_largest(label, rules, frames=len(frames) > 1)
        write_array(processed.astype(np.uint8), out / predictions[case].name, frames[0].affine, frames[0].header)
    summary = evaluate_folder(out, validation / "labels", out, label_ids=classes)
    dice = ", ".join(f"{c}: {v['without']:.4f} -> {v['with']:.4f}" for c, v in record["validation_dice"].items())
    log.info(f"post-processing: keep the largest component of classes {sorted(rules) or 'none'} (validation Dice without -> with, per class: {dice}); "
             f"mean Dice with it {summary['foreground_mean']['Dice']:.4f}")
    return summary
