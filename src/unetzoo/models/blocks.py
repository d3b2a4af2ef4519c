"""Building blocks shared by every U-Net of the zoo: the topology (per-stage strides and kernel sizes per axis) and
the stages it builds, conv-norm-act units, padding helpers.

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
    """Data-dependent arguments of the nnU-Net-style models: the plan's topology (``strides``, ``kernel_sizes`` per
    stage and axis) and deep supervision from ``train.deep_supervision``. A user's ``n_stages`` or ``strides`` fixes
    the depth instead (``n_stages`` alone: isotropic stages, as run folders made before the topology was planned)."""
    args = {"deep_supervision": config.train.deep_supervision}
    if "n_stages" not in config.model_args and "strides" not in config.model_args:
        args.update(strides=plan.strides, kernel_sizes=plan.kernel_sizes)
    return args


def _per_axis(value, spatial_dims: int, what: str) -> tuple[int, ...]:
    values = (int(value),) * spatial_dims if isinstance(value, (int, float)) else tuple(int(v) for v in value)
    if len(values) != spatial_dims or min(values) < 1:
        raise ValueError(f"{what} {value!r}: need one positive integer per axis ({spatial_dims})")
    return values


class Topology:
    """The shape of a U-Net as data: per stage, the stride and the conv kernel size of every axis.

    nnU-Net's ``pool_op_kernel_sizes`` / ``conv_kernel_sizes`` (MONAI's ``DynUNet`` ``strides`` / ``kernel_size``):
    ``strides[0]`` is all 1 (the full-resolution stage), ``strides[i]`` the downsampling into stage ``i``; a stride
    1 keeps an axis (an anisotropic patch pools its thin axis fewer times) and a kernel 1 convolves only in-plane
    (an axis still much coarser than the others). An entry may be one int for every axis. Without ``strides`` the
    network is ``n_stages`` (default 6) isotropic stages: stride 2, kernel 3 (the topology of older run folders).

    It is also the block factory: :meth:`stage` (encoder stage ``i`` or decoder stage at level ``i``) and :meth:`up`
    (the transposed conv from level ``i + 1`` to ``i``, kernel = stride per axis) build every model's stages.
    """

    def __init__(self, spatial_dims: int, n_stages: int | None = None, strides=None, kernel_sizes=None):
        if strides is None:
            n_stages = 6 if n_stages is None else int(n_stages)
            if n_stages < 1:
                raise ValueError(f"n_stages must be >= 1, got {n_stages}")
            strides = [1] + [2] * (n_stages - 1)
        elif n_stages is not None and int(n_stages) != len(strides):
            raise ValueError(f"n_stages {n_stages} disagrees with the {len(strides)} stages of strides {strides}")
        self.spatial_dims = spatial_dims
        self.strides = [_per_axis(s, spatial_dims, "stride") for s in strides]
        if any(s != 1 for s in self.strides[0]):
            raise ValueError(f"the first stage has stride 1 on every axis (full resolution), got strides {strides}")
        kernel_sizes = [3] * len(self.strides) if kernel_sizes is None else kernel_sizes
        if len(kernel_sizes) != len(self.strides):
            raise ValueError(f"{len(kernel_sizes)} kernel sizes for {len(self.strides)} stages (strides {strides})")
        self.kernel_sizes = [_per_axis(k, spatial_dims, "kernel size") for k in kernel_sizes]
        if any(k % 2 == 0 for ks in self.kernel_sizes for k in ks):
            raise ValueError(f"kernel sizes must be odd (same-size convolutions), got {kernel_sizes}")

    @property
    def n_stages(self) -> int:
        return len(self.strides)

    def cumulative(self, stage: int) -> tuple[int, ...]:
        """Per axis, how many input voxels one voxel of ``stage`` spans (the product of the strides up to it)."""
        return tuple(math.prod(s[axis] for s in self.strides[: stage + 1]) for axis in range(self.spatial_dims))

    @property
    def divisor(self) -> tuple[int, ...]:
        """Per axis, the multiple an input must have so that every stride divides it (the deepest cumulative stride)."""
        return self.cumulative(self.n_stages - 1)

    def stage(
        self, level: int, in_channels: int, out_channels: int, n_convs: int, downsample: bool = False
    ) -> ConvStage:
        """Conv stage at ``level`` (its kernel sizes); ``downsample``: the encoder stage, whose first conv strides."""
        stride = self.strides[level] if downsample else 1
        return ConvStage(self.spatial_dims, in_channels, out_channels, n_convs, stride, self.kernel_sizes[level])

    def up(self, level: int, in_channels: int, out_channels: int) -> nn.Module:
        """Transposed conv from level ``level + 1`` up to ``level``: kernel = stride = that stage's stride per axis."""
        stride = self.strides[level + 1]
        return Conv[Conv.CONVTRANS, self.spatial_dims](in_channels, out_channels, stride, stride=stride)

    def output_shape(self, shape, level: int) -> list[int]:
        """The size of level ``level``'s output for an input of ``shape`` (before padding)."""
        return [-(-int(s) // c) for s, c in zip(shape, self.cumulative(level))]

    def to_args(self) -> dict:
        """``strides`` and ``kernel_sizes`` as model arguments (lists, as in ``config.json``)."""
        return {"strides": [list(s) for s in self.strides], "kernel_sizes": [list(k) for k in self.kernel_sizes]}


class ConvNormAct(nn.Sequential):
    """Convolution -> InstanceNorm (affine, eps 1e-5) -> LeakyReLU(0.01): nnU-Net's plain conv unit.
    ``kernel_size`` and ``stride``: one int, or one per axis (same padding: kernel // 2 per axis)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size=3, stride=1):
        kernel = _per_axis(kernel_size, spatial_dims, "kernel size")
        super().__init__(
            Conv[Conv.CONV, spatial_dims](
                in_channels, out_channels, kernel, stride=stride, padding=tuple(k // 2 for k in kernel)
            ),
            Norm[Norm.INSTANCE, spatial_dims](out_channels, eps=1e-5, affine=True),
            Act[Act.LEAKYRELU](negative_slope=0.01, inplace=True),
        )


class ConvStage(nn.Sequential):
    """``n_convs`` conv units; the first one has ``stride`` (strided-conv downsampling, no pooling)."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, n_convs: int = 2, stride=1, kernel_size=3
    ):
        super().__init__(
            *[
                ConvNormAct(
                    spatial_dims,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size,
                    stride=stride if i == 0 else 1,
                )
                for i in range(n_convs)
            ]
        )


def init_he(module: nn.Module) -> None:
    """He initialisation (kaiming normal, a=0.01) of convolution weights, zero biases, as nnU-Net."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def pad_to_multiple(x: torch.Tensor, multiple) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial axes of ``x`` at their end to a multiple of ``multiple`` (one int, or one per axis);
    returns the original shape."""
    shape = tuple(x.shape[2:])
    multiples = _per_axis(multiple, len(shape), "multiple")
    pad = []
    for size, m in zip(reversed(shape), reversed(multiples)):
        pad += [0, (-size) % m]
    return (F.pad(x, pad) if any(pad) else x), shape


def crop_to(x: torch.Tensor, shape) -> torch.Tensor:
    """Crop the spatial axes of ``x`` to ``shape`` (undoes :func:`pad_to_multiple`)."""
    return x[(slice(None), slice(None)) + tuple(slice(0, int(s)) for s in shape)]
