"""MONAI's SegResNet, a peer baseline: the encoder-decoder of Myronenko 2018 without its VAE branch.

Myronenko 2018, "3D MRI brain tumor segmentation using autoencoder regularization" (arXiv:1810.11654; BraTS 2018
winner): a ResNet-like encoder (pre-activation blocks GroupNorm-ReLU-conv, strided-conv downsampling) and a light
decoder (1x1 conv, trilinear upsampling, the skip added, one block per level). The network is
``monai.networks.nets.SegResNet`` with MONAI's defaults: ``init_filters`` 8 (our ``base_features``, so that the
time-budget width rule can narrow it), ``blocks_down`` (1, 2, 2, 4), ``blocks_up`` (1, 1, 1), GroupNorm with 8
groups, no dropout, non-trainable upsampling. It trains and predicts with the dense method as the other models.

Departures from the paper: no VAE regulariser branch (MONAI's ``SegResNetVAE`` has it), 8 initial filters and no
dropout (the paper: 32 and spatial dropout 0.2, MONAI's defaults), softmax classes with Dice+CE (the paper:
sigmoid tumour sub-regions, soft Dice + VAE losses). SegResNet needs every axis divisible by
2**(len(blocks_down) - 1) = 8, and unetzoo plans odd and thin patches (ACDC: 5-10 slices): inputs are zero-padded
at the end of each axis up to that multiple and the logits cropped back, as ``unet`` pads. GroupNorm needs
``base_features`` to be a multiple of 8, so the width rule (which stops at 8) keeps the default.
"""

from __future__ import annotations

import torch
from monai.networks.nets import SegResNet as MonaiSegResNet
from torch import nn

from unetzoo.models.blocks import crop_to, pad_to_multiple
from unetzoo.models.registry import register


@register(
    "segresnet",
    description="MONAI SegResNet (Myronenko 2018 encoder-decoder, no VAE branch)",
    paper="Myronenko 2018, arXiv:1810.11654 (MONAI SegResNet)",
)
class SegResNet(nn.Module):
    """MONAI's ``SegResNet`` for 2D and 3D (``spatial_dims``) that accepts any input size.

    Example::

        net = SegResNet(3, 1, 3)
        logits = net.eval()(torch.zeros(1, 1, 5, 37, 41))  # -> (1, 3, 5, 37, 41)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        base_features: int = 8,
        blocks_down: tuple[int, ...] = (1, 2, 2, 4),
        blocks_up: tuple[int, ...] = (1, 1, 1),
        dropout_prob: float | None = None,
    ):
        super().__init__()
        self.divisor = 2 ** (len(blocks_down) - 1)
        self.net = MonaiSegResNet(
            spatial_dims=spatial_dims,
            init_filters=base_features,
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=dropout_prob,
            blocks_down=tuple(blocks_down),
            blocks_up=tuple(blocks_up),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, shape = pad_to_multiple(x, self.divisor)
        return crop_to(self.net(x), shape)
