"""Implicit U-Net (Naval Marimont & Tarroni 2022, MIUA 2022, arXiv:2206.15217): a convolutional encoder whose
multi-scale features are gathered at points and decoded by a DeepSDF-style MLP, instead of a U-Net decoder.

The authors never released code (their repository snavalm/imunet_miua22 holds only a README), so every
detail the paper leaves open is a choice made here; each one is listed with its reason.

Encoder (paper: "adapted from [7]" = nnU-Net; "2 blocks of 2 convolutions followed by 2 blocks of 4").
    * :class:`StridedEncoder`: the stages of ``unet``'s encoder (:class:`~unetzoo.models.blocks.ConvStage`: conv
      3^d, InstanceNorm, LeakyReLU 0.01), the same widths (32-64-128-256), so the comparison with ``unet`` is the
      paper's. Unlike ``unet``'s, **every** stage, the first included, begins with a stride-2 conv (the paper's
      strided-conv pooling):
      "each of the deepest feature vectors is used in the predictions of smaller areas (16x16x16 voxels)
      compared to the architecture with 5 blocks (32x32x32 voxels)" holds only if each of the 4 blocks halves
      the resolution, so stage s works at 1/2^(s+1) and the deepest at 1/16 (1/32 with 5 blocks). The paper's
      Fig. 1 counts the full-resolution image as the first map ("in the 2nd feature map get (4, 8)").
    * ``strides``: one stride per stage, an int or one per axis (default 2 everywhere); the gather follows them,
      per axis. The pipeline fills them from the patch (:func:`implicit_plan_defaults`): 2 on an axis while its
      map keeps at least 2 voxels, 1 after, so the paper's 16^3 cells hold for any patch of >= 17 voxels per axis
      (the hippocampus patch 40x56x40 included) and a smaller axis stops pooling instead of ending in a single
      voxel (which instance normalisation cannot normalise in training). This is not the U-Net planner's rule
      (pool while the map stays >= 4): at the hippocampus patch that rule would stop at 8^3 cells, the very
      encoder the paper's design moved away from.
    * Default 4 stages with (2, 2, 4, 4) convs; ``n_stages=5`` (or any other) gives ``n_stages`` stages of 2
      convs, the paper's "original architecture" option; ``convs_per_stage`` may also be given as a list.
    * The depth is **not** filled from the patch by the pipeline (its plan defaults give only the strides):
      the paper fixes 4 stages on purpose (each deepest vector covers 16^3 voxels; its receptive
      field is grown by convs per block, not by depth), and the floor-index gather works for any input size,
      so nothing about the patch requires another depth. Set ``--set model_args.n_stages=5`` to change it.

Gather (paper: "for a point p ... concatenate the vectors with coordinates p // 2^b from the b feature maps").
Stage s's cell, the input voxels one of its vectors stands for, is its cumulative stride c_s per axis (the
product of the strides of stages 0..s: 2^(s+1) by default, so the deepest cell is 16^3).
    * ``gather="floor"`` (**default**): the paper's operation. A point at continuous patch coordinate p (voxel
      units, voxel centres at integers) first takes its nearest voxel v = floor(p + 1/2), then the stage-s
      vector at v // c_s per axis (clamped into the map). It is what the paper describes and evaluates (its
      "patchy artefacts" discussion is about exactly this operation, and its 4x(2,2,4,4) design answers it),
      it is an exact index lookup (cheapest; nothing to interpolate or store for backward), and it keeps
      the comparison with ``unet`` the paper's.
    * ``gather="trilinear"``: (bi/tri)linear interpolation of every stage at p / c_s per axis (stage-s vector j
      sits at input voxel c_s j: a stride-t, kernel-3, padding-1 conv centres output j on input t j), border
      padding. Smoother across the cells of the deep maps, at the price of 2^d reads per stage and point.
      Offered as an option, not the default, because it is not what the paper measured.

Coordinates. p is in voxel units of the patch (0 .. S-1 at voxel centres) and is normalised to [-1, 1] with
the voxel-edge convention u = (2p + 1) / S - 1 (the patch's outer voxel edges map to -1 and 1), so that
continuous training points anywhere in the patch, and the sub-voxel points of ``--upsample``, stay in [-1, 1].
NeRF positional encoding with L = 10 frequencies: [u, sin(2^k pi u), cos(2^k pi u) for k < L] per axis; u itself
is kept, as in NeRF's released code (``include_input``); the paper only cites the function.

Decoder (paper: "the architecture proposed in [16]" = DeepSDF).
    * 8 hidden fully connected layers of 512, weight normalisation on each of them, ReLU, dropout 0.2 after each
      (training only), and a plain linear head to the class logits (DeepSDF's head is not weight-normed; its tanh
      is dropped for logits).
    * DeepSDF feeds the input again at layer 4 (``latent_in=[4]``), making layer 3 output 512 - input width so
      that the concatenation is 512 wide. Our input is wider than 512 (480 features + 63 encoding = 543 in 3D),
      so layer 3 outputs 512 and layer 4 takes 512 + input width. Whether the paper kept the skip is unknown;
      DeepSDF's default is to keep it, and so do we (``latent_in=None`` removes it).
    * "8 fully-connected layers with all hidden layers with 512 units" is read, as DeepSDF's code has it, as 8
      hidden layers of 512 plus the output layer (``n_layers=7`` gives the other reading, 7 hidden + output).

Cost (training on CPU is dominated by the 8 x 512 MLP on k x B points and by the encoder's first two stages;
everything below is exact, i.e. changes no number beyond float rounding, unless said otherwise):
    * The two layers that read the input (0 and ``latent_in``) split their weight into one block per stage. A
      stage whose map is wide (>= 128 channels) and holds at most a quarter as many vectors as there are points
      (the deep stages) is multiplied by its blocks first (a 1x1 conv over the map) and the 512-wide products
      are gathered instead of the features: gather and product commute (the gather is an index or a fixed
      interpolation), and 30,000 points otherwise repeat the product of a few hundred deep vectors. Narrow maps
      are gathered: on CPU the 512-wide gather (and its scatter-add backward) costs more than the product saved.
      Each product is gathered only when its layer runs (one (points x 512) tensor alive at a time).
    * Gathers read channels-last rows with ``index_select`` (backward: a row-wise ``index_add``); a channels-first
      map larger than the point set is read in place instead of being copied.
    * ReLU + dropout is one in-place step (:class:`_ReLUDropout`) that keeps only its output for backward (three
      tensors per layer otherwise: linear output, ReLU output, dropout mask); the skip layer multiplies its two
      inputs separately instead of keeping a concatenated copy. The dropout mask is drawn as 16 random bits per
      unit (p exact to 1/65536), about 5x faster on CPU than ``bernoulli_``. Same distribution, other draws.
    * Weight-normed weights are computed once per decoder call (``parametrize.cached``), not once per access.
    * ``checkpoint=True`` (the default): in training the decoder runs in chunks of ``train_chunk`` points whose
      activations are recomputed in backward, one chunk at a time; it removes the MLP's activation memory (8 x 512
      floats per point, 236 MB for 2 x 7,200 points) for one more MLP forward, so that training memory stays below
      ``unet``'s as in the paper (0.71-0.73; measured, docs/results/). Exact: the same gradients.

``forward(x)`` decodes every voxel centre (chunks of ``chunk`` points when gradients are off) and returns dense
logits (B, K, *spatial), so the model also works anywhere a dense network is expected. The efficient paths
are :meth:`encode` + :meth:`decode` on chosen points, used by :class:`unetzoo.methods.implicit.ImplicitMethod`.

Example::

    net = ImplicitUNet(spatial_dims=3, in_channels=1, out_channels=3)
    features = net.encode(torch.zeros(2, 1, 40, 56, 40))
    logits = net.decode(features, torch.rand(2, 1000, 3) * 39)  # (2, 1000, 3) logits at the points
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from unetzoo.models.blocks import ConvStage, init_he, stage_widths
from unetzoo.models.registry import register
from unetzoo.models.unet import PlainConvEncoder

PAPER_CONVS = (2, 2, 4, 4)
PROJECTION_BUDGET = 2**26  # elements of the precomputed products of one stage (256 MB in float32)
FACTORISE_MIN_WIDTH = 128  # channels below which a stage is gathered, not multiplied first (see _products)


def normalise_coordinates(points: torch.Tensor, size) -> torch.Tensor:
    """Patch voxel coordinates -> [-1, 1] with voxel edges at +-1: u = (2p + 1) / S - 1 per axis."""
    size = torch.as_tensor(list(size), dtype=points.dtype, device=points.device)
    return (2 * points + 1) / size - 1


def positional_encoding(u: torch.Tensor, frequencies: int) -> torch.Tensor:
    """NeRF encoding of (..., d) coordinates: [u, sin(2^k pi u), cos(2^k pi u) for k < L] -> (..., d (1 + 2L))."""
    if frequencies == 0:
        return u
    scales = (2.0 ** torch.arange(frequencies, dtype=u.dtype, device=u.device)) * math.pi
    angles = (u[..., None] * scales).flatten(-2)  # (..., d * L), axis-major
    return torch.cat([u, torch.sin(angles), torch.cos(angles)], dim=-1)


def _drop_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Bool mask, True with probability p (to 1/65536): 16 random bits per element, compared to a threshold.
    About 5x faster on CPU than ``bernoulli_`` (what F.dropout uses): the bits come from one 64-bit draw per 4
    elements and the comparison runs on int16."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    bits = words.view(torch.int16)[:n].view(x.shape)
    return bits < -32768 + round(p * 65536)


class _ReLUDropout(torch.autograd.Function):
    """relu(x) * keep / (1 - p), in place, keep ~ Bernoulli(1 - p). The backward needs only the output (y > 0
    marks the units that passed both), so a layer keeps one tensor for backward where ReLU then Dropout keep
    three, and the backward is one fused ReLU-backward kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        scale = 1.0 / (1.0 - p)
        x.clamp_min_(0).mul_(scale).masked_fill_(_drop_mask(x, p), 0.0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, y, 0.0).mul_(ctx.scale), None


