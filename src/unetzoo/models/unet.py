"""nnU-Net's plain convolutional U-Net (2D and 3D) and the slice-by-slice 2D U-Net baseline.

``unet`` is the "equivalent standard 3D U-Net" of Naval Marimont & Tarroni 2022 (arXiv:2206.15217; its
reference [7], nnU-Net): two conv-InstanceNorm-LeakyReLU units per stage, strided-conv downsampling,
transposed-conv upsampling, widths 32-64-128-256-320-320 and deep supervision (one 1x1 head per decoder level,
weights 1/2^i). ``unet2d-slices`` is the 2D U-Net of Angermann & Haltmeier 2019 (arXiv:1910.10398): the same 2D
network applied to every slice of a volume along one axis, the slices stacked back.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from unetzoo.data.topology import pool_and_conv
from unetzoo.models.blocks import Topology, crop_to, init_he, pad_to_multiple, stage_widths, unet_plan_defaults
from unetzoo.models.registry import register


class PlainConvEncoder(nn.Module):
    """Stages of conv units; every stage but the first downsamples with a strided conv (its stride per axis).

    ``strides`` / ``kernel_sizes``: per stage, per axis (:class:`~unetzoo.models.blocks.Topology`); None = stride 2
    and kernel 3 on every axis. ``forward`` returns the feature map of every stage, finest first (the skips of a
    U-Net, or the multi-scale features that implicit-unet gathers at points).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        widths: list[int],
        convs_per_stage: list[int],
        strides=None,
        kernel_sizes=None,
    ):
        super().__init__()
        if len(widths) != len(convs_per_stage):
            raise ValueError(f"{len(widths)} widths but {len(convs_per_stage)} conv counts")
        self.widths = list(widths)
        self.topology = Topology(spatial_dims, len(widths), strides, kernel_sizes)
        self.stages = nn.ModuleList(
            self.topology.stage(i, in_channels if i == 0 else widths[i - 1], width, n_convs, downsample=True)
            for i, (width, n_convs) in enumerate(zip(widths, convs_per_stage))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class PlainConvDecoder(nn.Module):
    """Transposed-conv upsampling (kernel = stride per axis), concatenation with the skip, conv stage; a 1x1 head
    at every level. ``strides`` / ``kernel_sizes`` as :class:`PlainConvEncoder`'s."""

    def __init__(
        self,
        spatial_dims: int,
        widths: list[int],
        out_channels: int,
        convs_per_stage: int = 2,
        strides=None,
        kernel_sizes=None,
    ):
        super().__init__()
        topology = Topology(spatial_dims, len(widths), strides, kernel_sizes)
        conv = Conv[Conv.CONV, spatial_dims]
        levels = range(len(widths) - 2, -1, -1)  # from just above the bottleneck to the finest level
        self.ups = nn.ModuleList(topology.up(i, widths[i + 1], widths[i]) for i in levels)
        self.stages = nn.ModuleList(topology.stage(i, 2 * widths[i], widths[i], convs_per_stage) for i in levels)
        self.heads = nn.ModuleList(conv(widths[i], out_channels, 1) for i in levels)

    def forward(self, features: list[torch.Tensor], all_levels: bool) -> list[torch.Tensor]:
        """Logits, finest level first; only the finest unless ``all_levels`` (deep supervision)."""
        x = features[-1]
        outputs = []
        for level, (up, stage, head, skip) in enumerate(
            zip(self.ups, self.stages, self.heads, reversed(features[:-1]))
        ):
            x = stage(self.join(level, up(x), skip))
            if all_levels or skip is features[0]:
                outputs.append(head(x))
        return outputs[::-1]

    def join(self, level: int, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The input of decoder stage ``level`` (0 = deepest): the upsampled features next to the skip."""
        return torch.cat([upsampled, skip], dim=1)


@register(
    "unet",
    description="nnU-Net-style plain conv U-Net with deep supervision",
    paper="Isensee et al., nnU-Net, Nat Methods 2021 (ref. [7] of Naval Marimont & Tarroni 2022)",
    plan_defaults=unet_plan_defaults,
)
class UNet(nn.Module):
    """nnU-Net-style plain conv U-Net for 2D and 3D (``spatial_dims``).

    The topology is ``strides`` and ``kernel_sizes`` (per stage, per axis; the plan's), or ``n_stages`` isotropic
    stages (stride 2, kernel 3; default 6). Accepts any input size: pads every axis to a multiple of its cumulative
    stride and crops back. In training mode with ``deep_supervision`` it returns a list of logits, full resolution
    first, then one per decoder level at that level's resolution (each axis divided by its cumulative stride);
    otherwise the full-resolution logits.

    Example::

        net = UNet(spatial_dims=3, in_channels=1, out_channels=3, n_stages=4)
        logits = net.eval()(torch.zeros(1, 1, 37, 50, 35))  # -> (1, 3, 37, 50, 35)
        thin = UNet(3, 1, 3, strides=[1, [1, 2, 2], 2], kernel_sizes=[[1, 3, 3], 3, 3])  # pools the first axis once
    """

    decoder_class = PlainConvDecoder  # a variant swaps the decoder (attention-unet: gated skips)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        n_stages: int | None = None,
        base_features: int = 32,
        max_features: int = 320,
        convs_per_stage: int = 2,
        deep_supervision: bool = True,
        strides=None,
        kernel_sizes=None,
    ):
        super().__init__()
        self.topology = Topology(spatial_dims, n_stages, strides, kernel_sizes)
        self.n_stages = self.topology.n_stages
        self.widths = stage_widths(self.n_stages, base_features, max_features)
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        topology = self.topology.to_args()
        self.encoder = PlainConvEncoder(
            spatial_dims, in_channels, self.widths, [convs_per_stage] * self.n_stages, **topology
        )
        self.decoder = self.decoder_class(spatial_dims, self.widths, out_channels, convs_per_stage, **topology)
        self.apply(init_he)

    def forward(self, x: torch.Tensor):
        x, shape = pad_to_multiple(x, self.topology.divisor)
        outputs = self.decoder(self.encoder(x), all_levels=self.training and self.deep_supervision)
        outputs = [crop_to(out, self.topology.output_shape(shape, level)) for level, out in enumerate(outputs)]
        return outputs if self.training and self.deep_supervision else outputs[0]


class SliceWise(nn.Module):
    """Apply a 2D network to every slice of a 3D input along ``axis`` (0, 1 or 2 of D, H, W) and stack.

    Slices travel through the 2D network as one batch, so a (B, C, D, H, W) input costs one 2D forward
    of batch B*D. Deep-supervision lists are stacked level by level.
    """

    def __init__(self, net2d: nn.Module, axis: int = 0):
        super().__init__()
        if axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2, got {axis}")
        self.net2d = net2d
        self.axis = axis

    def forward(self, x: torch.Tensor):
        dim = 2 + self.axis
        moved = x.movedim(dim, 1)  # (B, S, C, a, b)
        b, s = moved.shape[:2]
        out = self.net2d(moved.reshape(b * s, *moved.shape[2:]))

        def restack(y):
            return y.reshape(b, s, *y.shape[1:]).movedim(1, dim)

        return [restack(y) for y in out] if isinstance(out, list) else restack(out)


def slices_plan_defaults(plan, config, train_cases=None) -> dict:
    """The 2D configuration of a volume: slices along the plan's through-plane axis (``slice_axis``, unless the user
    set one) with the 2D topology of the slice plane (its two axes of the patch and spacing); 2D data: ``unet``'s."""
    args = unet_plan_defaults(plan, config)
    if plan.spatial_dims == 2:
        return args
    axis = int(config.model_args.get("slice_axis", plan.slice_axis))
    if "strides" in args:
        plane = [a for a in range(3) if a != axis]
        spacing = plan.topology_spacing
        args["strides"], args["kernel_sizes"] = pool_and_conv(
            [plan.patch_size[a] for a in plane], spacing and [spacing[a] for a in plane]
        )
    return {**args, "slice_axis": axis}


@register(
    "unet2d-slices",
    description="2D U-Net applied slice by slice to volumes (the 2D baseline)",
    paper="Angermann & Haltmeier 2019, arXiv:1910.10398 (2D slice-by-slice baseline)",
    method="slices",
    plan_defaults=slices_plan_defaults,
)
def unet2d_slices(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    slice_axis: int = 0,
    n_stages: int | None = None,
    deep_supervision: bool = True,
    base_features: int = 32,
    **kwargs,
) -> nn.Module:
    """A 2D :class:`UNet` (same defaults; ``strides``/``kernel_sizes`` are those of the slice plane, two axes) wrapped
    in :class:`SliceWise` for volumes; a plain 2D U-Net for 2D data."""
    net2d = UNet(
        2,
        in_channels,
        out_channels,
        n_stages=n_stages,
        deep_supervision=deep_supervision,
        base_features=base_features,
        **kwargs,
    )
    return net2d if spatial_dims == 2 else SliceWise(net2d, slice_axis)
