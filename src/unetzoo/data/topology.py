"""The network's shape from the patch and the spacing: nnU-Net's ``get_pool_and_conv_props``, per axis.

The rule (nnU-Net's ``network_topology.py``), one pooling step after the other:

* an axis is pooled (stride 2) while its feature map stays >= ``MIN_EDGE`` (4) voxels after the pooling, and,
  with known spacing, while its current spacing is within 2x of the finest current spacing among the axes that can
  still be pooled (a 5x1x1 mm patch pools in-plane first and joins the thick axis once the in-plane spacing has
  caught up);
* its convolution kernel is 1 while its current spacing is still more than 2x the finest (in-plane convolutions
  only), 3 from then on; the deepest stage always has kernel 3;
* the depth comes from the axis that can be pooled most often (the largest), not the smallest: every axis stops on
  its own. Departure from nnU-Net: its extra condition that a lone poolable axis needs >= 3 x ``MIN_EDGE`` voxels
  is dropped, so a 10x256x224 patch gets 6 in-plane poolings (256 -> 4), as a 256 edge does in 2D.

Unknown spacing (identity affines, PNG) counts every axis as 1: the rule then works on voxel counts alone, except for
a 3D stack of thick slices that the shape gives away (:func:`shape_spacing`).
Depth is capped at ``MAX_STAGES``: 7 stages in 3D (6 poolings: a 256 edge reaches 4, as nnU-Net v2's 3D plans for
such patches) and 8 in 2D (7 poolings: a 512 edge reaches 4, nnU-Net v2's 2D plans).
"""

from __future__ import annotations

import math

MIN_EDGE = 4
MAX_STAGES = {2: 8, 3: 7}
ANISOTROPY = 3.0  # nnU-Net's ANISO_THRESHOLD: an axis this much coarser (or thinner) than the others is anisotropic


def pool_and_conv(patch, spacing=None, max_stages: int | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """``(strides, kernel_sizes)``: per stage, per axis, for a patch of ``patch`` voxels at ``spacing`` (None:
    unknown, every axis 1). ``strides[0]`` is all 1; ``len(strides)`` is the number of stages."""
    dims = len(patch)
    max_stages = MAX_STAGES[dims] if max_stages is None else max_stages
    current = [1.0] * dims if spacing is None else [float(s) for s in spacing]
    size = [int(p) for p in patch]
    strides, kernels, kernel = [[1] * dims], [], [1] * dims
    while len(strides) < max_stages:
        poolable = [a for a in range(dims) if size[a] // 2 >= MIN_EDGE]
        if not poolable:
            break
        finest = min(current[a] for a in poolable)
        pool = [a for a in poolable if current[a] / finest < 2]
        kernel = [3 if kernel[a] == 3 or current[a] / min(current) < 2 else 1 for a in range(dims)]
        kernels.append(kernel)
        strides.append([2 if a in pool else 1 for a in range(dims)])
        for a in pool:
            current[a] *= 2
            size[a] = math.ceil(size[a] / 2)
    kernels.append([3] * dims)
    return strides, kernels


def shape_spacing(median_shape) -> list[float] | None:
    """The spacing the topology assumes for a 3D volume whose spacing is unknown: an axis with under 1/``ANISOTROPY``
    of every other axis's voxels is a stack of slices (nnU-Net's test of a coarse axis, on voxel counts alone) and
    counts as coarser by the others' smallest edge over its own (ACDC, 9 slices of 256x216: 216 / 9 = 24), the other
    axes as 1; None (voxel counts) when no axis is that thin, and for 2D. With it, :func:`pool_and_conv` gives the
    stack in-plane kernels (1 along it) until the in-plane maps have shrunk to within 2x of its size, as nnU-Net's
    kernels for ACDC's known 10x1.5x1.5 mm (two stages of 1x3x3) do; 3x3x3 kernels from the first stage would mix
    slices a centimetre apart at full resolution. The ratio is a guess where the spacing is lost: the user's
    ``--set data.target_spacing=...`` (or ``--set model_args.kernel_sizes``) says better."""
    if len(median_shape) != 3:
        return None
    sizes = [max(float(s), 1.0) for s in median_shape]
    thin = min(range(3), key=lambda a: sizes[a])
    widest = min(sizes[a] for a in range(3) if a != thin)
    if sizes[thin] * ANISOTROPY >= widest:
        return None
    return [widest / sizes[thin] if a == thin else 1.0 for a in range(3)]


def divisor(strides) -> list[int]:
    """Per axis, the product of the strides: what a patch must be a multiple of."""
    return [math.prod(s[a] for s in strides) for a in range(len(strides[0]))]
