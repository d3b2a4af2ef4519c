"""Implicit training and inference (Naval Marimont & Tarroni 2022, arXiv:2206.15217): a loss on sampled points,
broad-then-fine prediction.

Training (paper, "Training procedure"): encoder forward on the patch; k points per patch (``points``),
a fraction ``boundary_fraction`` (alpha = 0.5) of them near the label boundary, displaced by N(0, ``sigma`` = 5
voxels), the rest uniform in the patch; the decoder at the points; Dice + CE on the points. Patches come 1:2
positive:negative (``data.pos_neg_ratio``), the optimiser is AdamW 1e-4 (``train.optimizer``, ``train.lr``).
``points`` is a count (>= 1) or a fraction in (0, 1) of the patch's voxels. The default is the paper's density,
``PAPER_POINT_DENSITY`` = 30,000 points per 160x160x96 patch (1.22 % of the voxels), so the default matches the
paper at any patch size: 7,196 points in a 96x96x64 patch, 1,094 in a 40x56x40 hippocampus patch. A fixed
30,000 would be a much denser (and, for the MLP, proportionally costlier) sample on smaller patches: 5.1 % of a
96x96x64 patch, 33 % of the hippocampus patch.

Departures from the paper's pipeline (docs/models.md lists them):

* Intensity normalisation is the pipeline's (nnU-Net's scheme, ``data.transforms.NormalizeByModalityd``): CT is
  clipped to the dataset's foreground 0.5 and 99.5 percentiles and z-scored with the foreground mean and std, other
  modalities are z-scored per image. The paper: "Image intensities were capped at the 95th percentile dataset-wise.
  Subsequently we applied z-score intensity normalization." One scheme for every model keeps the comparison with
  ``unet`` about the networks alone.
* Elastic deformation, first of the paper's training augmentations, is off by default (``augment.elastic_p`` 0,
  as for every model: costly on CPU; ``--set augment.elastic_p=0.2`` turns it on). Scaling, rotations, axis flips,
  Gaussian noise and contrast, the rest of the paper's list, are on.
* The fine band (below) is 2 voxels by default: the paper says only "the points near the broad boundary".

Choices the paper leaves open (the authors' code was never released), with their reasons:

* Points are continuous (uniform over the patch's voxel cells, [-0.5, S - 0.5) per axis) and their target is the
  label of the nearest voxel. The decoder is a function of continuous coordinates; training it only at voxel
  centres would leave its values between voxels (what ``--upsample`` reads) unconstrained.
* Boundary voxels are the voxels whose 3^d neighbourhood holds another label (max-pool != min-pool of the label
  map), i.e. both sides of every interface, every class pair included. Boundary points pick such voxels
  uniformly (with replacement), then move by N(0, sigma) per axis. A patch without any boundary (a negative
  patch) draws its "boundary" points from all voxels instead, so every patch gets k points.
* "Kept inside the patch": displaced points that leave the patch are reflected back at its wall (clamping
  would pile them on the faces, redrawing needs a loop); the displacement spread stays ~sigma.
* Loss: nnU-Net's Dice+CE as the dense method (:func:`~unetzoo.methods.dense.dice_ce`: softmax, one-hot targets,
  batch Dice over the foreground classes, plus CE), on (B, K, k) logits: the k points of a patch play the role of
  its voxels; points whose nearest voxel has the ignore label count for nothing.

Inference, per sliding-window patch (overlap 0.3, Gaussian weighting, ``inference`` config):

1. broad prediction: the decoder at one voxel in every ``broad_stride`` (4; 2 and 8 as in the paper's study)
   per axis (voxels 0, 4, 8 ...), plus the last voxel of every axis so that no voxel lies beyond the last
   sample; nearest-neighbour upsampling gives every voxel the value of its nearest sample.
2. fine prediction: every voxel within ``band`` voxels (Chebyshev distance, default ``broad_stride // 2``) of
   a voxel with another broad label is predicted by the decoder; nothing more when the broad prediction has
   no boundary (checked first on the mesh, which is ``broad_stride``^d times smaller). Why this band: a true
   interface lies between two broad samples of different labels, at most ``broad_stride`` voxels apart and
   each at most ``broad_stride // 2`` voxels from the upsampled labels' interface, so the default band covers
   exactly the voxels between them. A wider band (``method_args.band``) also catches interfaces that bend
   between samples, at a cost: on CPU the decoder costs about 10 U-Net voxels per point, so the band's
   volume decides the speed (with band 2 an isolated broad sample of another label costs 8^3 fine points;
   whole neighbouring cells would cost 12^3).
3. the probabilities of the whole image (after the sliding-window blend) are smoothed by a 3^d average pool
   (the paper: "Predictions are *finally* smoothed"; doing it after the blend also avoids a seam at window
   borders). Padding voxels do not count in the average. With ``--upsample`` the kernel is 3 output voxels.

``dense=True`` predicts every voxel (the check of the sparse procedure; it is also how the broad-then-fine
result is validated in the tests).

Other grids (``predict(image, grid)``, e.g. ``--upsample F`` or ``--grid REF``): the decoder is sampled on the
F-times finer grid of the image, F = ceil(1 / the grid's step) (fine voxel J of a window sits at window
coordinate (J + 1/2) / F - 1/2, the centres of F^d sub-voxels of every voxel; MONAI's sliding window places
F-times larger outputs through its ``zoom_scale``), and that fine map is resampled linearly onto the grid, which
is exact (no resampling) when the grid is that refinement itself. Decoding every grid point inside each sliding
window would avoid the resampling, but would lose the broad-then-fine saving, which needs a regular mesh.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from unetzoo.errors import UnetzooError
from unetzoo.methods.base import Method
from unetzoo.methods.dense import dice_ce
from unetzoo.methods.grid import Grid

# Naval Marimont & Tarroni 2022: 30,000 points per 160x160x96 training patch
PAPER_POINT_DENSITY = 30000 / (160 * 160 * 96)


def _pool(x: torch.Tensor, kernel: int, kind: str) -> torch.Tensor:
    """Max or average pool of (B, C, *S) with a ``kernel``^d window, stride 1, same size."""
    dims = x.dim() - 2
    pad = kernel // 2
    if kind == "max":
        return (F.max_pool3d if dims == 3 else F.max_pool2d if dims == 2 else F.max_pool1d)(x, kernel, 1, pad)
    return (F.avg_pool3d if dims == 3 else F.avg_pool2d if dims == 2 else F.avg_pool1d)(
        x, kernel, 1, pad, count_include_pad=False
    )


def _axis_pool(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over a (2 radius + 1)^d window, stride 1, same size, as d one-axis pools (separable: 2r+1 reads per
    axis instead of (2r+1)^d)."""
    dims = x.dim() - 2
    pool = F.max_pool3d if dims == 3 else F.max_pool2d if dims == 2 else F.max_pool1d
    for axis in range(dims):
        kernel = [1] * dims
        padding = [0] * dims
        kernel[axis], padding[axis] = 2 * radius + 1, radius
        x = pool(x, kernel, 1, padding)
    return x


