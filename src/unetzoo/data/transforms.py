"""MONAI transform chains: load -> normalise -> orient (RAS) -> resample (deterministic, cached), then
patch sampling and augmentation (random, every draw).

Loading goes through :mod:`unetzoo.io` so a bad file is a one-line error naming it; the images become
MONAI ``MetaTensor`` objects so that orientation and resampling are recorded and inverted at prediction
time (``Invertd``), which puts predictions back in the input's exact geometry.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    Orientationd,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandRotated,
    RandZoomd,
    Spacingd,
    SpatialPadd,
)

from unetzoo.config import AugmentConfig
from unetzoo.data.topology import ANISOTROPY
from unetzoo.io import Image, read_image, read_label

RGB_NAMES = {"R", "G", "B", "RGB"}


def _meta_tensor(array: np.ndarray, image) -> MetaTensor:
    affine = torch.as_tensor(image.affine, dtype=torch.float64)
    meta = {
        "filename_or_obj": str(image.path),
        "original_affine": affine.clone(),
        "spatial_shape": np.array(image.spatial_shape),
        "original_channel_dim": 0,
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=affine, meta=meta)


class LoadCased(MapTransform):
    """Read ``image`` (list of channel files, or an :class:`~unetzoo.io.Image` already in memory) and optional
    ``label`` into channel-first MetaTensors; of a 3D+t case (``num_frames`` > 1) only frame ``frame_index``. The
    label's ids become class indices (the k-th of ``label_ids`` is class k), so that ids 0, 1, 3 train classes 0, 1, 2;
    the ignore label, the highest id and not among ``label_ids``, becomes ``len(label_ids)``: no class."""

    def __init__(self, spatial_dims: int, label_ids: list[int]):
        super().__init__(["image", "label"], allow_missing_keys=True)
        self.spatial_dims, self.label_ids = spatial_dims, np.asarray(label_ids)

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        frame = data["frame_index"] if data.get("num_frames", 1) > 1 else None
        image = (
            data["image"] if isinstance(data["image"], Image) else read_image(data["image"], self.spatial_dims, frame)
        )
        data["image"] = _meta_tensor(image.array, image)
        if "label" in data:
            label = read_label(data["label"], self.spatial_dims, frame)
            classes = np.searchsorted(self.label_ids, label.array)  # the plan verified every value is a listed id
            data["label"] = _meta_tensor(classes[None].astype(np.float32), label)
        return data


class NormalizeByModalityd(MapTransform):
    """Per-channel normalisation chosen by modality (nnU-Net's schemes).

    CT: clip to the dataset's foreground 0.5-99.5 percentiles, then z-score with the dataset's foreground
    mean and std. RGB: scale to [0, 1]. Anything else (MRI ...): per-image z-score, over the nonzero voxels
    for a channel whose ``nonzero_mask`` the plan set (a dataset with zero background: zeros stay zero).
    """

    def __init__(self, channel_names: list[str], ct_stats: dict, nonzero_mask: list[bool] = ()):
        super().__init__(["image"])
        self.channel_names = [name.upper() for name in channel_names]
        self.ct_stats = ct_stats
        self.nonzero_mask = list(nonzero_mask)

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        image = data["image"]
        out = image.clone().float()
        rgb = all(name in RGB_NAMES for name in self.channel_names)
        for c in range(image.shape[0]):
            x = image[c].float()
            if rgb:
                out[c] = x / 255.0
            elif self.channel_names[min(c, len(self.channel_names) - 1)] == "CT":
                stats = self.ct_stats[str(c)]
                out[c] = (x.clamp(stats["p00_5"], stats["p99_5"]) - stats["mean"]) / stats["std"]
            else:
                out[c] = _zscore(x, c < len(self.nonzero_mask) and self.nonzero_mask[c])
        data["image"] = out
        return data


def _zscore(x: torch.Tensor, mask_zeros: bool) -> torch.Tensor:
    if mask_zeros:  # a zero background (skull-stripped MRI, cropped volumes): ignore it
        nonzero = x != 0
        values = x[nonzero]
        if values.numel() < 2:
            return x
        return torch.where(nonzero, (x - values.mean()) / values.std().clamp_min(1e-8), x)
    return (x - x.mean()) / x.std().clamp_min(1e-8)


class PosNegCentresd(MapTransform):
    """The centres the patch sampler may draw from a label with ignored voxels (class index ``num_classes``):
    ``fg_indices`` the voxels of a foreground class, ``bg_indices`` those of background, the ignored ones in neither
    (as nnU-Net with an ignore label, which centres every patch on an annotated voxel); a label without any labelled
    voxel makes every voxel a background centre."""

    def __init__(self, num_classes: int):
        super().__init__(["label"])
        self.num_classes = num_classes

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        label = torch.as_tensor(data["label"]).flatten()
        data["fg_indices"] = ((label > 0) & (label < self.num_classes)).nonzero()[:, 0]
        data["bg_indices"] = (label == 0).nonzero()[:, 0]
        if not len(data["fg_indices"]) and not len(data["bg_indices"]):
            data["bg_indices"] = torch.arange(label.numel())
        return data


class Downsampled(MapTransform):
    """A 2D image and its label ``factor`` times coarser (the plan's low-resolution grid of images without spacing):
    each axis of S pixels becomes ``round(S / factor)``, the grid's extent kept (PyTorch's ``align_corners=False``:
    pixel j of the coarse grid is centred on pixel ``(j + 1/2) S / n - 1/2`` of the input, as
    :func:`unetzoo.methods.grid.coarse_grid` says). The image is interpolated linearly with antialiasing; the label one class at a time (nnU-Net resamples
    segmentations as one-hot maps), then argmax, so that a thin structure is not lost to nearest-neighbour picks."""

    def __init__(self, keys, factor: float, num_classes: int):
        super().__init__(keys, allow_missing_keys=True)
        self.factor, self.num_classes = float(factor), num_classes

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        for key in self.key_iterator(data):
            value = data[key]
            array = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
            size = [max(1, round(s / self.factor)) for s in array.shape[1:]]
            if key == "label":  # class indices, the ignore label's (num_classes) among them
                one_hot = torch.nn.functional.one_hot(array[0].long(), self.num_classes + 1).movedim(-1, 0).float()
                small = _resize(one_hot, size).argmax(0, keepdim=True).float()
            else:
                small = _resize(array.float(), size)
            data[key] = MetaTensor(small, meta=dict(getattr(value, "meta", {})))
        return data


def _resize(array: torch.Tensor, size: list[int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(
        array[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )[0]


def preprocessing(plan, with_label: bool = True) -> Compose:
    """The deterministic chain for a :class:`~unetzoo.data.plan.Plan`: load, normalise, then (3D) orient to RAS and
    resample to the plan's spacing, or (2D on the plan's coarse grid) downsample."""
    keys = ["image", "label"] if with_label else ["image"]
    chain = [
        LoadCased(plan.spatial_dims, plan.label_ids),
        NormalizeByModalityd(plan.channel_names, plan.ct_stats, plan.nonzero_mask),
    ]
    if plan.spatial_dims == 3:
        modes = ["bilinear", "nearest"][: len(keys)]
        chain += [Orientationd(keys, axcodes="RAS"), Spacingd(keys, pixdim=plan.target_spacing, mode=modes)]
    elif plan.downsample > 1:
        chain.append(Downsampled(keys, plan.downsample, plan.num_classes))
    return Compose(chain)


class RandInPlaneStrided(Randomizable, MapTransform):
    """Every ``stride``-th voxel of the two in-plane spatial ``axes`` from random offsets ``i, j < stride``, the same
    for every key: the training sub-sampling ``I[k:k+128, i::4, j::4]`` of Ding et al. 2021 (FLARE 2021, Table 3)
    of a ``C x 512 x 512`` CT, whose first axis is the slices (``methods.base.in_plane_axes`` finds them)."""

    def __init__(self, keys, stride: int, axes: tuple[int, int]):
        MapTransform.__init__(self, keys)
        self.stride, self.axes = stride, tuple(axes)
        self.offsets = (0, 0)

    def randomize(self, data=None) -> None:
        self.offsets = tuple(int(o) for o in self.R.randint(0, self.stride, size=2))

    def __call__(self, data):
        self.randomize()
        d = dict(data)
        for key in self.key_iterator(d):
            index = [slice(None)] * d[key].dim()
            for axis, offset in zip(self.axes, self.offsets):
                index[1 + axis] = slice(offset, None, self.stride)  # dim 0 is the channel
            d[key] = d[key][tuple(index)]
        return d


def augmentation(
    patch_size: list[int],
    aug: AugmentConfig,
    pos_neg: list[float],
    samples: int,
    stride_axes: tuple[int, int] = (0, 1),
    whole: bool = False,
    ignore_class: int | None = None,
) -> Compose:
    """Pad, sample ``samples`` patches 1:2 positive:negative (``ignore_class``, the class index of the ignore label:
    centred on labelled voxels only, :class:`PosNegCentresd`), then the papers' augmentations; with
    ``aug.in_plane_stride`` > 1 the case is first sub-sampled along its in-plane ``stride_axes``
    (:class:`RandInPlaneStrided`; default the first two, X and Y of a RAS volume: the axial plane). ``whole``: no
    pad and no crop, the whole volume (every augmentation keeps its size); ``patch_size`` then only says which
    axes are thin.

    An axis of patch size 1 (slice-by-slice 2D training) is neither rotated out of plane, zoomed nor flipped. A 3D
    patch whose shortest edge is under 1/``ANISOTROPY`` of its longest (ACDC's 160x128x5: a slab of thick slices) is
    rotated and zoomed in its plane only, nnU-Net's "dummy 2D" augmentation: a 30-degree turn out of a 5-slice slab
    would fill most of the patch with padding, and a zoom along it interpolates between slices a centimetre apart.
    """
    keys = ["image", "label"]
    dims = len(patch_size)
    thin = [s == 1 for s in patch_size]
    flat = [t or (dims == 3 and s * ANISOTROPY < max(patch_size)) for s, t in zip(patch_size, thin)]
    in_plane = [i for i in range(dims) if not thin[i]]
    radians = math.radians(aug.rotation_degrees)
    if dims == 2:
        rotate = {"range_x": radians}
    else:  # rotation about axis a turns the plane of the two other axes: allowed when neither is flat
        ranges = [radians if all(not flat[j] for j in range(3) if j != a) else 0.0 for a in range(3)]
        rotate = {"range_x": ranges[0], "range_y": ranges[1], "range_z": ranges[2]}
    zoom_lo = [aug.scaling_range[0] if not f else 1.0 for f in flat]
    zoom_hi = [aug.scaling_range[1] if not f else 1.0 for f in flat]
    chain = [RandInPlaneStrided(keys, aug.in_plane_stride, stride_axes)] if aug.in_plane_stride > 1 else []
    if not whole:
        ignored = ignore_class is not None
        centres = {"fg_indices_key": "fg_indices", "bg_indices_key": "bg_indices"} if ignored else {}
        chain += [
            SpatialPadd(keys, spatial_size=patch_size),
            *([PosNegCentresd(ignore_class)] if ignored else []),
            RandCropByPosNegLabeld(
                keys, "label", spatial_size=patch_size, pos=pos_neg[0], neg=pos_neg[1], num_samples=samples, **centres
            ),
        ]
    chain += [
        RandRotated(
            keys, prob=aug.rotation_p, mode=["bilinear", "nearest"], padding_mode="zeros", keep_size=True, **rotate
        ),
        RandZoomd(
            keys,
            prob=aug.scaling_p,
            min_zoom=zoom_lo,
            max_zoom=zoom_hi,
            mode=["trilinear" if dims == 3 else "bilinear", "nearest"],
            keep_size=True,
        ),
    ]
    if aug.elastic_p > 0 and len(in_plane) == dims:
        elastic = Rand3DElasticd if dims == 3 else Rand2DElasticd
        spacing = (
            {"sigma_range": (5, 8), "magnitude_range": (50, 150)}
            if dims == 3
            else {"spacing": (20, 20), "magnitude_range": (1, 2)}
        )
        chain.append(elastic(keys, prob=aug.elastic_p, mode=["bilinear", "nearest"], padding_mode="zeros", **spacing))
    chain += [RandFlipd(keys, prob=aug.flip_p, spatial_axis=axis) for axis in in_plane]
    chain += [
        RandGaussianNoised("image", prob=aug.noise_p, std=aug.noise_std),
        RandAdjustContrastd("image", prob=aug.contrast_p, gamma=tuple(aug.contrast_gamma), retain_stats=True),
    ]
    return Compose(chain)
