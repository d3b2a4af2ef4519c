"""Building blocks shared by every U-Net of the zoo: conv-norm-act units, conv stages, padding helpers.

One implementation serves 2D and 3D through ``spatial_dims`` and MONAI's layer factories, as in
``monai.networks``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Act, Conv, Norm
from torch import nn


def stage_widths(n_stages: int, base: int = 32, max_features: int = 320) -> list[int]:
    """nnU-Net widths: ``base`` doubled at every stage and capped (32-64-128-256-320-320)."""
    return [min(base * 2**i, max_features) for i in range(n_stages)]


def stages_for_patch(patch_size, max_stages: int = 6, min_edge: int = 4) -> int:
    """nnU-Net's depth rule with isotropic strides: downsample while the smallest edge stays >= ``min_edge``."""
    smallest = min(int(s) for s in patch_size if int(s) > 1)  # a thickness-1 axis (2D slices) does not count
    return max(2, min(max_stages, 1 + int(math.floor(math.log2(smallest / min_edge)))))


def unet_plan_defaults(plan, config, train_cases=None) -> dict:
    """Data-dependent arguments of the nnU-Net-style models: depth from the patch (nnU-Net's rule) and deep
    supervision from ``train.deep_supervision``."""
    return {"n_stages": stages_for_patch(plan.patch_size), "deep_supervision": config.train.deep_supervision}


class ConvNormAct(nn.Sequential):
    """Convolution -> InstanceNorm (affine, eps 1e-5) -> LeakyReLU(0.01): nnU-Net's plain conv unit."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2),
            Norm[Norm.INSTANCE, spatial_dims](out_channels, eps=1e-5, affine=True),
            Act[Act.LEAKYRELU](negative_slope=0.01, inplace=True),
        )


class ConvStage(nn.Sequential):
    """``n_convs`` conv units; the first one has ``stride`` (strided-conv downsampling, no pooling)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, n_convs: int = 2, stride: int = 1):
        super().__init__(
            *[
                ConvNormAct(spatial_dims, in_channels if i == 0 else out_channels, out_channels, stride=stride if i == 0 else 1)
                for i in range(n_convs)
            ]
        )


def init_he(module: nn.Module) -> None:
    """He initialisation (kaiming normal, a=0.01) of convolution weights, zero biases, as nnU-Net."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial axes of ``x`` at their end to a multiple of ``multiple``; returns the original shape."""
    shape = tuple(x.shape[2:])
    pad = []
    for size in reversed(shape):
        pad += [0, (-size) % multiple]
    return (F.pad(x, pad) if any(pad) else x), shape


def crop_to(x: torch.Tensor, shape) -> torch.Tensor:
    """Crop the spatial axes of ``x`` to ``shape`` (undoes :func:`pad_to_multiple`)."""
    return x[(slice(None), slice(None)) + tuple(slice(0, int(s)) for s in shape)]
