"""NISF: neural implicit segmentation function, an auto-decoder MLP (Stolt-Ansó et al. 2023, arXiv:2309.08643; the
authors' released code, NILOIDE/Implicit_segmentation).

The network maps a point's coordinates ``x`` and its subject's latent code ``h`` to a segmentation and an image
intensity (Stolt-Ansó et al. 2023, §3, Eq. 1-2): f_seg(x, h) = softmax over classes, f_rec(x, h) = sigmoid.
Every choice:

* **Activation**: the real Gabor wavelet of WIRE (Stolt-Ansó et al. 2023, §3, ref. [21]) as the authors' ``WIRE`` class:
  y = cos(w0 * Wf x) * exp(-(s0 * Ws x)^2), two independent linear maps (with bias) per layer, w0 = s0 = 10,
  PyTorch's default linear init (the authors use no SIREN-style init).
* **Backbone**: the authors' ``ResMLP`` (Stolt-Ansó et al. 2023, §4 "8 residual layers, each with 128 hidden
  units"): layer 0 takes concat(coords, h); layer k's output is WIRE_k(input_k) + output_{k-1}, with
  output_{-1} = h itself, so the first skip adds the raw latent (hence ``latent_size`` must equal ``width``,
  128 = 128 in the paper). The latent enters only at the input and through that first skip. No normalisation, no
  dropout.
* **Latent table**: one 128-vector per training subject (Stolt-Ansó et al. 2023, §3 "Shared Prior"), an
  ``nn.Embedding`` inside the model (so checkpoints, resume and DDP carry it), initialised N(0, 1e-4) as the
  authors' ``h_init_std``.
* **Heads**: linear width -> classes (softmax) and width -> image channels (sigmoid). The model returns both
  heads' logits; the method applies softmax/sigmoid (losses on logits are numerically stable).
* **Coordinates**: ``spatial_dims + 1`` inputs, the spatial coordinates then time (Stolt-Ansó et al. 2023, §3
  "(3D+t)"); single frame data have t = 0, so 3D and 3D+t subjects share one network. The frame the
  coordinates live in is the method's choice (``unetzoo.methods.nisf``).
* **Options** (authors' code, off by default as in their default config): ``coords_to_all_layers`` concatenates
  the coordinates to every layer's input (``ResMLPHiddenCoords``); ``pos_encoding`` L > 0 replaces the raw
  coordinates by NeRF's [x, sin(2^k pi x), cos(2^k pi x)], k < L; ``separate`` gives each head its own backbone
  (``model_type: separate``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unetzoo.errors import UnetzooError
from unetzoo.models.registry import register


class WIRE(nn.Module):
    """Real Gabor wavelet layer: cos(w0 * Wf x) * exp(-(s0 * Ws x)^2) (WIRE, Saragadam et al. 2023)."""

    def __init__(self, in_features: int, out_features: int, omega0: float = 10.0, scale0: float = 10.0):
        super().__init__()
        self.freqs = nn.Linear(in_features, out_features)
        self.scale = nn.Linear(in_features, out_features)
        self.omega0, self.scale0 = float(omega0), float(scale0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.omega0 * self.freqs(x)) * torch.exp(-((self.scale0 * self.scale(x)) ** 2))


def positional_encoding(x: torch.Tensor, frequencies: int) -> torch.Tensor:
    """NeRF's encoding [x, sin(2^k pi x), cos(2^k pi x)] for k < ``frequencies`` (``x`` itself for 0)."""
    if frequencies == 0:
        return x
    scaled = [x * (2.0**k * math.pi) for k in range(frequencies)]
    return torch.cat([x] + [torch.sin(s) for s in scaled] + [torch.cos(s) for s in scaled], dim=-1)


