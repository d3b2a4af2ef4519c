"""The dataset plan: verify every training case once, then fix spacing, patch and normalisation statistics.

Like nnU-Net's fingerprint + plans, but one small JSON (``plan.json`` in the run folder) computed once per run:
target spacing = median spacing (in the canonical RAS frame), patch = median resampled shape rounded up to a
multiple of 8 and capped, CT statistics from foreground voxels (0.5/99.5 percentiles, mean, std). A 3D+t case
(4D NIfTI of a 1-channel dataset) is verified frame by frame and counts once, by its first frame.
Verification reads every file, so a bad case stops the run before training with one line naming the file; what
training survives but should not go unnoticed (duplicate cases, labels without an image, label ids no case holds)
is a warning line naming the files (:func:`unetzoo.data.datasets.dataset_warnings`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unetzoo.data.datasets import Case, Dataset, dataset_warnings
from unetzoo.data.transforms import RGB_NAMES
from unetzoo.errors import file_error
from unetzoo.io import AFFINE_TOLERANCE_MM, case_frames, read_image, read_label_frames

log = logging.getLogger(__name__)
PATCH_CAP = {2: 256, 3: 128}  # largest default patch edge per spatial dims
CT_SAMPLES_PER_CASE = 10_000
NONZERO_MASK_FRACTION = 0.9  # a channel whose median nonzero fraction is below this has a zero background


@dataclass
class Plan:
    """What training fixed about the data; saved as ``plan.json`` and read back by every later command.

    ``labels`` maps label id (as a string, JSON's key type) to name, background included, in increasing id order:
    class k of the network is the k-th label id (ids need not be consecutive: 0, 1, 3 are classes 0, 1, 2);
    ``target_spacing`` is None for 2D (PNG) data; ``patch_size`` is the training patch (for whole-volume methods:
    the padded volume); ``nonzero_mask`` says per channel whether z-scoring ignores zero voxels (decided once for
    the dataset, as nnU-Net's ``use_mask_for_norm``, so test images are normalised like training images).
    """

    spatial_dims: int
    channel_names: list[str]
    labels: dict[str, str]
    num_classes: int
    file_ending: str
    n_channel_files: int
    target_spacing: list[float] | None
    median_shape: list[float]
    patch_size: list[int]
    ct_stats: dict = field(default_factory=dict)
    nonzero_mask: list[bool] = field(default_factory=list)

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_ids(self) -> list[int]:
        """The label id of each class of the network, background (class 0) first."""
        return sorted(int(k) for k in self.labels)

    def for_whole_volumes(self) -> "Plan":
        """This plan with the uncapped median shape (rounded up to a multiple of 8) as its patch: what a method
        that trains and predicts on whole volumes takes."""
        return dataclasses.replace(self, patch_size=rounded_shape(self.median_shape))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        from unetzoo.io import write_text

        write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise file_error(path, f"unreadable plan ({type(exc).__name__}: {exc})") from None

    @classmethod
    def synthetic(cls, spatial: list[int], channels: int = 1, classes: int = 2, patch: list[int] | None = None, cap: bool = True) -> "Plan":
        """The plan of synthetic data of ``spatial`` shape (benchmarks, tests): 1-mm MRI-like channels, the patch
        the shape itself (capped per axis like a dataset's unless ``cap`` is False)."""
        dims = len(spatial)
        return cls(
            spatial_dims=dims,
            channel_names=["MRI"] * channels,
            labels={str(i): "background" if i == 0 else f"class{i}" for i in range(classes)},
            num_classes=classes,
            file_ending=".nii.gz" if dims == 3 else ".png",
            n_channel_files=channels,
            target_spacing=[1.0] * dims if dims == 3 else None,
            median_shape=[float(s) for s in spatial],
            patch_size=[int(p) for p in patch] if patch else [min(PATCH_CAP[dims], int(s)) if cap else int(s) for s in spatial],
        )


def rounded_shape(shape) -> list[int]:
    """Every edge rounded up to a multiple of 8 (a patch that a U-Net with up to 4 halvings divides)."""
    return [int(8 * np.ceil(float(s) / 8)) for s in shape]


def ras_axes(affine: np.ndarray) -> np.ndarray:
    """For each array axis, the RAS axis it becomes after reorientation (nibabel's io_orientation)."""
    import nibabel as nib

    return nib.orientations.io_orientation(affine)[:, 0].astype(int)


def verify_case(case: Case, dataset: Dataset):
    """Read a case and check it; returns (image, label) (of the first frame of a 3D+t case, whose frames share
    one geometry) and the label values of every frame, or raises a one-line error naming the file."""
    n_channels = len(dataset.channel_names)
    frames = case_frames(case.images, n_channels)
    image = read_image(case.images, dataset.spatial_dims)  # a 3D+t case: the file read once, its T frames as channels
    images = [dataclasses.replace(image, array=image.array[t : t + 1]) for t in range(frames)] if frames > 1 else [image]
    if images[0].array.shape[0] != n_channels:
        hint = " (a 4D image is 3D+t only in a 1-channel dataset; in a C-channel one it holds the C channels)" if n_channels > 1 else ""
        raise file_error(case.images[0], f"has {images[0].array.shape[0]} channel(s), dataset.json lists {n_channels}{hint}")
    labels = read_label_frames(case.label, dataset.spatial_dims)
    if len(labels) != frames:
        raise file_error(case.label, f"has {len(labels)} time frame(s), the image {case.images[0].name} has {frames}")
    found: set[int] = set()
    for image, label in zip(images, labels):
        if label.array.shape != image.spatial_shape:
            raise file_error(case.label, f"label shape {label.array.shape} differs from image shape {image.spatial_shape} ({case.images[0].name})")
        if not np.allclose(label.affine, image.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
            raise file_error(case.label, f"label affine differs from the image's ({case.images[0].name}) by up to "
                                         f"{np.abs(label.affine - image.affine).max():.4g} mm: the label is not on the image's grid (flipped, shifted or rescaled?)")
        values = set(np.unique(label.array).tolist())
        unknown = sorted(values - set(dataset.labels))
        if unknown:
            raise file_error(case.label, f"label values {unknown} are not listed in dataset.json labels {sorted(dataset.labels)}")
        found |= values
    return images[0], labels[0], found


def _labels(dataset: Dataset) -> dict[str, str]:
    return {str(k): v for k, v in sorted(dataset.labels.items())}


def verify_against_plan(dataset: Dataset, plan: Plan, plan_path: Path) -> None:
    """Check the dataset against the plan a run already holds (a resumed or restarted run): the same channels and
    labels, and every case verified again, since files may have changed since the plan was made."""
    from tqdm import tqdm

    if plan.channel_names != dataset.channel_names or plan.labels != _labels(dataset):
        raise file_error(plan_path, f"made for channels {plan.channel_names} and labels {plan.labels}, but {dataset.root / 'dataset.json'} "
                                    f"now lists {dataset.channel_names} and {_labels(dataset)}: train into a new run folder")
    found: set[int] = set()
    for case in tqdm(dataset.cases, desc="verifying dataset", unit="case", disable=len(dataset.cases) < 10, leave=False):
        found |= verify_case(case, dataset)[2]
    for warning in dataset_warnings(dataset, found):
        log.warning(warning)


def make_plan(dataset: Dataset, cases: list[Case], patch_size=None, target_spacing=None, seed: int = 0, cap_patch: bool = True) -> Plan:
    """Verify ``cases`` and compute the plan (see module docstring); explicit arguments override the medians.
    ``cap_patch`` False (methods that take whole volumes) keeps the whole median shape as the patch."""
    from tqdm import tqdm

    dims = dataset.spatial_dims
    rng = np.random.default_rng(seed)
    ct_channels = [i for i, name in enumerate(dataset.channel_names) if name.upper() == "CT"]
    zscore_channels = [] if all(name.upper() in RGB_NAMES for name in dataset.channel_names) else \
        [i for i, name in enumerate(dataset.channel_names) if name.upper() != "CT"]
    spacings, shapes, ct_values = [], [], {c: [] for c in ct_channels}
    nonzero = {c: [] for c in zscore_channels}
    found: set[int] = set()
    for case in tqdm(cases, desc="verifying dataset", unit="case", disable=len(cases) < 10, leave=False):
        image, label, values = verify_case(case, dataset)
        found |= values
        spacing, shape = np.array(image.spacing), np.array(image.spatial_shape)
        if dims == 3:
            axes = ras_axes(image.affine)
            spacing[axes], shape[axes] = spacing.copy(), shape.copy()
        spacings.append(spacing)
        shapes.append(shape)
        for c in zscore_channels:
            nonzero[c].append(np.count_nonzero(image.array[c]) / image.array[c].size)
        foreground = label.array > 0
        for c in ct_channels:
            values = image.array[c][foreground]
            if values.size:
                ct_values[c].append(rng.choice(values, min(values.size, CT_SAMPLES_PER_CASE), replace=False))
    for warning in dataset_warnings(dataset, found):
        log.warning(warning)
    spacing = np.array(target_spacing, float) if target_spacing else np.median(spacings, axis=0)
    median_shape = np.median([s * sp / spacing for s, sp in zip(shapes, spacings)], axis=0)
    if patch_size:
        patch = [int(p) for p in patch_size]
    else:
        patch = rounded_shape(median_shape)
        patch = [min(PATCH_CAP[dims], p) for p in patch] if cap_patch else patch
    if len(patch) != dims:
        raise file_error(dataset.root, f"patch size {patch} has {len(patch)} axes, the images have {dims}")
    ct_stats = {}
    for c, chunks in ct_values.items():
        values = np.concatenate(chunks) if chunks else np.zeros(1)
        lo, hi = np.percentile(values, [0.5, 99.5])
        clipped = np.clip(values, lo, hi)
        ct_stats[str(c)] = {"p00_5": float(lo), "p99_5": float(hi), "mean": float(clipped.mean()), "std": float(clipped.std() or 1.0)}
    return Plan(
        spatial_dims=dims,
        channel_names=list(dataset.channel_names),
        labels=_labels(dataset),
        num_classes=dataset.num_classes,
        file_ending=dataset.file_ending,
        n_channel_files=len(cases[0].images),
        target_spacing=[float(s) for s in spacing] if dims == 3 else None,
        median_shape=[float(s) for s in median_shape],
        patch_size=patch,
        ct_stats=ct_stats,
        nonzero_mask=[c in nonzero and bool(np.median(nonzero[c]) < NONZERO_MASK_FRACTION) for c in range(len(dataset.channel_names))],
    )
