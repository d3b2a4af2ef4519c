"""Finer-than-input outputs (``unetzoo predict --upsample F``) for methods with a continuous decoder.

Grid convention: the output grid splits every input voxel into F^d sub-voxels and places its voxel centres at
the sub-voxel centres. Fine voxel J of an axis sits at input voxel coordinate (J + 1/2) / F - 1/2, so the fine
affine is the input affine with its columns divided by F and its origin moved by (1/(2F) - 1/2) input voxels
along every axis: the voxel size is divided by F and the world extent (the box of voxel edges) is unchanged.

Geometry (3D): the method predicts probabilities on the F-times finer version of the *preprocessed* grid
(reoriented, resampled to the plan's spacing), whose affine follows the same convention from the preprocessed
affine. They are then resampled (trilinear, border padding) onto the F-times finer grid of the *original*
image through the two affines: fine original voxel -> world -> continuous index of the fine preprocessed grid.
That is what MONAI's ``Invertd`` does for F = 1 (undo Spacing and Orientation), done directly on the fine grids.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def upsampled_affine(affine, factor: int) -> np.ndarray:
    """Affine of the F-times finer grid (module docstring): columns / F, origin at the first sub-voxel centre."""
    affine = np.asarray(affine, dtype=np.float64)
    dims = affine.shape[0] - 1
    scale = np.eye(dims + 1)
    scale[:dims, :dims] /= factor
    scale[:dims, dims] = 0.5 / factor - 0.5
    return affine @ scale


def resample_to_grid(probs: torch.Tensor, source_affine, target_affine, target_shape, slab_voxels: int = 2**22) -> torch.Tensor:
    """Resample ``probs`` (K, *S) on the grid of ``source_affine`` onto the grid (``target_affine``,
    ``target_shape``): (K, *target_shape), trilinear, border padding; in slabs along the first axis."""
    dims = probs.dim() - 1
    mapping = np.linalg.inv(np.asarray(source_affine, np.float64)) @ np.asarray(target_affine, np.float64)
    mapping = torch.as_tensor(mapping, dtype=torch.float64)
    source_shape = probs.shape[1:]
    # align_corners=True: index i of an axis of size n sits at 2 i / (n - 1) - 1
    norm = torch.tensor([2.0 / max(n - 1, 1) for n in source_shape], dtype=torch.float64)
    target_shape = [int(s) for s in target_shape]
    out = torch.empty(probs.shape[0], *target_shape, dtype=probs.dtype)
    per_slice = int(np.prod(target_shape[1:])) if dims > 1 else 1
    step = max(1, slab_voxels // max(per_slice, 1))
    rest = [torch.arange(n, dtype=torch.float64) for n in target_shape[1:]]
    for start in range(0, target_shape[0], step):
        first = torch.arange(start, min(start + step, target_shape[0]), dtype=torch.float64)
        index = torch.stack(torch.meshgrid(first, *rest, indexing="ij"), dim=-1)  # (n0, ..., dims)
        source = index @ mapping[:dims, :dims].T + mapping[:dims, dims]
        grid = (source * norm - 1).flip(-1).to(probs.dtype)
        grid = torch.where(torch.tensor([n == 1 for n in reversed(source_shape)]), torch.zeros_like(grid), grid)
        sampled = F.grid_sample(probs[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)
        out[:, start : start + len(first)] = sampled[0]
    return out