class StridedEncoder(nn.Module):
    """Conv stages whose first conv has the stage's stride (per axis), the first stage included (module docstring);
    ``forward`` returns every stage's feature map, finest first."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        widths: list[int],
        convs_per_stage: list[int],
        strides: list[list[int]],
    ):
        super().__init__()
        self.stages = nn.ModuleList(
            ConvStage(spatial_dims, in_channels if i == 0 else widths[i - 1], width, n_convs, stride=tuple(stride))
            for i, (width, n_convs, stride) in enumerate(zip(widths, convs_per_stage, strides))
        )

    forward = PlainConvEncoder.forward  # the same loop over ``self.stages``; only the first stage's stride differs


class ImplicitDecoder(nn.Module):
    """DeepSDF MLP: ``n_layers`` weight-normed FC layers of ``hidden`` with ReLU and dropout, the input again at
    layer ``latent_in``, a linear head. :meth:`input_layers` are the layers that read the input."""

    def __init__(
        self,
        in_features: int,
        out_channels: int,
        hidden: int = 512,
        n_layers: int = 8,
        latent_in: int | None = 4,
        dropout: float = 0.2,
    ):
        super().__init__()
        if latent_in is not None and not 0 < latent_in < n_layers:
            raise ValueError(f"latent_in must be between 1 and {n_layers - 1}, got {latent_in}")
        self.in_features, self.latent_in = in_features, latent_in
        self.layers = nn.ModuleList(
            weight_norm(nn.Linear((in_features if i == 0 else hidden) + (in_features if i == latent_in else 0), hidden))
            for i in range(n_layers)
        )
        self.dropout = dropout
        self.head = nn.Linear(hidden, out_channels)

    def forward(
        self,
        x: torch.Tensor,
        columns: torch.Tensor | None = None,
        pre: list | None = None,
        weights: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits (M, K) of inputs ``x`` (M, in_features).

        Factorised form (see :meth:`ImplicitUNet.decode_flat`): ``x`` holds only the input ``columns`` (indices
        into the full input), and ``pre[j]()`` returns (M, hidden), the product of the missing columns by
        input-reading layer j (layer 0, then ``latent_in``), computed elsewhere (called when the layer runs, so
        that only one of them is alive at a time). ``weights``: the layers' (weight-normed) weights, when the
        caller computed them already.

        Same function as Linear -> ReLU -> Dropout per layer, written to keep one (M, hidden) tensor per layer
        for backward instead of three: the products accumulate in place, the skip layer multiplies its two
        inputs separately (no concatenated copy), and ReLU + dropout is one in-place step that saves only its
        output (:class:`_ReLUDropout`).
        """
        h, j = None, 0
        for i, layer in enumerate(self.layers):
            weight = layer.weight if weights is None else weights[i]  # weight-normed (hidden, [hidden +] in_features)
            bias = layer.bias
            if i == 0 or i == self.latent_in:
                skip = weight.shape[1] - self.in_features  # columns of h ahead of the input's (0 in layer 0)
                w_in = weight[:, skip:] if columns is None else weight[:, skip + columns]
                out = torch.addmm(bias, x, w_in.t()) if pre is None else torch.addmm(pre[j](), x, w_in.t()).add_(bias)
                if skip:  # (in place: not covered by autocast, hence the explicit dtype)
                    out = out.addmm_(h, weight[:, :skip].t().to(h.dtype))
                j += 1
            else:
                out = torch.addmm(bias, h, weight.t()) if h.dim() == 2 else F.linear(h, weight, bias)
            if self.dropout > 0 and self.training:
                h = _ReLUDropout.apply(out, self.dropout)
            else:
                h = F.relu(out, inplace=True)
        return self.head(h)

    def input_layers(self) -> list[nn.Module]:
        """The layers that read the input: 0 and ``latent_in``."""
        return [self.layers[0]] + ([self.layers[self.latent_in]] if self.latent_in is not None else [])


