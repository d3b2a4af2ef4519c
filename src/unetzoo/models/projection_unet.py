"""Projection-based and random 2.5D U-Nets (Angermann & Haltmeier 2019, arXiv:1910.10398): whole volumes through
2D convolutions only.

N(x) = T o R o F o [U o M_theta_1(x), ..., U o M_theta_p(x)]  (Eq. 2): maximum intensity projections M from p
directions, one shared 2D U-Net U on all of them (the projections are its batch), a learnable filtration F per
direction, linear backprojection R summed over the directions, and a tuning T (average pooling, learnable
normalisation, sigmoid). ``projection-2.5d-unet`` uses p fixed directions theta_k = k * 180 / p;
``random-2.5d-unet`` adds the second path of Sec. 3.2 (m directions, its own filtration and tuning).

The authors' code was never released; the choices the paper leaves open, with their reasons:

* Geometry: the volume rotates about ``axis`` (0, 1, 2 of D, H, W; default 1, so that theta = 0 projects along
  D onto H x W images, as the paper's a x b x c -> b x c). The projection image has the rotation axis as rows and
  the detector as columns. Rotation plane coordinates (p, q) (the other two axes in order) are taken from the
  centre voxel (c_p, c_q) = ((P - 1) // 2, (Q - 1) // 2), a voxel centre even for even sizes; a voxel projects to
  detector coordinate u = q' cos(theta) - p' sin(theta) at depth t = q' sin(theta) + p' cos(theta). The detector (and
  the depth of the rotated volume) has 2 R + 1 pixels, R = ceil(the largest distance from the centre voxel to a
  voxel), so no rotation clips the volume (a square circumscribing the rotation plane instead of cropping to it),
  and the centre voxel projects onto the middle pixel. Rotating about a voxel centre keeps the lattice at 0, 90,
  180 and 270 degrees for every parity of P and Q: every sample of the rotated volume falls on a voxel centre, so a
  one-voxel structure keeps its full value in those MIPs. (About the plane's geometric centre with one detector
  size for both axes, a sample lands half a voxel off whenever detector size - P or - Q is odd, and bilinear
  sampling then spreads the voxel over 2 or 4 samples: 0.25 of its value at the hippocampus plan, 40 x 56 x 40.)
* M (MIP): the volume rotated by theta with ``grid_sample`` (bilinear in the rotation plane, which is trilinear with
  every sample on a whole index along the rotation axis: the rows travel as channels), then the maximum along the
  depth. Outside the volume the sample is the volume's minimum, so that padding never wins a maximum (a z-scored
  MRI has a negative background; zero padding would brighten every ray that leaves the volume).
* R (backprojection): smear each filtered projection along the depth, rotate it back, sum over the directions
  (Fig. 3a: a voxel's value is the sum of the 2D values it projects to). The smeared volume is constant along the
  depth, so rotating it back with trilinear interpolation is linear interpolation of the detector at the voxel's
  coordinate u; that is what :func:`backproject` computes, without materialising the smeared volume (the tests
  check it against the literal smear + ``grid_sample``). :func:`sum_project` is its exact adjoint (each voxel adds
  its value to the two detector pixels around u with the same linear weights): the Radon-type sum projection.
* U: the project's 2D ``unet`` (no deep supervision), one sigmoid output per foreground class. Multi-class data
  (the paper is binary): projections of different classes overlap along a ray, so the 2D maps are per-class
  sigmoids (multi-label); after reconstruction the K-1 tuned maps z_k are logits against a zero background logit,
  probabilities softmax([0, z_1, ..., z_{K-1}]): for binary data this is exactly the paper's sigmoid(z).
* F: the paper's 1x2 filter along the detector per direction and class (``filter_size``), no bias (the tuning's
  shift plays its part), initialised to the identity [1, 0] (plain backprojection at the start). An even kernel
  sees pixels j and j+1 (the projection is zero-padded by one pixel at the end), so its output sits half a pixel
  towards +u; the learned weights place that centre anywhere in [j, j+1].
* T: ``AvgPool3d(2, stride 1)`` on the volume replicate-padded by one voxel at the high end of every axis, which
  keeps the size (odd sizes too); each voxel averages itself with its +1 neighbours, so the output is shifted by
  half a voxel towards +1 on every axis (inherent in a 2x2x2 kernel; replicate padding so that edges are not
  damped as with zero padding). The learnable normalisation: per class, the pooled volume normalised by its own
  mean and standard deviation (an instance normalisation: the scale of a sum over p or m directions does not
  matter, and training and prediction compute the same thing), times a learnable scale plus a
  learnable shift ("shifts the pooled data by an adjusted parameter"). Initialised to scale 3, shift -9
  (``tuning_scale``, ``tuning_shift``): the decision boundary starts 3 standard deviations above the volume's mean
  (where a Gaussian leaves 0.13 % of the voxels, the order of the paper's 0.24 % foreground) with near-binary
  probabilities. With scale 1 and shift 0 half the volume starts at p >= 0.5, and the soft Dice of a sparse
  foreground hardly moves: on the vessel phantom (32x64x48) `projection-2.5d-unet` reached validation Dice 0.04
  after 8 minutes of Adam 1e-3, against 0.70 on a held-out case after 60 steps with this initialisation. Dense
  targets (organs) may want a shift nearer 0 (``--set model_args.tuning_shift=...``).
* Random training (Sec. 3.2): the angle bins Theta_k = [k 180/p, (k+1) 180/p), one whole degree drawn uniformly
  from each bin (the paper's Theta_k lists whole degrees) at every call of path 1, i.e. for every training volume
  of every step (our choice; the paper says "for each epoch"); path 2 uses the m fixed directions k 180 / m.
* Batches: every step of the network works on each volume of a batch by itself (per-volume rotation centre,
  detector size, MIP floor, instance norms, tuning statistics), so a batch of equal shapes gives each volume the
  output it has alone. Volumes of different shapes must not be padded into one tensor, since the padding moves
  the rotation centre and enters the tuning's statistics: the method runs them one at a time
  (:mod:`unetzoo.methods.projection`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unetzoo.models.blocks import stages_for_patch
from unetzoo.models.registry import register
from unetzoo.models.unet import UNet


# ---- geometry ---------------------------------------------------------------------------------------------
def plane_axes(axis: int) -> tuple[int, int]:
    """The rotation plane's (depth at theta = 0, detector at theta = 0) axes for rotation ``axis``."""
    if axis not in (0, 1, 2):
        raise ValueError(f"rotation axis must be 0, 1 or 2, got {axis}")
    p, q = (i for i in range(3) if i != axis)
    return p, q


