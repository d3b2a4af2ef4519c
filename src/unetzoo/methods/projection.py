"""Whole-volume training and prediction of the projection U-Nets (random-2.5d-unet.md).

Training and prediction take the entire preprocessed volume (``whole_volumes``: the plan keeps the padded median
shape as the patch, no 128 cap, no sliding window). The loss is the paper's Dice loss (Eq. 1) on the foreground
probabilities, averaged over the foreground classes; the random 2.5D U-Net's two outputs are mixed by the joint
loss of Sec. 3.2, c * Dice(path 1) + (1 - c) * Dice(path 2), with c(1) = ``mix`` (0.99) and
c(n + 1) = c(n) * ``mix_decay`` ^ n (0.99) per epoch n = 1, 2, ..., i.e. c(n) = mix * mix_decay ^ (n (n - 1) / 2).

Augmentation and the optimiser are the project's defaults; the paper's are ``--set train.optimizer=adam
--lr 1e-3 --set train.scheduler=plateau --set train.early_stop=5`` (Sec. 4: Adam 1e-3, halved after 3 epochs
without improvement, stopped after 5), with the validation Dice in place of the validation loss.
"""

from __future__ import annotations

import torch

from unetzoo.errors import UnetzooError
from unetzoo.methods.base import Method
from unetzoo.methods.grid import Grid


def dice_loss(logits: torch.Tensor, label: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. (1), 1 - 2 sum(y * y^) / (sum y^ + sum y), over every voxel of the batch, per foreground class, averaged."""
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    classes = torch.arange(1, logits.shape[1], device=label.device)[None, :, None, None, None]
    target = (label.long() == classes).float()
    dims = (0, 2, 3, 4)
    overlap = (probs * target).sum(dims)
    return (1 - 2 * overlap / (probs.sum(dims) + target.sum(dims) + eps)).mean()


class ProjectionMethod(Method):
    """Whole volumes, Dice loss, the two-path mix (module docstring)."""

    whole_volumes = True

    def __init__(self, model, plan, config, mix: float = 0.99, mix_decay: float = 0.99):
        super().__init__(model, plan, config)
        if not (0.0 <= mix <= 1.0 and 0.0 < mix_decay <= 1.0):
            raise UnetzooError(f"method_args: mix must be in [0, 1] and mix_decay in (0, 1], got {mix} and {mix_decay}")
        self.mix, self.mix_decay = float(mix), float(mix_decay)
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def path1_weight(self) -> float:
        """c(n) for epoch n = ``self.epoch`` + 1."""
        n = self.epoch + 1
        return self.mix * self.mix_decay ** (n * (n - 1) / 2)

    def training_loss(self, batch: dict) -> torch.Tensor:
        outputs = self.model.training_outputs(batch["image"])
        if len(outputs) == 1:
            return dice_loss(outputs[0], batch["label"])
        c = self.path1_weight()
        return c * dice_loss(outputs[0], batch["label"]) + (1 - c) * dice_loss(outputs[1], batch["label"])

    def predict(self, image: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """The whole volume at once (no sliding window); the probabilities are resampled linearly onto ``grid``."""
        self.model.eval()
        probs = self.predict_window(image)
        return probs if grid is None else grid.resample(probs)

    def predict_window(self, window: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a whole volume (the only window this method has)."""
        return torch.softmax(self.model(window).float(), dim=1)
