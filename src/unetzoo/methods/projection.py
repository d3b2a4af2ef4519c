"""Whole-volume training and prediction of the projection U-Nets (Angermann & Haltmeier 2019, arXiv:1910.10398).

Training and prediction take the entire preprocessed volume, as the paper ("can be applied end-to-end to very large
data volumes without cropping or sliding-window techniques"): no patch crop at any size, no sliding window. The
training augmentations keep each volume's size. The paper trains with minibatch 1; here a batch of B volumes is
padded to its largest shape only as a container (:meth:`ProjectionMethod.collate`, which records each volume's
``shape``): the training crops every volume back and runs it through the network alone, so that neither the
rotation centre, the detector size nor the tuning's per-volume statistics see the padding or the batch partner, and
the loss is the mean of the B per-volume losses (its gradient the mean of B minibatch-1 gradients). The loop
computes no more than the padded batch would (no volume is padded) and keeps the network a function of one volume;
on a GPU it runs the volumes one after another instead of side by side. Memory grows with the largest training
volume (docs/results/projection-memory.md: 7 GB for a training step at the paper's 96 x 288 x 224); nothing is
cropped to bound it (``--batch-size 1``, the paper's minibatch, is the way to save memory). The plan's patch (the
median shape rounded up to a multiple of 8, not capped) only sizes the 2D U-Net and the benchmark's synthetic batch.

In-plane stride (``augment.in_plane_stride`` s > 1, Ding et al. 2021's option for every model): training sees
each volume sub-sampled to every s-th voxel of its two in-plane axes from random offsets; prediction applies the
same strategy as training, i.e. runs each of the s^2 interleaved sub-volumes whole through the network and
interleaves the results back to full resolution (:meth:`Method.sliding_window` with the whole sub-volume as the
one window).

The loss is the paper's Dice loss (Eq. 1) on the foreground probabilities of each volume, averaged over the
foreground classes; the random 2.5D U-Net's two outputs are mixed by the joint loss of Sec. 3.2,
c * Dice(path 1) + (1 - c) * Dice(path 2), with c(1) = ``mix`` (0.99) and c(n + 1) = c(n) * ``mix_decay`` ^ n
(0.99), i.e. c(n) = mix * mix_decay ^ (n (n - 1) / 2), where the paper's epoch n counts passes over the training
set: n = 1 + the full passes completed before the step, steps * batch_size * devices // training cases (n = 1 when
the number of training cases is unknown, as in the benchmark).

Augmentation and the optimiser are the project's defaults; the paper's are ``--set train.optimizer=adam
--lr 1e-3 --set train.scheduler=plateau --set train.early_stop=5 --set method_args.pass_epochs=true`` (Sec. 4: Adam
1e-3, halved after 3 epochs without improvement, stopped after 5), with the validation Dice in place of the
validation loss. ``pass_epochs`` makes an epoch (the per-epoch validation, the plateau and early-stop counters,
``train.epochs``) one pass over the training set, ceil(training cases / (batch_size * devices)) steps, instead of
``train.iters_per_epoch`` steps; the cases of a pass are drawn at random with replacement, as every epoch here.
"""

from __future__ import annotations

import math

import torch

from unetzoo.errors import UnetzooError
from unetzoo.methods.base import Method, labelled_voxels
from unetzoo.methods.grid import Grid