def plane_centre(size_p: int, size_q: int) -> tuple[int, int]:
    """The rotation centre: the voxel ((P - 1) // 2, (Q - 1) // 2) of a P x Q rotation plane (module docstring)."""
    return (size_p - 1) // 2, (size_q - 1) // 2


def detector_size(shape, axis: int) -> int:
    """Pixels of the detector (and of the rotated volume's depth), 2 R + 1 with R the largest distance from the centre
    voxel to a voxel: every voxel centre projects inside at any angle, the centre voxel onto the middle pixel."""
    p, q = plane_axes(axis)
    size_p, size_q = int(shape[p]), int(shape[q])
    cp, cq = plane_centre(size_p, size_q)
    return 2 * math.ceil(math.hypot(size_p - 1 - cp, size_q - 1 - cq)) + 1


def projection_shape(shape, axis: int) -> tuple[int, int]:
    """(rows, detector) of the projection images of a volume of ``shape``."""
    return int(shape[axis]), detector_size(shape, axis)


def _to_plane(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, C, rows, P, Q): the rotation axis first, then the plane axes."""
    p, q = plane_axes(axis)
    return x.permute(0, 1, 2 + axis, 2 + p, 2 + q)


def _from_plane(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Inverse of :func:`_to_plane`."""
    order = [axis, *plane_axes(axis)]
    return x.permute(0, 1, *[2 + order.index(i) for i in range(3)])


