"""Attention U-Net (Oktay et al., "Attention U-Net: learning where to look for the pancreas", 2018; the backbone of
the Regularized U-Net of Ding et al. 2021, FLARE 2021, section 2.4, its ref. [12]), 2D and 3D.

Every skip connection passes through an additive attention gate (Oktay et al. section 2, eq. 1-2) before it is
concatenated with the upsampled decoder features: ``alpha = sigmoid(psi(relu(W_x x + W_g g)))`` and the skip
becomes ``alpha * x``. The gating signal ``g`` is the coarser decoder feature after its transposed-conv upsampling,
so ``x`` and ``g`` share a grid (MONAI's :class:`~monai.networks.nets.attentionunet.AttentionBlock`, used here;
Oktay's code instead strides ``W_x`` and upsamples ``alpha``). The intermediate width is half the skip's width.

For a fair comparison with ``unet`` everything else is :class:`unetzoo.models.unet.UNet`: nnU-Net's
conv-InstanceNorm-LeakyReLU units, widths 32 doubled per stage capped at 320, strided-conv downsampling,
transposed-conv upsampling, He initialisation and deep supervision (Oktay's network uses max pooling, BatchNorm
and ReLU, widths 64-1024 in 2D). Only the gates (1x1 convolutions with BatchNorm, as MONAI's block) are added.
"""

from __future__ import annotations

import torch
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from unetzoo.models.blocks import unet_plan_defaults
from unetzoo.models.registry import register
from unetzoo.models.unet import PlainConvDecoder, UNet


class GatedDecoder(PlainConvDecoder):
    """:class:`PlainConvDecoder` with an additive attention gate on every skip, gated by the upsampled features."""

    def __init__(
        self,
        spatial_dims: int,
        widths: list[int],
        out_channels: int,
        convs_per_stage: int = 2,
        strides=None,
        kernel_sizes=None,
    ):
        super().__init__(spatial_dims, widths, out_channels, convs_per_stage, strides, kernel_sizes)
        levels = range(len(widths) - 2, -1, -1)
        self.gates = nn.ModuleList(
            AttentionBlock(spatial_dims, f_int=max(widths[i] // 2, 1), f_g=widths[i], f_l=widths[i]) for i in levels
        )

    def join(self, level: int, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The upsampled features next to the skip weighted by its gate, gated by the upsampled features."""
        return torch.cat([upsampled, self.gates[level](upsampled, skip)], dim=1)


@register(
    "attention-unet",
    description="Attention U-Net: additive attention gates on the skips (nnU-Net conv units and widths)",
    paper="Oktay et al., Attention U-Net, MIDL 2018 (ref. [12] of Ding et al. 2021, FLARE 2021)",
    plan_defaults=unet_plan_defaults,
)
class AttentionUNet(UNet):
    """Attention U-Net for 2D and 3D (``spatial_dims``): :class:`~unetzoo.models.unet.UNet` with gated skips.

    Topology (``strides``, ``kernel_sizes`` or ``n_stages``) as ``UNet``; accepts any input size (pads to a multiple of
    the cumulative stride per axis and crops back). In training mode with
    ``deep_supervision`` it returns a list of logits, full resolution first; otherwise the full-resolution logits.

    Example::

        net = AttentionUNet(spatial_dims=3, in_channels=1, out_channels=5, n_stages=5)
        logits = net.eval()(torch.zeros(1, 1, 40, 56, 48))  # -> (1, 5, 40, 56, 48)
    """

    decoder_class = GatedDecoder
