"""Whole-volume training and prediction of the projection U-Nets (Angermann & Haltmeier 2019, arXiv:1910.10398).

Training and prediction take the entire preprocessed volume, as the paper ("can be applied end-to-end to very large
data volumes without cropping or sliding-window techniques"): no patch crop at any size, no sliding window. The
training augmentations keep each volume's size; the volumes of one batch are padded to the batch's largest shape
(the network takes any shape), the image with its own minimum per channel (so that padding never wins a maximum
intensity projection) and the label with -1, which the loss ignores. Memory then grows with the largest training
volume (docs/results/projection-memory.md: 7 GB for a training step at the paper's 96 x 288 x 224); nothing is cropped
to bound it (``--batch-size 1``, the paper's minibatch, is the way to save memory). The plan's patch (the median
shape rounded up to a multiple of 8, not capped) only sizes the 2D U-Net and the benchmark's synthetic batch.

The loss is the paper's Dice loss (Eq. 1) on the foreground
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
from unetzoo.methods.base import Method, labelled_voxels
from unetzoo.methods.grid import Grid


def dice_loss(logits: torch.Tensor, label: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. (1), 1 - 2 sum(y * y^) / (sum y^ + sum y), over every voxel of the batch, per foreground class, averaged;
    unlabelled voxels (-1, padding outside a volume; the ignore label) do not count."""
    probs = torch.softmax(logits.float(), dim=1)[:, 1:] * labelled_voxels(label, logits.shape[1])[1]
    classes = torch.arange(1, logits.shape[1], device=label.device)[None, :, None, None, None]
    target = (label.long() == classes).float()
    dims = (0, 2, 3, 4)
    overlap = (probs * target).sum(dims)
    return (1 - 2 * overlap / (probs.sum(dims) + target.sum(dims) + eps)).mean()


def pad_to(x: torch.Tensor, shape: list[int], fill: torch.Tensor) -> torch.Tensor:
    """``x`` (C, *S) in the leading corner of a (C, *shape) tensor filled with ``fill`` (C,) elsewhere."""
    out = fill.to(x.dtype).reshape(-1, *[1] * len(shape)).repeat(1, *shape)
    out[(slice(None), *[slice(0, size) for size in x.shape[1:]])] = x
    return out


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

    def train_transform(self):
        """The project's augmentations on the whole volume (no pad, no crop)."""
        from unetzoo.data.transforms import augmentation

        cfg = self.config
        return augmentation(self.patch_size, cfg.augment, cfg.data.pos_neg_ratio, 1, self.stride_axes, whole=True)

    @staticmethod
    def collate(samples: list) -> dict:
        """Whole volumes of different shapes padded at the end of every axis to the batch's largest: the image with
        its own minimum per channel, the label with -1 (outside the volume, ignored by :func:`dice_loss`)."""
        samples = [s for draw in samples for s in (draw if isinstance(draw, list) else [draw])]
        images = [torch.as_tensor(s["image"]).float() for s in samples]
        labels = [torch.as_tensor(s["label"]).float() for s in samples]
        shape = [max(sizes) for sizes in zip(*(image.shape[1:] for image in images))]
        return {
            "image": torch.stack([pad_to(image, shape, image.flatten(1).amin(1)) for image in images]),
            "label": torch.stack([pad_to(label, shape, torch.full((1,), -1.0)) for label in labels]),
        }

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
