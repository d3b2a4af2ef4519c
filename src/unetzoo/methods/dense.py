"""Dense training and inference: Dice+CE on every voxel of a patch, deep supervision, sliding windows.

This is nnU-Net's procedure and the one every convolutional model of the zoo uses (``unet``, ``unetpp``,
``sd-unet`` ...). A model in training mode with deep supervision returns a list of logits, the inference head
first. ``head_weights`` (a method argument, set per model in its registration) weights them: ``"halving"``
1, 1/2, 1/4 ... normalised (nnU-Net's outputs at decreasing resolution), or ``"equal"`` (U-Net++'s full-resolution
heads, Zhou et al.). Targets are downsampled to each output's size by nearest interpolation. ``loss`` (a method
argument) is ``"dice-ce"``, nnU-Net's Dice+CE (:func:`dice_ce`), or ``"summed-dice-ce"``, Eq. 5 of Ding et al. 2021
(FLARE 2021) (:func:`summed_dice_ce`, the default of ``regularized-unet``). Both count the labelled voxels only
(:func:`~unetzoo.methods.base.labelled_voxels`: not those of the dataset's ignore label).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unetzoo.errors import UnetzooError
from unetzoo.methods.base import Method, labelled_voxels


def supervision_weights(n_outputs: int) -> list[float]:
    """1, 1/2, 1/4 ... normalised to sum to one."""
    raw = [1.0 / 2**i for i in range(n_outputs)]
    return [w / sum(raw) for w in raw]


HEAD_WEIGHTS = {"halving": supervision_weights, "equal": lambda n: [1.0 / n] * n}


def summed_dice_ce(logits: torch.Tensor, label: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Ding et al. 2021, Eq. 5 for logits (B, C, *S) and labels (B, 1, *S), U = softmax(logits), M one-hot:
    L_Dice = sum_{c=1..C} (1 - 2 (sum M_c U_c + eps) / (sum M_c + sum U_c + eps)), every class, background included,
    summed (not averaged); L_Entropy = -1/C sum_c <M_c, log U_c>, plus each other, per image, averaged over the batch.

    The inner product <M_c, log U_c> is taken as the mean over the N voxels, not the sum (a declared departure):
    summed, the entropy term is N times larger (2*10^6 for a 128^3 patch), so the Dice term (at most C) would no
    longer count and the loss scale would follow the patch size. -1/C sum_c mean_voxels is ``-(M * log U).mean()``
    over the (C, *S) tensor. ``eps`` (the paper's epsilon, value not given):
    MONAI's and nnU-Net's 1e-5. The model's outputs may be log-probabilities (the TV head's): log_softmax leaves
    them unchanged. Unlabelled voxels count in no sum, and the means are over an image's labelled voxels."""
    label, mask = labelled_voxels(label, logits.shape[1])
    log_u = F.log_softmax(logits.float(), dim=1)
    target = F.one_hot(label[:, 0], logits.shape[1]).movedim(-1, 1).float() * mask
    voxels = tuple(range(2, logits.dim()))
    u = log_u.exp() * mask
    dice = (1 - 2 * ((target * u).sum(voxels) + eps) / (target.sum(voxels) + u.sum(voxels) + eps)).sum(1)
    entropy = -(target * log_u).flatten(1).sum(1) / (logits.shape[1] * mask.flatten(1).sum(1)).clamp_min(1)
    return (dice + entropy).mean()


def dice_ce(logits: torch.Tensor, label: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """nnU-Net's Dice+CE of logits (B, K, *S) and labels (B, 1, *S), as MONAI's ``DiceCELoss(to_onehot_y=True,
    softmax=True, include_background=False, batch=True)``: 1 - soft Dice (smoothing ``eps`` above and below) per
    foreground class over all voxels of the batch, averaged over the classes, plus the mean cross-entropy; both
    over the labelled voxels only (MONAI's has no mask)."""
    label, mask = labelled_voxels(label, logits.shape[1])
    logits = logits.float()
    probs = torch.softmax(logits, dim=1) * mask
    target = F.one_hot(label[:, 0], logits.shape[1]).movedim(-1, 1).float() * mask
    dims = (0, *range(2, logits.dim()))
    overlap, predicted, reference = (probs * target).sum(dims), probs.sum(dims), target.sum(dims)
    dice = 1 - (2 * overlap[1:] + eps) / (predicted[1:] + reference[1:] + eps)
    ce = F.cross_entropy(logits, label[:, 0], reduction="none") * mask[:, 0]
    return dice.mean() + ce.sum() / mask.sum().clamp_min(1)


LOSSES = {"dice-ce": lambda: dice_ce, "summed-dice-ce": lambda: summed_dice_ce}


class DenseMethod(Method):
    exportable = True

    def __init__(self, model, plan, config, head_weights: str = "halving", loss: str = "dice-ce"):
        super().__init__(model, plan, config)
        if head_weights not in HEAD_WEIGHTS:
            raise UnetzooError(f"method_args.head_weights must be one of {sorted(HEAD_WEIGHTS)}, got {head_weights!r}")
        if loss not in LOSSES:
            raise UnetzooError(f"method_args.loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.head_weights = HEAD_WEIGHTS[head_weights]
        self.loss = LOSSES[loss]()

    def training_loss(self, batch: dict) -> torch.Tensor:
        image, label = batch["image"], batch["label"]
        outputs = self.model(image)
        if not isinstance(outputs, (list, tuple)):
            return self.loss(outputs, label)
        weights = self.head_weights(len(outputs))
        total = 0.0
        for weight, logits in zip(weights, outputs):
            target = (
                label
                if logits.shape[2:] == label.shape[2:]
                else F.interpolate(label.float(), size=logits.shape[2:], mode="nearest")
            )
            total = total + weight * self.loss(logits, target)
        return total

    def predict_window(self, window: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(window).float(), dim=1)


class SliceMethod(DenseMethod):
    """Slice-by-slice 2D training of a 3D dataset (the 2D baseline of Angermann & Haltmeier 2019, arXiv:1910.10398).

    Training crops patches one slice thick along the model's ``slice_axis`` (a model argument), and as many of
    them per case draw as the volume patch has slices, so one step sees as many voxels as a 3D step. Inference
    runs the 2D network on every slice of each sliding window (it never mixes slices), without mirroring along
    the slice axis. On 2D data the model is a plain 2D U-Net and this is the dense method.
    """

    def __init__(self, model, plan, config, **method_args):
        super().__init__(model, plan, config, **method_args)
        self.axis = config.model_args.get("slice_axis", 0) if plan.spatial_dims == 3 else None

    def train_patch_size(self) -> list[int]:
        if self.axis is None:  # 2D data: a plain 2D U-Net
            return self.patch_size
        patch = list(self.patch_size)
        patch[self.axis] = 1
        return patch

    def samples_per_draw(self) -> int:
        configured = super().samples_per_draw()
        return configured if self.axis is None else configured * self.patch_size[self.axis]

    def mirror_axes(self) -> list[int]:
        return [d for d in super().mirror_axes() if self.axis is None or d != 2 + self.axis]