class ResMLP(nn.Module):
    """The authors' residual WIRE MLP (module docstring): out_k = WIRE_k(in_k) + out_{k-1}, out_{-1} = h."""

    def __init__(
        self,
        coord_features: int,
        latent_size: int,
        width: int,
        depth: int,
        omega0: float,
        scale0: float,
        coords_to_all_layers: bool,
    ):
        super().__init__()
        self.coords_to_all_layers = coords_to_all_layers
        extra = coord_features if coords_to_all_layers else 0
        self.layers = nn.ModuleList(
            [WIRE(coord_features + latent_size, width, omega0, scale0)]
            + [WIRE(width + extra, width, omega0, scale0) for _ in range(depth - 1)]
        )

    def forward(self, coords: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        out = self.layers[0](torch.cat([coords, latent], dim=-1)) + latent
        for layer in self.layers[1:]:
            out = layer(torch.cat([coords, out], dim=-1) if self.coords_to_all_layers else out) + out
        return out


class NISF(nn.Module):
    """Latent table + ResMLP backbone(s) + segmentation and image heads (module docstring).

    ``forward(coords, latent)``: ``coords`` (B, N, spatial_dims + 1) and one latent per batch item (B, latent)
    -> (segmentation logits (B, N, classes), image logits (B, N, in_channels)).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_subjects: int = 1,
        latent_size: int = 128,
        width: int = 128,
        depth: int = 8,
        omega0: float = 10.0,
        scale0: float = 10.0,
        latent_std: float = 1e-4,
        coords_to_all_layers: bool = False,
        pos_encoding: int = 0,
        separate: bool = False,
    ):
        super().__init__()
        if latent_size != width:
            raise UnetzooError(
                f"nisf: latent_size ({latent_size}) must equal width ({width}): the first residual adds the latent"
            )
        if num_subjects < 1 or depth < 1 or pos_encoding < 0:
            raise UnetzooError("nisf: num_subjects and depth must be >= 1, pos_encoding >= 0")
        self.coord_dims = spatial_dims + 1
        self.pos_encoding, self.latent_std = int(pos_encoding), float(latent_std)
        self.latents = nn.Embedding(num_subjects, latent_size)
        nn.init.normal_(self.latents.weight, std=self.latent_std)
        features = self.coord_dims * (1 + 2 * self.pos_encoding)
        make = lambda: ResMLP(features, latent_size, width, depth, omega0, scale0, coords_to_all_layers)  # noqa: E731
        self.backbone = make()
        self.image_backbone = make() if separate else None
        self.seg_head = nn.Linear(width, out_channels)
        self.image_head = nn.Linear(width, in_channels)

    @property
    def latent_size(self) -> int:
        return self.latents.embedding_dim

    def backbones(self) -> list[nn.Module]:
        """The MLP(s) whose weights the L2 term regularises (heads excluded, as the authors)."""
        return [self.backbone] + ([self.image_backbone] if self.image_backbone is not None else [])

    def forward(self, coords: torch.Tensor, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = positional_encoding(coords, self.pos_encoding)
        h = latent[:, None, :].expand(*coords.shape[:-1], latent.shape[-1])
        features = self.backbone(x, h)
        image_features = self.image_backbone(x, h) if self.image_backbone is not None else features
        return self.seg_head(features), self.image_head(image_features)


def nisf_plan_defaults(plan, config, train_cases=None) -> dict:
    """The latent table has one row per training subject (a run folder's config already records it)."""
    return {"num_subjects": int(train_cases)} if train_cases else {}


@register(
    "nisf",
    description="auto-decoder residual WIRE MLP: latent per subject + coordinates -> segmentation and image; latent fitted at test time",
    paper="Stolt-Ansó et al., NISF: Neural Implicit Segmentation Functions, MICCAI 2023 (arXiv:2309.08643)",
    method="nisf",
    spatial_dims=(2, 3),
    plan_defaults=nisf_plan_defaults,
)
def nisf(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> NISF:
    """:class:`NISF` with the paper's defaults (8 residual WIRE layers of 128, latent 128, w0 = s0 = 10)."""
    return NISF(spatial_dims, in_channels, out_channels, **kwargs)