def boundary_mask(label: torch.Tensor) -> torch.Tensor:
    """(B, *S) bool: voxels of ``label`` (B, 1, *S) whose 3^d neighbourhood holds another label."""
    lab = label.float()
    return (_pool(lab, 3, "max") != -_pool(-lab, 3, "max"))[:, 0]


def _reflect(x: torch.Tensor, low: float, high: torch.Tensor) -> torch.Tensor:
    """Fold coordinates back into [low, high) by reflection at the walls (any distance)."""
    length = high - low
    y = torch.remainder(x - low, 2 * length)
    y = torch.where(y > length, 2 * length - y, y)
    return (low + y).clamp(min=low, max=None).minimum(high - 1e-3)


def nearest_voxel(points: torch.Tensor, size) -> torch.Tensor:
    """Integer index (…, d) of the voxel whose cell holds each continuous point, clamped into ``size``."""
    size = torch.as_tensor(list(size), device=points.device)
    return torch.floor(points + 0.5).long().clamp(min=0).minimum(size - 1)


def values_at(volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``volume`` (B, 1, *S) at integer ``index`` (B, N, d) -> (B, N)."""
    shape = volume.shape[2:]
    linear = torch.zeros_like(index[..., 0])
    for axis, size in enumerate(shape):
        linear = linear * size + index[..., axis]
    return volume.flatten(1).gather(1, linear)


def sample_points(
    label: torch.Tensor, k: int, boundary_fraction: float, sigma: float, generator: torch.Generator | None = None
):
    """Training points of a batch of label patches (B, 1, *S), vectorised over the batch.

    Returns ``points`` (B, k, d) in continuous voxel coordinates, the first round(alpha k) near the boundary
    (a boundary voxel + N(0, sigma) per axis, reflected into the patch) and the rest uniform; and ``targets``
    (B, k) long, the label of each point's nearest voxel.
    """
    b, shape = label.shape[0], tuple(label.shape[2:])
    d, device = len(shape), label.device
    size = torch.tensor(shape, dtype=torch.float32, device=device)
    n_boundary = int(round(k * boundary_fraction))
    parts = []
    if n_boundary > 0:
        weights = boundary_mask(label).flatten(1).float()
        weights[weights.sum(1) == 0] = 1.0  # no boundary in this patch: any voxel
        cdf = weights.cumsum(1)
        u = torch.rand(b, n_boundary, device=device, generator=generator) * cdf[:, -1:]
        linear = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[1] - 1)
        coords = []
        for extent in reversed(shape):  # unravel the C-order index, last axis fastest
            coords.append(linear % extent)
            linear = linear // extent
        voxels = torch.stack(coords[::-1], dim=-1).float()
        noise = torch.randn(b, n_boundary, d, device=device, generator=generator) * sigma
        parts.append(_reflect(voxels + noise, -0.5, size - 0.5))
    if k > n_boundary:
        parts.append(torch.rand(b, k - n_boundary, d, device=device, generator=generator) * size - 0.5)
    points = torch.cat(parts, dim=1)
    targets = values_at(label, nearest_voxel(points, shape)).long()
    return points, targets


def fine_coordinates(size, upsample: int, device=None) -> list[torch.Tensor]:
    """Per axis, the window coordinates of the output grid: (J + 1/2) / F - 1/2 for J < F * S."""
    return [(torch.arange(int(s) * upsample, device=device, dtype=torch.float32) + 0.5) / upsample - 0.5 for s in size]


class ImplicitMethod(Method):
    """Points for training, broad-then-fine sparse prediction for inference (module docstring)."""

    continuous = True  # predict(image, grid) samples the decoder on the grid's refinement

    def __init__(
        self,
        model,
        plan,
        config,
        points: float = PAPER_POINT_DENSITY,
        boundary_fraction: float = 0.5,
        sigma: float = 5.0,
        broad_stride: int = 4,
        band: int | None = None,
        dense: bool = False,
        smooth: int = 3,
    ):
        super().__init__(model, plan, config)
        if not 0.0 <= boundary_fraction <= 1.0:
            raise UnetzooError(f"method_args.boundary_fraction must be in [0, 1], got {boundary_fraction}")
        band = max(1, int(broad_stride) // 2) if band is None else band
        if not (points >= 1 or 0 < points < 1) or int(broad_stride) < 1 or int(band) < 0 or sigma < 0:
            raise UnetzooError(
                "method_args: points must be >= 1 (or a fraction in (0, 1)), broad_stride >= 1, band and sigma >= 0"
            )
        self.points = float(points) if points < 1 else int(points)
        self.boundary_fraction, self.sigma = float(boundary_fraction), float(sigma)
        self.broad_stride, self.band, self.dense, self.smooth = int(broad_stride), int(band), bool(dense), int(smooth)
        self.loss = dice_ce
        self.upsample = 1
        self.last_fine_fraction: float | None = None  # share of output voxels the fine stage predicted (last window)
        self.decoded = {"broad": 0, "fine": 0, "dense": 0, "voxels": 0}  # points decoded since the last reset

    # ---- training -------------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> torch.Tensor:
        image, label = batch["image"], batch["label"]
        features = self.model.encode(image)
        points, targets = sample_points(
            label, self.points_per_patch(image.shape[2:]), self.boundary_fraction, self.sigma
        )
        logits = self.model.decode(features, points, image.shape[2:])  # (B, k, K)
        return self.loss(logits.transpose(1, 2).float(), targets[:, None])

    def points_per_patch(self, patch) -> int:
        """k: ``points``, or ``points`` x the patch's voxel count when it is a fraction (the default, the paper's
        30,000 per 160x160x96 patch, is a fraction of 0.0122)."""
        if isinstance(self.points, float):
            return max(1, round(self.points * math.prod(int(s) for s in patch)))
        return self.points

    # ---- inference ------------------------------------------------------------------------------------
    def predict(self, image: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """Probabilities on the image's grid or on ``grid`` (module docstring): Gaussian-weighted sliding windows
        on the F-times finer grid, the 3^d smoothing, then (unless the grid is that refinement) resampling."""
        self.model.eval()
        upsample = 1 if grid is None else max(1, math.ceil(1.0 / grid.step() - 1e-6))
        self.upsample = upsample
        try:
            probs = self.sliding_window(image)
        finally:
            self.upsample = 1
        probs = _pool(probs, self.smooth, "avg") if self.smooth > 1 else probs
        if grid is None:
            return probs
        to_fine = Grid.refinement(image.shape[2:], upsample).affine  # fine index -> image index
        return Grid(grid.shape, np.linalg.inv(to_fine) @ grid.affine).resample(probs)

    def predict_window(self, window: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, K, *(F * window)) of a batch of windows: broad-then-fine, or dense."""
        size = tuple(window.shape[2:])
        with parametrize.cached():  # weight-normed weights computed once for the broad and the fine stage
            features = self.model.encode(window)
            if self.dense:
                return self.dense_window(features, size, self.upsample)
            return self.sparse_window(features, size, self.upsample)

    def _probabilities(self, features, batch_index, points, size, stage: str) -> torch.Tensor:
        self.decoded[stage] += int(points.shape[0])
        return torch.softmax(self.model.decode_flat(features, batch_index, points, size).float(), dim=-1)

    def dense_window(self, features, size, upsample: int = 1) -> torch.Tensor:
        """The decoder at every output voxel: (B, K, *(F * size))."""
        b = features[0].shape[0]
        axes = fine_coordinates(size, upsample, features[0].device)
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(size))
        n = grid.shape[0]
        batch_index = torch.arange(b, device=grid.device).repeat_interleave(n)
        probs = self._probabilities(features, batch_index, grid.repeat(b, 1), size, "dense")
        self.decoded["voxels"] += b * n
        return probs.reshape(b, *[len(a) for a in axes], -1).movedim(-1, 1)

    def sparse_window(self, features, size, upsample: int = 1) -> torch.Tensor:
        """Broad-then-fine: (B, K, *(F * size)); the fine stage only where the broad labels change."""
        b, device = features[0].shape[0], features[0].device
        stride = self.broad_stride * upsample  # in output voxels: the broad mesh keeps its spacing in input voxels
        axes = fine_coordinates(size, upsample, device)
        out_shape = [len(a) for a in axes]
        # (1) broad: output voxels 0, stride, 2 stride ... and the last one of every axis (so that no voxel is
        # extrapolated past the last sample); every voxel then takes the value of its nearest sample
        samples = [broad_indices(n, stride, device) for n in out_shape]
        nearest = [nearest_sample(n, idx) for n, idx in zip(out_shape, samples)]
        broad_points = torch.stack(
            torch.meshgrid(*[a[i] for a, i in zip(axes, samples)], indexing="ij"), dim=-1
        ).reshape(-1, len(size))
        n = broad_points.shape[0]
        batch_index = torch.arange(b, device=device).repeat_interleave(n)
        broad = self._probabilities(features, batch_index, broad_points.repeat(b, 1), size, "broad")
        self.decoded["voxels"] += b * math.prod(out_shape)
        broad = broad.reshape(b, *[len(i) for i in samples], -1).movedim(-1, 1)  # (B, K, *mesh)
        probs = _upsample_nearest(broad, nearest)
        # (2) fine: voxels within `band` voxels of another broad label (only if the broad labels change at all)
        labels = broad.argmax(1, keepdim=True).float()  # (B, 1, *mesh)
        if self.band == 0 or not bool((_pool(labels, 3, "max") != -_pool(-labels, 3, "max")).any()):
            self.last_fine_fraction = 0.0
            return probs
        labels = _upsample_nearest(labels, nearest)
        radius = self.band * upsample
        mask = (_axis_pool(labels, radius) != -_axis_pool(-labels, radius))[:, 0]
        index = mask.nonzero()  # (M, 1 + d), row-major: the order of boolean-mask assignment
        self.last_fine_fraction = index.shape[0] / mask.numel()
        points = torch.stack([axes[a][index[:, 1 + a]] for a in range(len(size))], dim=-1)
        fine = self._probabilities(features, index[:, 0], points, size, "fine")
        probs.movedim(1, -1)[mask] = fine.to(probs.dtype)
        return probs


def broad_indices(n: int, stride: int, device=None) -> torch.Tensor:
    """Indices of the broad mesh along an axis of ``n`` voxels: 0, stride, 2 stride, ... and n - 1."""
    idx = torch.arange(0, n, stride, device=device)
    return idx if idx[-1] == n - 1 else torch.cat([idx, torch.tensor([n - 1], device=device)])


def nearest_sample(n: int, samples: torch.Tensor) -> torch.Tensor:
    """For every voxel of the axis, the position in ``samples`` of its nearest sample (ties: the lower one)."""
    voxels = torch.arange(n, device=samples.device)
    upper = torch.searchsorted(samples, voxels).clamp(max=len(samples) - 1)  # first sample >= voxel
    lower = (upper - 1).clamp(min=0)
    return torch.where(voxels - samples[lower] <= samples[upper] - voxels, lower, upper)


def _upsample_nearest(x: torch.Tensor, nearest: list[torch.Tensor]) -> torch.Tensor:
    """(B, C, *mesh) -> (B, C, *grid): every voxel takes the value of its nearest mesh sample."""
    for axis, idx in enumerate(nearest):
        x = x.index_select(2 + axis, idx)
    return x