class ImplicitUNet(nn.Module):
    """Implicit U-Net for 2D and 3D (``spatial_dims``); see the module docstring for every design choice.

    Args:
        n_stages: encoder stages (default 4, the paper's); with 4 and no ``convs_per_stage`` the convs per stage
            are (2, 2, 4, 4), otherwise 2 per stage.
        convs_per_stage: an int (every stage) or a list (one per stage; its length wins over ``n_stages``).
        base_features, max_features: widths as ``unet`` (32 doubled per stage, capped at 320).
        hidden, n_layers, latent_in, dropout: the DeepSDF decoder (512, 8, 4, 0.2).
        strides: per stage, its downsampling stride, an int or one per axis (default 2: every stage halves every
            axis; the deepest cell is 16^d with 4 stages).
        frequencies: positional-encoding frequencies L (10).
        gather: ``"floor"`` (default, the paper's index gather) or ``"trilinear"``.
        chunk: points per decoder pass when gradients are off (bounds inference memory).
        factorise: multiply the deep stages by their weight block before the gather (exact; a speed option).
        checkpoint: in training, run the decoder in chunks of ``train_chunk`` points and recompute each chunk's
            activations in backward (same gradients; trades one more decoder forward for its activation memory,
            8 x points x 512 floats).
        train_chunk: points per recomputed chunk in training (with ``checkpoint``; fewer points are not chunked).
    Any input size works (no padding needed: stage s has ceil(S / c_s) voxels per axis and v // c_s is inside
    it, c_s its cumulative stride).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        n_stages: int = 4,
        convs_per_stage: int | list[int] | None = None,
        strides: list | None = None,
        base_features: int = 32,
        max_features: int = 320,
        hidden: int = 512,
        n_layers: int = 8,
        latent_in: int | None = 4,
        dropout: float = 0.2,
        frequencies: int = 10,
        gather: str = "floor",
        chunk: int = 65536,
        factorise: bool = True,
        checkpoint: bool = True,
        train_chunk: int = 4096,
    ):
        super().__init__()
        if gather not in ("floor", "trilinear"):
            raise ValueError(f"gather must be 'floor' or 'trilinear', got {gather!r}")
        if isinstance(convs_per_stage, (list, tuple)):
            convs = [int(c) for c in convs_per_stage]
        elif convs_per_stage is None:
            convs = list(PAPER_CONVS) if n_stages == 4 else [2] * n_stages
        else:
            convs = [int(convs_per_stage)] * n_stages
        self.spatial_dims, self.num_classes = spatial_dims, out_channels
        self.gather, self.frequencies, self.chunk, self.factorise = gather, frequencies, chunk, factorise
        self.checkpoint, self.train_chunk = checkpoint, int(train_chunk)
        strides = [2] * len(convs) if strides is None else list(strides)
        if len(strides) != len(convs):
            raise ValueError(f"{len(convs)} stages but {len(strides)} strides")
        self.strides = [[int(t)] * spatial_dims if isinstance(t, int) else [int(a) for a in t] for t in strides]
        if any(len(t) != spatial_dims or min(t) < 1 for t in self.strides):
            raise ValueError(
                f"strides must be positive, one per stage (an int or {spatial_dims} per axis), got {strides}"
            )
        self.cells = [
            [math.prod(t[a] for t in self.strides[: s + 1]) for a in range(spatial_dims)] for s in range(len(convs))
        ]
        self.widths = stage_widths(len(convs), base_features, max_features)
        self.convs_per_stage = convs
        self.encoder = StridedEncoder(spatial_dims, in_channels, self.widths, convs, self.strides)
        self.encoding_features = spatial_dims * (1 + 2 * frequencies)
        self.in_features = sum(self.widths) + self.encoding_features
        self.decoder = ImplicitDecoder(self.in_features, out_channels, hidden, n_layers, latent_in, dropout)
        self.encoder.apply(init_he)
        # input columns of the decoder's first layer: stage blocks in order, then the encoding
        bounds = [0]
        for w in self.widths + [self.encoding_features]:
            bounds.append(bounds[-1] + w)
        self._blocks = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]

    # ---- the two halves ------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every encoder stage, finest (1/2 resolution by default) first."""
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor], points: torch.Tensor, size=None) -> torch.Tensor:
        """Logits (B, N, K) at ``points`` (B, N, d): continuous voxel coordinates of the encoded patch.
        ``size`` is the patch's spatial size (default: the finest feature map's)."""
        b, n = points.shape[:2]
        batch_index = torch.arange(b, device=points.device).repeat_interleave(n)
        return self.decode_flat(features, batch_index, points.reshape(b * n, -1), size).reshape(b, n, -1)

    def decode_flat(
        self, features: list[torch.Tensor], batch_index: torch.Tensor, points: torch.Tensor, size=None
    ) -> torch.Tensor:
        """Logits (M, K) at ``points`` (M, d) of patch ``batch_index`` (M,): any number of points per patch.

        Without gradients the points go through the MLP in chunks of ``self.chunk``. With ``factorise``, the
        deep stages are first multiplied by their block of the input-reading layers (once for all chunks; see
        the module docstring) and the products are gathered instead of the features.
        """
        with parametrize.cached():  # the weight-normed weights are computed once per call, not per access
            return self._decode_chunks(features, batch_index, points, size)

    def _decode_chunks(self, features, batch_index, points, size) -> torch.Tensor:
        size = tuple(features[0].shape[2:]) if size is None else tuple(int(s) for s in size)
        n = points.shape[0]
        products = self._products(features, n) if self.factorise else {}
        # chunks whose MLP activations are recomputed in backward (one chunk would hold them all again: no saving)
        if torch.is_grad_enabled() and self.checkpoint and n > self.train_chunk:
            from torch.utils.checkpoint import checkpoint

            weights = [layer.weight for layer in self.decoder.layers]  # outside the recomputed part
            pieces = [
                checkpoint(
                    self._decode,
                    features,
                    products,
                    batch_index[i : i + self.train_chunk],
                    points[i : i + self.train_chunk],
                    size,
                    weights,
                    use_reentrant=False,
                )
                for i in range(0, n, self.train_chunk)
            ]
        else:
            chunk = n if torch.is_grad_enabled() else self.chunk
            pieces = [
                self._decode(features, products, batch_index[i : i + chunk], points[i : i + chunk], size)
                for i in range(0, n, chunk)
            ]
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense logits (B, K, *spatial): the decoder at every voxel centre."""
        features = self.encode(x)
        size = x.shape[2:]
        grid = voxel_grid(size, x.device, x.dtype)  # (V, d)
        b = x.shape[0]
        logits = self.decode(features, grid.expand(b, -1, -1), size)  # (B, V, K)
        return logits.transpose(1, 2).reshape(b, self.num_classes, *size)

    # ---- gather --------------------------------------------------------------------------------------
    def gather_features(
        self, features: list[torch.Tensor], batch_index: torch.Tensor, points: torch.Tensor, stages=None
    ) -> list[torch.Tensor]:
        """The feature vector (M, C_s) of every stage s (or of ``stages``) at the points, by the model's gather."""
        stages = range(len(features)) if stages is None else stages
        voxel = nearest_voxels(points) if self.gather == "floor" else None
        return [self._gather(features[s], batch_index, points, s, voxel=voxel) for s in stages]

    def _gather(
        self,
        feature: torch.Tensor,
        batch_index: torch.Tensor,
        points: torch.Tensor,
        stage: int,
        channels_last: bool = False,
        voxel: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Vectors (M, C) of one stage's map, (B, C, *S) or with ``channels_last`` (B, *S, C). ``voxel``: the
        points' nearest voxels (M, d), when already known."""
        cell = torch.tensor(self.cells[stage], device=points.device)
        if self.gather == "floor":
            voxel = nearest_voxels(points) if voxel is None else voxel
            return _gather_index(feature, batch_index, torch.div(voxel, cell, rounding_mode="floor"), channels_last)
        if channels_last:
            feature = feature.movedim(-1, 1)
        return _gather_linear(feature, batch_index, points / cell.to(points.dtype))

    def point_inputs(
        self, features: list[torch.Tensor], batch_index: torch.Tensor, points: torch.Tensor, size
    ) -> torch.Tensor:
        """The decoder input (M, in_features): every stage's vector at the points, then the encoded coordinates."""
        encoding = positional_encoding(normalise_coordinates(points, size), self.frequencies)
        return torch.cat(self.gather_features(features, batch_index, points) + [encoding.to(features[0].dtype)], dim=-1)

    def _products(self, features: list[torch.Tensor], n_points: int) -> dict[int, list[torch.Tensor]]:
        """Channels-last products (B, *S_s, hidden), one per input-reading layer, of the stages worth multiplying
        before the gather:
        maps with at most a quarter as many vectors as there are points, and at least ``FACTORISE_MIN_WIDTH``
        channels (for narrow maps the wide gather costs more on CPU than the per-point product it saves)."""
        layers = self.decoder.input_layers()
        width = len(layers) * layers[0].weight.shape[0]
        offsets = [layer.weight.shape[1] - self.in_features for layer in layers]  # latent_in layer: h columns first
        products = {}
        for s, f in enumerate(features):
            vectors = f.shape[0] * f[0, 0].numel()
            if f.shape[1] < FACTORISE_MIN_WIDTH or 4 * vectors > n_points or vectors * width > PROJECTION_BUDGET:
                continue
            lo, hi = self._blocks[s]
            channels_last = f.movedim(1, -1)
            products[s] = [
                F.linear(channels_last, layer.weight[:, o + lo : o + hi]) for layer, o in zip(layers, offsets)
            ]
        return products

    def _decode(self, features, products, batch_index, points, size, weights=None) -> torch.Tensor:
        if not products:
            return self.decoder(self.point_inputs(features, batch_index, points, size), weights=weights)
        direct = [s for s in range(len(features)) if s not in products]
        encoding = positional_encoding(normalise_coordinates(points, size), self.frequencies).to(features[0].dtype)
        x = torch.cat(self.gather_features(features, batch_index, points, direct) + [encoding], dim=-1)

        voxel = nearest_voxels(points) if self.gather == "floor" else None

        def gathered(j: int):
            def compute() -> torch.Tensor:
                total = None
                for s, product in products.items():
                    g = self._gather(product[j], batch_index, points, s, channels_last=True, voxel=voxel)
                    total = g if total is None else total.add_(g)
                return total

            return compute

        columns = torch.cat([torch.arange(*self._blocks[s], device=points.device) for s in direct + [len(features)]])
        return self.decoder(x, columns, [gathered(j) for j in range(len(self.decoder.input_layers()))], weights)


def nearest_voxels(points: torch.Tensor) -> torch.Tensor:
    """Integer index (M, d) of the voxel whose cell holds each continuous point: floor(p + 1/2)."""
    return torch.floor(points + 0.5).long()


def voxel_grid(size, device=None, dtype=torch.float32) -> torch.Tensor:
    """Integer voxel coordinates (V, d) of a grid of ``size``, C order (last axis fastest)."""
    axes = [torch.arange(int(s), device=device, dtype=dtype) for s in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))


