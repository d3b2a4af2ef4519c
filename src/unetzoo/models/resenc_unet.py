"""nnU-Net's Residual Encoder U-Net (ResEnc), a peer baseline next to the plain ``unet``.

Isensee et al. 2024, "nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image Segmentation"
(arXiv:2404.09556), found that a U-Net with a residual encoder, planned by nnU-Net, beats most newer
architectures. The network is ``ResidualEncoderUNet`` of the authors' package ``dynamic-network-architectures``
(the class nnU-Net v2 builds), with the ResEnc M preset's network (``nnUNetPlannerResEncM``): widths 32 doubled
per stage and capped at 320, residual blocks per encoder stage 1, 3, 4, 6, 6, 6 ... (two convs each, ResNet-D
shortcuts), one conv per decoder stage, conv bias, InstanceNorm (affine, eps 1e-5), LeakyReLU, He initialisation
with the last norm of every block zeroed. The M, L and XL presets share this network and differ in the GPU memory
their patch sizes fill; here unetzoo's planner gives the patch and the topology (per-stage strides and kernel sizes
per axis), as for ``unet``. Deep supervision as ``unet``: a list of logits, full resolution first, in training mode.

Departures: the width cap 320 scales with ``base_features`` (``max_features`` = 10 x ``base_features`` unless set)
so that the time-budget width rule narrows every stage, and it is 320 in 2D too (nnU-Net: 512). The network needs
every axis divisible by its cumulative stride: inputs are zero-padded at the end and the outputs cropped back.
"""

from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from monai.networks.layers.factories import Act, Conv, Norm
from torch import nn

from unetzoo.models.blocks import Topology, crop_to, pad_to_multiple, stage_widths, unet_plan_defaults
from unetzoo.models.registry import register

ENCODER_BLOCKS = (1, 3, 4, 6)  # ResEnc M/L/XL: blocks per encoder stage, 6 for every stage after these


def encoder_blocks(n_stages: int) -> list[int]:
    """Residual blocks per encoder stage of the ResEnc presets: 1, 3, 4, 6, 6, 6 ... truncated to ``n_stages``."""
    return [ENCODER_BLOCKS[i] if i < len(ENCODER_BLOCKS) else ENCODER_BLOCKS[-1] for i in range(n_stages)]


@register(
    "resenc-unet",
    description="nnU-Net's Residual Encoder U-Net (ResEnc M preset network)",
    paper="Isensee et al. 2024, nnU-Net Revisited, arXiv:2404.09556",
    plan_defaults=unet_plan_defaults,
)
class ResEncUNet(nn.Module):
    """``ResidualEncoderUNet`` with the ResEnc M preset for 2D and 3D (``spatial_dims``); any input size.

    ``strides`` / ``kernel_sizes`` (per stage, per axis) or ``n_stages`` as :class:`~unetzoo.models.unet.UNet`;
    widths ``min(base_features * 2**i, max_features)``, ``max_features`` defaulting to 10 x ``base_features``.

    Example::

        net = ResEncUNet(3, 1, 3, strides=[1, [1, 2, 2], 2], kernel_sizes=[[1, 3, 3], 3, 3])
        logits = net.eval()(torch.zeros(1, 1, 5, 37, 41))  # -> (1, 3, 5, 37, 41)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        n_stages: int | None = None,
        base_features: int = 32,
        max_features: int | None = None,
        deep_supervision: bool = True,
        strides=None,
        kernel_sizes=None,
    ):
        super().__init__()
        self.topology = Topology(spatial_dims, n_stages, strides, kernel_sizes)
        n = self.topology.n_stages
        self.widths = stage_widths(n, base_features, 10 * base_features if max_features is None else max_features)
        self.blocks = encoder_blocks(n)
        self.deep_supervision = deep_supervision
        self.net = ResidualEncoderUNet(
            in_channels,
            n,
            self.widths,
            Conv[Conv.CONV, spatial_dims],
            [list(k) for k in self.topology.kernel_sizes],
            [list(s) for s in self.topology.strides],
            self.blocks,
            out_channels,
            [1] * (n - 1),
            conv_bias=True,
            norm_op=Norm[Norm.INSTANCE, spatial_dims],
            norm_op_kwargs={"eps": 1e-5, "affine": True},
            nonlin=Act[Act.LEAKYRELU],
            nonlin_kwargs={"inplace": True},
            deep_supervision=deep_supervision,
        )
        self.net.apply(ResidualEncoderUNet.initialize)

    def forward(self, x: torch.Tensor):
        supervised = self.training and self.deep_supervision
        self.net.decoder.deep_supervision = supervised  # nnU-Net's set_deep_supervision_enabled: one head at eval
        x, shape = pad_to_multiple(x, self.topology.divisor)
        outputs = self.net(x)
        if not supervised:
            return crop_to(outputs, shape)
        return [crop_to(out, self.topology.output_shape(shape, level)) for level, out in enumerate(outputs)]
