"""U-Net++ (Zhou et al., IEEE TMI 2019; ref. [17] of Carvalho et al. 2021, arXiv:2103.11713): nested dense skips
and deep supervision, 2D and 3D.

Nodes ``X^{i,j}``: ``i`` is the depth (resolution ``1/2^i`` with isotropic strides; per axis,
the cumulative stride of stage ``i``), ``j`` the column. ``X^{i,0}`` is the encoder;
every other node is ``X^{i,j} = H(concat[Up(X^{i+1,j-1}), X^{i,0}, ..., X^{i,j-1}])`` (the upsampled input
first, as Zhou's code), with ``H`` a conv stage and ``Up`` its own transposed convolution. A 1x1 head on
every ``X^{0,j}``, ``j = 1..n-1``, gives ``n-1`` full-resolution outputs.

For a fair comparison with ``unet`` the conv units, widths (32 doubled per stage, capped at 320),
strided-conv downsampling, transposed-conv upsampling and He initialisation are those of
:class:`unetzoo.models.unet.UNet`, not Zhou's (ELU, no normalisation, max pooling, widths 32-512).

Deep supervision: in training mode with ``deep_supervision`` the model returns the logits of every
head as a list, **deepest head first** -- ``[X^{0,n-1}, X^{0,n-2}, ..., X^{0,1}]`` -- so that
``outputs[0]`` is the head used at inference. All heads are at full resolution and the
dense method weights them equally (``head_weights="equal"`` in the registration): the loss is computed on each head and averaged
(Zhou's code, and the maintainer's answer in MrGiovanni/UNetPlusPlus#29: no averaging of outputs
before the loss).

Inference (eval mode, or training without deep supervision) returns one logits map chosen by
``eval_head``: ``None`` (default) = the last head ``X^{0,n-1}``; an int ``j`` in ``1..n-1`` = Zhou's
*pruned* network of depth ``j`` (only the nodes that ``X^{0,j}`` needs are computed, so inference is
cheaper); ``"mean"`` = Zhou's *accurate mode*, the average of all heads (averaged as logits here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from unetzoo.models.blocks import Topology, crop_to, init_he, pad_to_multiple, stage_widths, unet_plan_defaults
from unetzoo.models.registry import register

NodeFactory = Callable[[int, int, int, int, bool], nn.Module]
"""``make_node(i, j, in_channels, out_channels, downsample) -> module`` builds node ``X^{i,j}`` (``downsample``: an
encoder node ``X^{i,0}``, whose first conv has the stride of stage ``i``; its kernel sizes are those of level ``i``)."""


@register(
    "unetpp",
    description="U-Net++: nested dense skips, deep supervision on every X^{0,j} (nnU-Net conv units)",
    paper="Zhou et al., UNet++, IEEE TMI 2019 (ref. [17] of Carvalho et al. 2021, arXiv:2103.11713)",
    plan_defaults=unet_plan_defaults,
    method_defaults={"head_weights": "equal"},
)
class UNetPlusPlus(nn.Module):
    """U-Net++ for 2D and 3D (``spatial_dims``) with deep supervision on every ``X^{0,j}``.

    Topology (``strides``, ``kernel_sizes`` per stage and axis, or ``n_stages`` isotropic stages) as
    :class:`~unetzoo.models.unet.UNet`: node ``X^{i,j}`` has level ``i``'s kernel sizes and ``Up`` into level ``i``
    the stride of stage ``i+1``. Accepts any input size (pads to a multiple of the cumulative stride per axis and
    crops back). ``make_node``
    replaces the conv stage of chosen nodes (used by ``sdn-unetpp``); by default every node is two
    conv-InstanceNorm-LeakyReLU units.

    Example::

        net = UNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=2, n_stages=5)
        heads = net.train()(torch.zeros(2, 1, 96, 96))  # 4 tensors (2, 2, 96, 96), X^{0,4} first
        logits = net.eval()(torch.zeros(1, 1, 45, 37))  # (1, 2, 45, 37), from X^{0,4}
    """

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
        eval_head: int | str | None = None,
        make_node: NodeFactory | None = None,
        strides=None,
        kernel_sizes=None,
    ):
        super().__init__()
        self.topology = topology = Topology(spatial_dims, n_stages, strides, kernel_sizes)
        n_stages = topology.n_stages
        if n_stages < 2:
            raise ValueError(f"U-Net++ needs n_stages >= 2, got {n_stages}")
        if not (eval_head is None or eval_head == "mean" or (isinstance(eval_head, int) and 1 <= eval_head < n_stages)):
            raise ValueError(f"eval_head must be None, 'mean' or an int in 1..{n_stages - 1}, got {eval_head!r}")
        if make_node is None:

            def make_node(i, j, cin, cout, downsample):
                return topology.stage(i, cin, cout, convs_per_stage, downsample)

        widths = stage_widths(n_stages, base_features, max_features)
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = spatial_dims
        self.n_stages = n_stages
        self.widths = widths
        self.deep_supervision = deep_supervision
        self.eval_head = eval_head
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for i in range(n_stages):
            cin = in_channels if i == 0 else widths[i - 1]
            self.nodes[f"{i}_0"] = make_node(i, 0, cin, widths[i], True)
        for j in range(1, n_stages):
            for i in range(n_stages - j):
                self.ups[f"{i}_{j}"] = topology.up(i, widths[i + 1], widths[i])
                self.nodes[f"{i}_{j}"] = make_node(i, j, widths[i] * (j + 1), widths[i], False)
        self.heads = nn.ModuleList(
            conv(widths[0], out_channels, 1) for _ in range(1, n_stages)
        )  # heads[j-1] on X^{0,j}
        self.apply(init_he)

    def _features(self, x: torch.Tensor, depth: int) -> dict[tuple[int, int], torch.Tensor]:
        """Every node ``X^{i,j}`` with ``i + j <= depth`` (what the heads up to ``X^{0,depth}`` need)."""
        feats: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(depth + 1):
            x = self.nodes[f"{i}_0"](x)
            feats[i, 0] = x
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                inputs = [self.ups[f"{i}_{j}"](feats[i + 1, j - 1])] + [feats[i, k] for k in range(j)]
                feats[i, j] = self.nodes[f"{i}_{j}"](torch.cat(inputs, dim=1))
        return feats

    def forward(self, x: torch.Tensor):
        x, shape = pad_to_multiple(x, self.topology.divisor)
        last = self.n_stages - 1
        supervised = self.training and self.deep_supervision
        if supervised or self.eval_head == "mean":
            columns = list(range(last, 0, -1))
        elif self.eval_head is None:
            columns = [last]
        else:
            columns = [int(self.eval_head)]
        feats = self._features(x, max(columns))
        outputs = [crop_to(self.heads[j - 1](feats[0, j]), shape) for j in columns]
        if supervised:
            return outputs
        if len(outputs) > 1:
            return torch.stack(outputs).mean(dim=0)
        return outputs[0]
