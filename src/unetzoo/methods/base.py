"""The Method contract: how a family of models turns a batch into a loss and an image into probabilities.

A model is an ``nn.Module`` from the registry; a method is the procedure around it (dense patches, sampled
points, latent codes, projections). Training, inference and the benchmark only talk to this interface, so a
new family plugs into every command by adding one Method subclass.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from unetzoo.config import InferenceConfig


class Method:
    """Base class. Subclasses implement :meth:`training_loss` and :meth:`predict_window`."""

    def __init__(self, model: nn.Module, num_classes: int, patch_size: list[int], inference: InferenceConfig):
        self.model = model
        self.num_classes = num_classes
        self.patch_size = list(patch_size)
        self.inference = inference

    def train_patch_size(self) -> list[int]:
        """The patch the data loader crops for one training sample."""
        return self.patch_size

    def samples_per_case(self, configured: int) -> int:
        """Patches cropped per case draw (a slice method crops several slices to match a volume patch)."""
        return configured

    def training_loss(self, batch: dict) -> torch.Tensor:
        """Loss of one batch ``{"image": (B, C, *patch), "label": (B, 1, *patch)}``."""
        raise NotImplementedError

    def predict_window(self, window: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K, *window) of one sliding-window patch."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, K, *spatial) of whole images by Gaussian-weighted sliding windows (MONAI),
        optionally averaged over mirrored copies (test-time augmentation)."""
        from monai.inferers import sliding_window_inference

        self.model.eval()
        roi = [min(p, s) if p == 1 else p for p, s in zip(self.patch_size, image.shape[2:])]
        return sliding_window_inference(
            image,
            roi_size=roi,
            sw_batch_size=self.inference.sw_batch_size,
            predictor=self._mirrored if self.inference.mirror else self.predict_window,
            overlap=self.inference.overlap,
            mode="gaussian" if self.inference.gaussian else "constant",
        )

    def mirror_axes(self) -> list[int]:
        """Tensor dims that test-time mirroring flips."""
        return [2 + i for i in range(len(self.patch_size))]

    def _mirrored(self, window: torch.Tensor) -> torch.Tensor:
        axes = self.mirror_axes()
        flips = [combo for n in range(len(axes) + 1) for combo in itertools.combinations(axes, n)]
        total = 0
        for dims in flips:
            flipped = window.flip(dims) if dims else window
            probs = self.predict_window(flipped)
            total = total + (probs.flip(dims) if dims else probs)
        return total / len(flips)