def _gather_index(
    feature: torch.Tensor, batch_index: torch.Tensor, index: torch.Tensor, channels_last: bool = False
) -> torch.Tensor:
    """Vectors (M, C) of ``feature`` at integer ``index`` (M, d), clamped into the map. ``feature`` is (B, C, *S),
    or (B, *S, C) with ``channels_last``. Rows of a channels-last table are read with ``index_select`` (its
    backward is a row-wise ``index_add``); a channels-first map with fewer vectors than points is made
    channels-last first (a small copy), a larger one is read in place (strided)."""
    shape = feature.shape[1:-1] if channels_last else feature.shape[2:]
    linear = torch.zeros_like(index[:, 0])
    for axis, size in enumerate(shape):
        linear = linear * size + index[:, axis].clamp(0, size - 1)
    b, count = feature.shape[0], math.prod(shape)
    if not channels_last and b * count > index.shape[0]:
        return feature.flatten(2)[batch_index, :, linear]
    rows = (
        feature.reshape(b * count, -1) if channels_last else feature.flatten(2).transpose(1, 2).reshape(b * count, -1)
    )
    return rows.index_select(0, batch_index * count + linear)


def _gather_linear(feature: torch.Tensor, batch_index: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """(Bi/tri)linear interpolation (M, C) of ``feature`` (B, C, *S) at continuous indices ``position`` (M, d);
    border padding."""
    shape = feature.shape[2:]
    d = len(shape)
    scale = torch.tensor([2.0 / max(s - 1, 1) for s in shape], device=position.device, dtype=position.dtype)
    grid = (position * scale - 1).flip(-1)  # grid_sample wants (x, y[, z]) = last axis first
    grid = torch.where(
        torch.tensor([s == 1 for s in reversed(shape)], device=grid.device), torch.zeros_like(grid), grid
    )
    out = torch.empty(position.shape[0], feature.shape[1], dtype=feature.dtype, device=feature.device)
    for b in range(feature.shape[0]):  # patches hold different numbers of points: one grid_sample per patch
        mask = batch_index == b
        if not bool(mask.any()):
            continue
        g = grid[mask].reshape(1, -1, *([1] * (d - 1)), d).to(feature.dtype)
        sampled = F.grid_sample(feature[b : b + 1], g, mode="bilinear", padding_mode="border", align_corners=True)
        out = out.index_put((mask.nonzero()[:, 0],), sampled.reshape(feature.shape[1], -1).t())
    return out


MIN_DEEP_EDGE = 2  # voxels an axis keeps at the deepest stage before it stops pooling (see the module docstring)


def patch_strides(patch, n_stages: int) -> list[list[int]]:
    """Per stage, per axis: 2 while the axis's map keeps >= ``MIN_DEEP_EDGE`` voxels after the stride, else 1."""
    size, strides = [int(p) for p in patch], []
    for _ in range(n_stages):
        step = [2 if -(-s // 2) >= MIN_DEEP_EDGE else 1 for s in size]
        size = [-(-s // t) for s, t in zip(size, step)]
        strides.append(step)
    return strides


def implicit_plan_defaults(plan, config, train_cases=None) -> dict:
    """The strides for the plan's patch (:func:`patch_strides`); the depth stays the paper's 4 stages (or the
    user's ``n_stages`` / ``convs_per_stage``), and a user's ``strides`` win."""
    if "strides" in config.model_args:
        return {}
    convs = config.model_args.get("convs_per_stage")
    n_stages = (
        len(convs) if isinstance(convs, (list, tuple)) else int(config.model_args.get("n_stages", len(PAPER_CONVS)))
    )
    return {"strides": patch_strides(plan.patch_size, n_stages)}


@register(
    "implicit-unet",
    description="conv encoder + multi-scale point gather + DeepSDF MLP decoder; sparse broad-then-fine inference",
    paper="Naval Marimont & Tarroni, Implicit U-Net, MIUA 2022 (arXiv:2206.15217)",
    method="implicit",
    spatial_dims=(2, 3),
    plan_defaults=implicit_plan_defaults,
)
def implicit_unet(
    spatial_dims: int, in_channels: int, out_channels: int, base_features: int = 32, **kwargs
) -> ImplicitUNet:
    """:class:`ImplicitUNet`; the pipeline fills only the strides (:func:`implicit_plan_defaults`), never the depth:
    the paper's 4 stages stay, not nnU-Net's patch-dependent depth (pass ``n_stages`` to change it)."""
    return ImplicitUNet(spatial_dims, in_channels, out_channels, base_features=base_features, **kwargs)