def dice_loss(logits: torch.Tensor, label: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. (1), 1 - 2 sum(y * y^) / (sum y^ + sum y), over every voxel of the batch, per foreground class, averaged;
    unlabelled voxels (the ignore label, -1 padding) do not count."""
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


def volumes(batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(image, label), each (1, C, *shape), of every volume of a collated batch, cropped back to its ``shape``
    (without a ``shape`` entry, the whole tensor: a batch of equal shapes)."""
    image, label = batch["image"], batch["label"]
    shapes = batch["shape"].tolist() if "shape" in batch else [image.shape[2:]] * image.shape[0]
    out = []
    for b, shape in enumerate(shapes):
        index = (slice(b, b + 1), slice(None), *[slice(0, int(size)) for size in shape])
        out.append((image[index], label[index]))
    return out


class ProjectionMethod(Method):
    """Whole volumes, each through the network alone; Dice loss, the two-path mix per pass (module docstring)."""

    whole_volumes = True

    def __init__(self, model, plan, config, mix: float = 0.99, mix_decay: float = 0.99, pass_epochs: bool = False):
        super().__init__(model, plan, config)
        if not (0.0 <= mix <= 1.0 and 0.0 < mix_decay <= 1.0):
            raise UnetzooError(f"method_args: mix must be in [0, 1] and mix_decay in (0, 1], got {mix} and {mix_decay}")
        self.mix, self.mix_decay, self.pass_epochs = float(mix), float(mix_decay), bool(pass_epochs)
        self.steps = 0  # training steps taken (training_loss calls), from the epoch's start on a resume

    def volumes_per_step(self) -> int:
        """Training volumes one optimiser step sees over all devices."""
        return self.config.train.batch_size * self.config.train.devices

    def steps_per_epoch(self) -> int:
        """With ``pass_epochs``: one pass over the training set, ceil(training cases / volumes per step)."""
        if not self.pass_epochs:
            return super().steps_per_epoch()
        if not self.train_cases:
            raise UnetzooError("method_args.pass_epochs needs the number of training cases (build_method train_cases)")
        return math.ceil(self.train_cases / self.volumes_per_step())

    def start_epoch(self, epoch: int) -> None:
        self.steps = epoch * self.steps_per_epoch()

    def train_transform(self):
        """The project's augmentations on the whole volume (no pad, no crop)."""
        from unetzoo.data.transforms import augmentation

        cfg = self.config
        return augmentation(self.patch_size, cfg.augment, cfg.data.pos_neg_ratio, 1, self.stride_axes, whole=True)

    @staticmethod
    def collate(samples: list) -> dict:
        """Whole volumes of different shapes padded at the end of every axis to the batch's largest (the image with
        its own minimum per channel, the label with -1), with each volume's own ``shape`` (B, 3), by which the
        training crops it back (:func:`volumes`): the padding is only a container."""
        samples = [s for draw in samples for s in (draw if isinstance(draw, list) else [draw])]
        images = [torch.as_tensor(s["image"]).float() for s in samples]
        labels = [torch.as_tensor(s["label"]).float() for s in samples]
        shape = [max(sizes) for sizes in zip(*(image.shape[1:] for image in images))]
        return {
            "image": torch.stack([pad_to(image, shape, image.flatten(1).amin(1)) for image in images]),
            "label": torch.stack([pad_to(label, shape, torch.full((1,), -1.0)) for label in labels]),
            "shape": torch.tensor([list(image.shape[1:]) for image in images]),
        }

    def passes(self) -> int:
        """The paper's epoch n of the next step: 1 + the full passes over the training set completed before it
        (1 when the number of training cases is unknown)."""
        if not self.train_cases:
            return 1
        return 1 + self.steps * self.volumes_per_step() // self.train_cases

    def path1_weight(self) -> float:
        """c(n) for n = :meth:`passes`."""
        n = self.passes()
        return self.mix * self.mix_decay ** (n * (n - 1) / 2)

    def volume_outputs(self, batch: dict) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """(the model's training outputs, label) of every volume of a collated batch, each volume alone."""
        return [(self.model.training_outputs(image), label) for image, label in volumes(batch)]

    def training_loss(self, batch: dict) -> torch.Tensor:
        """The mean over the batch's volumes of each one's loss (Dice, or the two-path mix with c(n))."""
        c = self.path1_weight()
        self.steps += 1
        losses = []
        for outputs, label in self.volume_outputs(batch):
            weights = [1.0] if len(outputs) == 1 else [c, 1 - c]
            losses.append(sum(w * dice_loss(logits, label) for w, logits in zip(weights, outputs)))
        return torch.stack(losses).mean()

    def predict(self, image: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """The whole volume at once (no sliding window); with an in-plane stride its s^2 interleaved sub-volumes, as
        training (module docstring); the probabilities are resampled linearly onto ``grid``."""
        self.model.eval()
        probs = self.sliding_window(image)
        return probs if grid is None else grid.resample(probs)

    def _windows(self, image: torch.Tensor) -> torch.Tensor:
        """The whole (sub-)volume is this method's only window (no sliding window, no mirroring)."""
        return self.predict_window(image)

    def predict_window(self, window: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a whole volume (the only window this method has)."""
        return torch.softmax(self.model(window).float(), dim=1)
