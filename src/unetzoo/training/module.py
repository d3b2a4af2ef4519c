"""The Lightning module that trains any :class:`~unetzoo.methods.base.Method`: its data loaders, steps, the
per-epoch pseudo-Dice validation (where the run has one) and the optimiser."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from monai.data import DataLoader, MetaTensor

from unetzoo.config import Config
from unetzoo.data.cache import cache_root, preprocessed_cases
from unetzoo.data.plan import Plan
from unetzoo.data.val_patches import spread, validation_patches
from unetzoo.errors import UnetzooError
from unetzoo.methods import Method
from unetzoo.runfolder import RunFolder
from unetzoo.training.budget import TimeBudget, poly_factor, poly_lr
from unetzoo.training.progress import run_logger


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
        return torch.optim.SGD(
            parameters, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=cfg.lr)
    raise UnetzooError(f"unknown optimizer {cfg.optimizer!r} (adamw, sgd or adam)")


class SegmentationModule(L.LightningModule):
    """Wraps a :class:`Method`: training steps give its loss, the optimizer takes its parameter groups, the
    per-epoch validation reports nnU-Net's pseudo Dice (global TP/FP/FN per class) of ``val_items`` (the run's inner
    validation cases, never its held-out fold) over ``train.val_patches`` fixed validation patches
    (:mod:`unetzoo.data.val_patches`; 0: whole validation cases), predicted by the method's
    :meth:`Method.validation_predict`; a run without one trains with ``limit_val_batches=0`` and records the loss
    only. Every epoch's record goes into ``history`` (``history.json``) at the epoch's end. Without ``run_dir`` (the
    benchmark) nothing is written. With a ``budget`` the poly schedule runs on its time spent
    (:mod:`unetzoo.training.budget`)."""

    def __init__(
        self,
        method: Method,
        config: Config,
        plan: Plan,
        train_items: list[dict] = (),
        val_items: list[dict] = (),
        run_dir: Path | None = None,
        budget: TimeBudget | None = None,
    ):
        super().__init__()
        self.method, self.model = method, method.model
        self.config, self.plan, self.run_dir, self.budget = config, plan, run_dir, budget
        self.train_items, self.val_items = list(train_items), list(val_items)
        self.history: list[dict] = []
        self._loss_sum, self._loss_count, self._epoch_start, self._epoch_lr = 0.0, 0, time.time(), 0.0
        self._counts, self._dice = None, None  # the validation's counts, then this epoch's Dice per class
        self.log_file = None

    # ---- data -------------------------------------------------------------------------------------
    def _cached(self, items):
        """The preprocessed cases, in memory, from the disk cache of this dataset and plan (computed once)."""
        return preprocessed_cases(
            items, self.plan, cache_root(self.config.data.cache_dir), self.config.data.cache_workers
        )

    def train_dataloader(self):
        cfg = self.config
        # each draw yields the method's samples; the loader batches draws so a step sees batch_size draws
        length = self.method.steps_per_epoch() * cfg.train.batch_size * self.trainer.world_size
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
        if cfg.train.val_patches == 0 or self.method.whole_volumes:  # whole cases (a whole-volume method sees no crop)
            return DataLoader(self._cached(items), batch_size=1, num_workers=0)
        positive, negative = cfg.data.pos_neg_ratio
        count = min(cfg.train.val_patches, self.method.max_validation_patches or cfg.train.val_patches)
        chosen = self._cached(spread(items, count))
        patches = validation_patches(
            chosen, self.plan.patch_size, count, cfg.seed, positive / (positive + negative), self.plan.num_classes
        )
        return DataLoader(patches, batch_size=1, num_workers=0)

    # ---- steps ------------------------------------------------------------------------------------
    def on_train_start(self):
        # written here, after a resumed checkpoint has been restored: a --resume that fails leaves config.json as it was
        if self.run_dir is not None and self.trainer.is_global_zero:
            self.config.save(RunFolder(self.run_dir).config)

    def on_train_epoch_start(self):
        self._loss_sum, self._loss_count, self._epoch_start = 0.0, 0, time.time()
        self._epoch_lr = self.optimizers().param_groups[0]["lr"]  # the scheduler steps before validation ends
        self.method.start_epoch(self.current_epoch)

    def training_step(self, batch, batch_idx):
        loss = self.method.training_loss(_plain(batch))
        if not torch.isfinite(loss):
            raise UnetzooError(
                f"training diverged: loss is {loss.item()} at epoch {self.current_epoch}, step {batch_idx}; lower --lr"
            )
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
        labelled = label < self.plan.num_classes  # the ignore label's voxels (class index num_classes) do not count
        for c in range(1, self.plan.num_classes):
            p, r = (prediction == c) & labelled, label == c
            self._counts[0, c] += (p & r).sum()
            self._counts[1, c] += (p & ~r).sum()
            self._counts[2, c] += (~p & r).sum()

    def on_validation_epoch_end(self):
        counts = self._counts
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        tp, fp, fn = counts[:, 1:]
        dice = (2 * tp / (2 * tp + fp + fn).clamp_min(1)).tolist()
        self.log("val_dice", float(np.mean(dice)) if dice else 0.0, prog_bar=True, sync_dist=False)
        if not self.trainer.sanity_checking:
            self._dice = dice

    def on_train_epoch_end(self):
        # after the epoch's validation, if any, and before its checkpoints (which hold the history)
        dice, self._dice = self._dice, None
        if self.run_dir is None:
            return
        loss_sum = torch.tensor([self._loss_sum, self._loss_count], dtype=torch.float64, device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(loss_sum)
        record = {"epoch": self.current_epoch, "train_loss": float(loss_sum[0] / max(loss_sum[1], 1))}
        if dice is not None:
            record["val_dice"] = float(np.mean(dice)) if dice else 0.0
            record["val_dice_per_class"] = dict(zip(map(str, self.plan.label_ids[1:]), dice))
        record["epoch_time_s"] = time.time() - self._epoch_start
        record["lr"] = self._epoch_lr
        record["steps"] = self.trainer.global_step  # optimiser steps so far: a time budget can end an epoch early
        self.history.append(record)
        self.log_dict(
            {
                "train_loss": record["train_loss"],
                "lr": record["lr"],
                **{f"val_dice_{name}": d for name, d in record.get("val_dice_per_class", {}).items()},
            },
            sync_dist=False,
        )
        if self.trainer.is_global_zero:
            line = f"epoch {record['epoch']}: train_loss {record['train_loss']:.4f}  "
            if dice is not None:
                best = max(h["val_dice"] for h in self.history if "val_dice" in h)
                line += f"pseudo Dice [{', '.join(f'{d:.4f}' for d in dice)}]  "
            line += f"epoch time {record['epoch_time_s']:.1f} s  lr {record['lr']:.2e}"
            if dice is not None and best == record["val_dice"]:
                line += "  (new best)"
            run_logger(self.run_dir).info(line)

    # ---- optimisation and checkpoint state ---------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.config.train
        optimizer = make_optimizer(self.method.parameter_groups(), cfg)
        if cfg.scheduler == "constant":
            return optimizer
        if cfg.scheduler == "plateau":
            # Angermann & Haltmeier 2019 (arXiv:1910.10398), Sec. 4: halve after 3 epochs without improvement
            # torch halves once more than ``patience`` epochs are flat (Keras: ``patience``), so 2 = the 3rd flat epoch
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "monitor": "val_dice"},
            }
        if cfg.scheduler != "poly":
            raise UnetzooError(f"unknown scheduler {cfg.scheduler!r} (poly, constant or plateau)")
        if self.budget is None:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: poly_lr(epoch, cfg.epochs))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        # a time budget: after every step, on the larger of the epoch and the time fractions spent
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: poly_factor(self.budget.progress(self.current_epoch, cfg.epochs))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["unetzoo"] = {"config": self.config.to_dict(), "plan": self.plan.to_dict(), "history": self.history}

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint.get("unetzoo", {}).get("history", []))
