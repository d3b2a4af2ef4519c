"""Target grids of ``Method.predict(image, grid)``: where to sample a segmentation, in the image's voxel frame.

A :class:`Grid` is a ``shape`` and an ``affine``: the (d+1)x(d+1) map from a target voxel index to the continuous
voxel index of the image being predicted (index i is the centre of voxel i). Every way of asking for output beyond
the input's own voxels is one such grid:

* ``unetzoo predict --upsample F``: the input file's grid with every voxel split into F^d sub-voxels
  (:func:`refined_affine`), mapped into the preprocessed image through the two world affines;
* ``unetzoo predict --grid REF``: another image's grid (another plane, a finer or coarser grid), likewise;
* a grid built by hand for held-out slices or a long-axis view.

Methods with a continuous function (``Method.continuous``) sample it at :meth:`Grid.points`; the others predict
on their voxel grid and :meth:`Grid.resample` interpolates the probabilities (linear, border values outside).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def refined_affine(affine, factor: int) -> np.ndarray:
    """Affine of the F-times finer grid of the same extent: voxel size / F, first voxel centre at the centre of
    the first sub-voxel, so fine voxel J sits at coarse index (J + 1/2) / F - 1/2 and the box of voxel edges is
    unchanged."""
    affine = np.asarray(affine, dtype=np.float64)
    dims = affine.shape[0] - 1
    scale = np.eye(dims + 1)
    scale[:dims, :dims] /= factor
    scale[:dims, dims] = 0.5 / factor - 0.5
    return affine @ scale


def coarse_grid(input_shape, coarse_shape) -> np.ndarray:
    """The (d+1)x(d+1) map from a voxel index of an input of ``input_shape`` to the continuous voxel index of the
    same image resized to ``coarse_shape`` with PyTorch's ``align_corners=False`` (the plan's coarse 2D grid,
    :class:`unetzoo.data.transforms.Downsampled`): ``i -> (i + 1/2) n / S - 1/2`` per axis, the extent kept."""
    ratio = np.asarray(coarse_shape, float) / np.asarray(input_shape, float)
    affine = np.diag([*ratio, 1.0])
    affine[:-1, -1] = 0.5 * ratio - 0.5
    return affine


@dataclass
class Grid:
    shape: tuple[int, ...]
    affine: np.ndarray  # target voxel index -> continuous voxel index of the image

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (len(self.shape) + 1,) * 2:
            raise ValueError(
                f"a grid of {len(self.shape)} axes needs a {len(self.shape) + 1}x{len(self.shape) + 1} affine, got {self.affine.shape}"
            )

    @classmethod
    def between(cls, image_affine, target_affine, target_shape) -> Grid:
        """The grid of voxels (``target_affine``: voxel -> world, ``target_shape``) in the frame of an image whose
        voxel -> world affine is ``image_affine``."""
        return cls(
            tuple(target_shape),
            np.linalg.inv(np.asarray(image_affine, np.float64)) @ np.asarray(target_affine, np.float64),
        )

    @classmethod
    def refinement(cls, shape, factor: int) -> Grid:
        """The F-times finer grid of an image of ``shape``, in that image's frame."""
        return cls(tuple(int(factor) * int(s) for s in shape), refined_affine(np.eye(len(shape) + 1), factor))

    @property
    def dims(self) -> int:
        return len(self.shape)

    def step(self) -> float:
        """The smallest distance between neighbouring target voxels, in image voxels (1/F for a refinement)."""
        return float(np.linalg.norm(self.affine[: self.dims, : self.dims], axis=0).min())

    def is_identity(self, image_shape) -> bool:
        """Whether this grid is the image's own voxel grid."""
        return tuple(image_shape) == self.shape and np.allclose(self.affine, np.eye(self.dims + 1), atol=1e-6)

    def points(self, first: int = 0, stop: int | None = None, device=None) -> torch.Tensor:
        """Continuous image indices (n0, *shape[1:], d) of the target voxels whose first index is in [first, stop)."""
        stop = self.shape[0] if stop is None else stop
        axes = [torch.arange(first, stop, dtype=torch.float64)] + [
            torch.arange(n, dtype=torch.float64) for n in self.shape[1:]
        ]
        index = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
        mapping = torch.as_tensor(self.affine)
        return (index @ mapping[: self.dims, : self.dims].T + mapping[: self.dims, self.dims]).float().to(device)

    def resample(self, probs: torch.Tensor, slab_voxels: int = 2**22) -> torch.Tensor:
        """``probs`` (B, K, *S) on the image's grid -> (B, K, *shape) on this grid: (bi/tri)linear interpolation,
        border values outside the image; in slabs along the first axis to bound memory."""
        source_shape = probs.shape[2:]
        if self.is_identity(source_shape):
            return probs
        norm = torch.tensor([2.0 / max(n - 1, 1) for n in source_shape], device=probs.device)
        flat = torch.tensor([n == 1 for n in reversed(source_shape)], device=probs.device)
        out = probs.new_empty(*probs.shape[:2], *self.shape)
        per_slice = int(np.prod(self.shape[1:])) if self.dims > 1 else 1
        step = max(1, slab_voxels // max(per_slice, 1))
        for start in range(0, self.shape[0], step):
            stop = min(start + step, self.shape[0])
            grid = (self.points(start, stop, probs.device) * norm - 1).flip(-1)  # grid_sample: last axis first
            grid = torch.where(flat, torch.zeros_like(grid), grid).to(probs.dtype)
            grid = grid[None].expand(probs.shape[0], *grid.shape)
            out[:, :, start:stop] = F.grid_sample(
                probs, grid, mode="bilinear", padding_mode="border", align_corners=True
            )
        return out