def detector_coordinates(plane: tuple[int, int], n_detector: int, theta: float, device=None) -> torch.Tensor:
    """Detector coordinate u (P * Q,) of every voxel of a P x Q rotation plane (row-major) at ``theta`` degrees."""
    size_p, size_q = plane
    cp, cq = plane_centre(size_p, size_q)
    rad = math.radians(theta)
    p = torch.arange(size_p, dtype=torch.float64, device=device)[:, None] - cp
    q = torch.arange(size_q, dtype=torch.float64, device=device)[None, :] - cq
    u = q * math.cos(rad) - p * math.sin(rad) + (n_detector - 1) // 2
    return u.reshape(-1)


def _linear_weights(plane, n_detector: int, theta: float, device):
    """Lower detector pixel j0 and weight w of the upper one (u = j0 + w) for every voxel of the plane."""
    u = detector_coordinates(plane, n_detector, theta, device).clamp(0, n_detector - 1)
    j0 = u.floor()
    return j0.long(), (u - j0).float()


def mip(x: torch.Tensor, theta: float, axis: int) -> torch.Tensor:
    """M_theta: maximum intensity projection (B, C, rows, detector) of volumes (B, C, D, H, W) rotated by ``theta``
    degrees about ``axis`` (module docstring)."""
    b, c = x.shape[:2]
    plane = _to_plane(x, axis)
    rows, size_p, size_q = plane.shape[2:]
    n = detector_size(x.shape[2:], axis)
    floor = plane.amin(dim=(2, 3, 4), keepdim=True)
    images = (plane - floor).reshape(b, c * rows, size_p, size_q)
    rad = math.radians(theta)
    cp, cq = plane_centre(size_p, size_q)
    t = torch.arange(n, dtype=torch.float64, device=x.device)[:, None] - (n - 1) // 2  # rotated depth
    u = torch.arange(n, dtype=torch.float64, device=x.device)[None, :] - (n - 1) // 2  # detector
    p = -u * math.sin(rad) + t * math.cos(rad) + cp
    q = u * math.cos(rad) + t * math.sin(rad) + cq
    # grid_sample's normalised coordinates with align_corners=False: index i -> (2 i + 1) / size - 1
    grid = torch.stack([(2 * q + 1) / size_q - 1, (2 * p + 1) / size_p - 1], dim=-1).to(x.dtype)
    rotated = F.grid_sample(
        images, grid[None].expand(b, -1, -1, -1), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return rotated.amax(dim=2).reshape(b, c, rows, n) + floor[..., 0]


def backproject(y: torch.Tensor, theta: float, shape, axis: int) -> torch.Tensor:
    """R_theta: projection images (B, C, rows, detector) smeared along the depth and rotated back by ``theta`` into
    volumes (B, C, *shape): linear interpolation of the detector at every voxel's coordinate u."""
    plane = tuple(int(shape[i]) for i in plane_axes(axis))
    n = y.shape[-1]
    j0, w = _linear_weights(plane, n, theta, y.device)
    padded = F.pad(y, (0, 1))
    values = padded[..., j0] * (1 - w) + padded[..., j0 + 1] * w  # (B, C, rows, P * Q)
    return _from_plane(values.reshape(*y.shape[:3], *plane), axis)


def sum_project(x: torch.Tensor, theta: float, axis: int) -> torch.Tensor:
    """The exact adjoint of :func:`backproject`: every voxel adds its value to the detector pixels around its
    coordinate u with linear weights; (B, C, D, H, W) -> (B, C, rows, detector)."""
    plane = _to_plane(x, axis)
    b, c, rows = plane.shape[:3]
    n = detector_size(x.shape[2:], axis)
    j0, w = _linear_weights(tuple(plane.shape[3:]), n, theta, x.device)
    flat = plane.reshape(b, c, rows, -1)
    out = torch.zeros(b, c, rows, n + 1, dtype=x.dtype, device=x.device)
    out.index_add_(3, j0, flat * (1 - w))
    out.index_add_(3, j0 + 1, flat * w)
    return out[..., :n]


# ---- learnable layers -------------------------------------------------------------------------------------
class Reconstruction(nn.Module):
    """T o R o F for ``n_directions`` fixed slots: per-direction filtration along the detector, backprojection
    summed over the directions, and the tuning (average pooling, learnable normalisation); returns the logits z
    (the sigmoid is applied by the caller, module docstring)."""

    def __init__(
        self,
        n_directions: int,
        channels: int,
        filter_size: int = 2,
        scale: float = 3.0,
        shift: float = -9.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        if filter_size < 1:
            raise ValueError(f"filter_size must be >= 1, got {filter_size}")
        weight = torch.zeros(n_directions, channels, filter_size)
        weight[..., (filter_size - 1) // 2] = 1.0  # identity: plain backprojection at the start
        self.filters = nn.Parameter(weight)
        self.scale = nn.Parameter(torch.full((channels,), float(scale)))
        self.shift = nn.Parameter(torch.full((channels,), float(shift)))
        self.eps = eps

    def filtration(self, y: torch.Tensor, slot: int) -> torch.Tensor:
        """F for direction slot ``slot``: (B, C, rows, detector), size kept (even kernels: padded at the end)."""
        size = self.filters.shape[-1]
        left = (size - 1) // 2
        padded = F.pad(y, (left, size - 1 - left))
        n = y.shape[-1]
        weight = self.filters[slot]  # (C, size)
        return sum(weight[None, :, s, None, None] * padded[..., s : s + n] for s in range(size))

    def tuning(self, volume: torch.Tensor) -> torch.Tensor:
        """T without its sigmoid: 2x2x2 average pool (replicate-padded at the high end), normalisation, scale, shift."""
        pooled = F.avg_pool3d(F.pad(volume, (0, 1, 0, 1, 0, 1), mode="replicate"), 2, stride=1)
        var, mean = torch.var_mean(pooled, dim=(2, 3, 4), keepdim=True, correction=0)
        normalised = (pooled - mean) / torch.sqrt(var + self.eps)
        return normalised * self.scale[None, :, None, None, None] + self.shift[None, :, None, None, None]

    def forward(
        self, projections: list[torch.Tensor], angles: list[float], slots: list[int], shape, axis: int
    ) -> torch.Tensor:
        volume = 0
        for y, theta, slot in zip(projections, angles, slots):
            volume = volume + backproject(self.filtration(y, slot), theta, shape, axis)
        return self.tuning(volume)


def class_logits(z: torch.Tensor) -> torch.Tensor:
    """K-class logits from the K-1 tuned maps: a zero background logit first (softmax = the paper's sigmoid)."""
    return torch.cat([torch.zeros_like(z[:, :1]), z], dim=1)


def projection_plan_defaults(plan, config, train_cases=None) -> dict:
    """The 2D U-Net's depth from the projection images' size (nnU-Net's rule, as ``unet`` from its patch)."""
    rows, detector = projection_shape(plan.patch_size, config.model_args.get("axis", 1))
    return {"n_stages": stages_for_patch([rows, detector])}


@register(
    "projection-2.5d-unet",
    description="projection-based 2.5D U-Net: MIPs from p fixed directions, 2D U-Net, filtered backprojection",
    paper="Angermann & Haltmeier 2019, arXiv:1910.10398, Sec. 3.1, Eq. (2)",
    method="projection",
    spatial_dims=(3,),
    plan_defaults=projection_plan_defaults,
)
class ProjectionUNet(nn.Module):
    """N(x) = T o R o F o [U o M_theta_k(x)]_k with p fixed directions theta_k = k * 180 / p (module docstring).

    ``forward`` returns K-class logits (B, K, D, H, W) of the input's size.

    Example::

        net = ProjectionUNet(3, in_channels=1, out_channels=2, directions=4, n_stages=3)
        logits = net(torch.zeros(1, 1, 13, 17, 11))  # -> (1, 2, 13, 17, 11)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        directions: int = 12,
        axis: int = 1,
        filter_size: int = 2,
        tuning_scale: float = 3.0,
        tuning_shift: float = -9.0,
        n_stages: int = 5,
        base_features: int = 32,
        max_features: int = 320,
        chunk: int = 12,
    ):
        super().__init__()
        if spatial_dims != 3:
            raise ValueError("projection U-Nets segment volumes (spatial_dims 3)")
        if directions < 1 or chunk < 1:
            raise ValueError(f"directions and chunk must be >= 1, got {directions} and {chunk}")
        plane_axes(axis)
        self.axis, self.directions, self.chunk = axis, directions, chunk
        self.net2d = UNet(
            2, in_channels, out_channels - 1, n_stages, base_features, max_features, deep_supervision=False
        )
        for level in range(len(self.net2d.decoder.heads) - 1):  # coarser heads serve deep supervision only: unused
            self.net2d.decoder.heads[level] = nn.Identity()
        self.tuning_init = (tuning_scale, tuning_shift)
        self.reconstruction = Reconstruction(directions, out_channels - 1, filter_size, *self.tuning_init)

    @staticmethod
    def fixed_angles(n: int) -> list[float]:
        """theta_k = k * 180 / n, k = 0 ... n-1 (degrees)."""
        return [k * 180.0 / n for k in range(n)]

    def segment_projections(self, x: torch.Tensor, angles: list[float]) -> list[torch.Tensor]:
        """U o M_theta for every angle: per-class sigmoid maps (B, K-1, rows, detector), the projections of
        ``chunk`` directions at a time in the 2D U-Net's batch."""
        out = []
        for start in range(0, len(angles), self.chunk):
            part = angles[start : start + self.chunk]
            images = torch.stack([mip(x, theta, self.axis) for theta in part], dim=1)  # (B, n, C, rows, det)
            b, n = images.shape[:2]
            maps = torch.sigmoid(self.net2d(images.flatten(0, 1)))
            out += list(maps.reshape(b, n, *maps.shape[1:]).unbind(1))
        return out

    def reconstruct(
        self, x: torch.Tensor, angles: list[float], reconstruction: Reconstruction, grad_2d: bool = True
    ) -> torch.Tensor:
        """K-class logits of ``x`` from the projections at ``angles`` (direction slot k for the k-th angle)."""
        with torch.set_grad_enabled(grad_2d and torch.is_grad_enabled()):
            maps = self.segment_projections(x, angles)
        z = reconstruction(maps, angles, list(range(len(angles))), x.shape[2:], self.axis)
        return class_logits(z)

    def training_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The logits the training loss weighs: here the one fixed-direction output."""
        return [self(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x, self.fixed_angles(self.directions), self.reconstruction)


@register(
    "random-2.5d-unet",
    description="random 2.5D U-Net: p random MIP directions train the 2D U-Net, m fixed ones the final reconstruction",
    paper="Angermann & Haltmeier 2019, arXiv:1910.10398, Sec. 3.2, Fig. 4",
    method="projection",
    spatial_dims=(3,),
    plan_defaults=projection_plan_defaults,
)
class RandomProjectionUNet(ProjectionUNet):
    """Two paths (Sec. 3.2). Path 1: p = ``directions`` random directions, one whole degree per angle bin
    [k 180/p, (k+1) 180/p), through U, F_p and T (trains all three). Path 2: the m = ``all_directions`` fixed
    directions k 180 / m through U without gradient, then its own filtration F~_m and tuning T~ (trains only those).
    ``forward`` (prediction) is path 2.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        directions: int = 12,
        all_directions: int = 60,
        base_features: int = 32,
        **kwargs,
    ):
        super().__init__(
            spatial_dims, in_channels, out_channels, directions=directions, base_features=base_features, **kwargs
        )
        if all_directions < 1:
            raise ValueError(f"all_directions must be >= 1, got {all_directions}")
        self.all_directions = all_directions
        self.full_reconstruction = Reconstruction(
            all_directions, out_channels - 1, self.reconstruction.filters.shape[-1], *self.tuning_init
        )

    def random_angles(self, generator: torch.Generator | None = None) -> list[float]:
        """One whole degree drawn uniformly from each of the p angle bins."""
        width = 180.0 / self.directions
        offsets = torch.rand(self.directions, generator=generator)
        return [k * width + math.floor(float(o) * width) for k, o in enumerate(offsets)]

    def path1(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.reconstruct(x, self.random_angles(generator), self.reconstruction)

    def path2(self, x: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(x, self.fixed_angles(self.all_directions), self.full_reconstruction, grad_2d=False)

    def training_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[path 1 (y_aux), path 2 (y)], weighted c and 1 - c by the method."""
        return [self.path1(x), self.path2(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.path2(x)
