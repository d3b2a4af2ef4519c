"""The dataset plan: verify every training case once, then fix spacing, patch, batch, topology and normalisation.

Like nnU-Net's fingerprint + ExperimentPlanner, but one small JSON (``plan.json`` in the run folder) computed once
per run:

* **spacing**: the median spacing (in the canonical RAS frame); when it is anisotropic (the coarsest axis > 3x the
  others, and that axis has < 1/3 of their voxels) the coarse axis takes the 10th percentile instead, not finer
  than the other axes (nnU-Net's ``determine_fullres_target_spacing``). Identity affines (a source that dropped
  the spacing) and PNG images have **unknown spacing**: the plan says so (``spacing_known``) and every rule below
  works on voxel counts (spacing 1).
* **patch**: nnU-Net's: a cube (256^3 / 2048^2) shaped by 1/spacing, clipped to the median shape, rounded up to a
  multiple of the network's strides; while it holds more than half the step budget, the axis largest relative to
  the median shrinks by its stride multiple. No per-axis cap.
* **batch**: the step budget over the patch (>= 2), at most 5 % of the dataset's voxels per step (nnU-Net).
  ``STEP_BUDGET`` is voxels per step (patch x batch). On CPU it is sized to a measured step time: 2 x 48^3 (3D) and
  4 x 256^2 (2D), about 3 s per ``unet`` step on two threads of this project's CPU in fp32 (docs/results/plan-cost.md: a 3D ``unet``
  step trains ~37k voxels/s per thread, a 2D ``unet2d-slices`` one ~45k pixels/s), so a 20-30 minute budget gets
  several hundred steps (the previous CPU budget, 2 x 64^3 and 12 x 256^2, made one ACDC ``unet`` step 12 s). On a
  GPU nnU-Net's references, 2 x 128^3 and 12 x 512^2. A time budget then sizes the network's width to the measured
  step (:mod:`unetzoo.training.width`).
* **topology** (``strides``, ``kernel_sizes``): from the patch and spacing by :mod:`unetzoo.data.topology`; with
  unknown spacing, a 3D axis with under 1/3 of the others' voxels counts as a stack of thick slices
  (:func:`~unetzoo.data.topology.shape_spacing`: in-plane kernels first, as nnU-Net's for known thick slices).
* **slice axis** (3D): the through-plane axis of the 2D configuration (``unet2d-slices``): the coarsest spacing,
  among axes within 10 % of it (all of them when the spacing is unknown or isotropic) the one with fewest voxels
  (ties: the last). The in-plane stride of Ding et al. 2021 (FLARE 2021) strides the two other axes.
* **resolution** (nnU-Net's ``3d_lowres`` idea, for 2D and 3D): when the patch holds under ``LOW_RES_COVERAGE`` of
  the median image, the plan also proposes a coarser grid, ``low_factor`` times the target spacing (2D images
  without spacing: downsampled ``low_factor`` times), the smallest at which the planned patch covers the whole
  median image, but no coarser than keeps the smallest labelled structure ``MIN_STRUCTURE_PIXELS`` voxels across
  (:func:`structure_thickness`: twice a component's largest inscribed radius, its 5th percentile over every
  component of the labels of up to ``STRUCTURE_CASES`` training cases, in voxels of the coarsest target axis). A
  proposal under ``MIN_LOW_FACTOR`` is dropped. ``data.resolution`` picks the grid: ``auto`` takes the proposal for
  patch-based methods (a step costs the same voxels on either grid, so the coarse one shows ``low_factor^d`` times
  more of each image per step), ``full`` or ``low`` force one. Predictions are resampled back to the input's grid (probabilities, then
  argmax).
* CT statistics from foreground voxels (0.5/99.5 percentiles, mean, std); voxels of the ignore label
  (``dataset.json``'s label named ``ignore``) are unlabelled, not foreground.

Explicit values (``--patch``, ``--set data.target_spacing=...``, ``--batch-size``, ``--set model_args.strides=...``) win. A 3D+t
case (4D NIfTI of a 1-channel dataset) is verified frame by frame and counts once, by its first frame.
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
from unetzoo.data.topology import ANISOTROPY, divisor, pool_and_conv, shape_spacing
from unetzoo.data.transforms import RGB_NAMES
from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import case_frames, check_same_grid, read_image, read_label_frames

log = logging.getLogger(__name__)
PATCH_CAP = {2: 256, 3: 128}  # largest patch edge of a synthetic plan (benchmarks, tests) per spatial dims
STEP_BUDGET = {
    "cpu": {3: 2 * 48**3, 2: 4 * 256**2},
    "cuda": {3: 2 * 128**3, 2: 12 * 512**2},
}  # voxels per step (module docstring)
REFERENCE_EDGE = {3: 256, 2: 2048}  # nnU-Net's initial patch: this edge^d, shaped by 1/spacing
MIN_BATCH = 2
MAX_DATASET_SHARE = 0.05  # one batch covers at most this share of the dataset's voxels (nnU-Net)
CT_SAMPLES_PER_CASE = 10_000
NONZERO_MASK_FRACTION = 0.9  # a channel whose median nonzero fraction is below this has a zero background
LOW_RES_COVERAGE = 0.5  # the patch holds under this share of the median image: propose a coarser grid
MIN_STRUCTURE_PIXELS = 8  # the smallest labelled structure keeps at least this many voxels across on it
STRUCTURE_PERCENTILE = 5  # "the smallest structure": this percentile of the components' thickness (stray specks out)
MIN_LOW_FACTOR = 1.5  # a coarser grid by less than this is not worth a second configuration
STRUCTURE_CASES = 50  # the structures are measured on at most this many training cases (drawn with the seed)
LOW_FACTOR_STEP = 1.03  # the search for the factor grows it by this ratio (nnU-Net's 3d_lowres step)


@dataclass
class Plan:
    """What training fixed about the data; saved as ``plan.json`` and read back by every later command.

    ``labels`` maps label id (as a string, JSON's key type) to name, background included, in increasing id order:
    class k of the network is the k-th label id (ids need not be consecutive: 0, 1, 3 are classes 0, 1, 2);
    ``target_spacing`` is None for 2D (PNG) data; ``patch_size`` is the training patch (for whole-volume methods:
    the padded volume); ``nonzero_mask`` says per channel whether z-scoring ignores zero voxels (decided once for
    the dataset, as nnU-Net's ``use_mask_for_norm``, so test images are normalised like training images).
    ``spacing_known`` is False for identity affines and PNG (voxel counts stand in); ``batch_size`` is the planned
    batch (``train.batch_size`` None takes it); ``strides`` / ``kernel_sizes`` (per stage, per axis) the network's
    topology for the patch; ``slice_axis`` (3D) the through-plane axis the 2D configuration slices along. A plan
    saved before these fields existed loads with them computed from its patch and spacing (batch 2, the old default).
    ``ignore_label`` is the id of the dataset's label named ``ignore`` (unlabelled voxels, nnU-Net's ignore label),
    which is no class: ``labels`` leave it out, and the preprocessed label maps hold it as class index
    ``num_classes``, which losses, validation and sampling treat as unlabelled. ``resolution`` is the grid the run
    trains and predicts on ("full" or "low"), ``low_factor`` the coarser grid's factor the plan proposed (None: none;
    kept when the run trains at full resolution) and ``low_reason`` why none was proposed; with "low", spacing (3D),
    median shape, patch, batch and topology are those of the coarse grid (``config.json`` keeps the option asked for,
    ``data.resolution`` "auto", and this field the grid that ran).
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
    spacing_known: bool = True
    batch_size: int = MIN_BATCH
    strides: list[list[int]] | None = None
    kernel_sizes: list[list[int]] | None = None
    slice_axis: int | None = None
    ignore_label: int | None = None
    resolution: str = "full"
    low_factor: float | None = None
    low_reason: str = ""

    def __post_init__(self):
        if self.strides is None:
            self.strides, self.kernel_sizes = pool_and_conv(self.patch_size, self.topology_spacing)
        if self.slice_axis is None and self.spatial_dims == 3:
            self.slice_axis = through_plane_axis(self.topology_spacing, self.median_shape)

    @property
    def topology_spacing(self) -> list[float] | None:
        """The spacing the topology rules see: the target spacing when known, else what the shape says
        (:func:`unetzoo.data.topology.shape_spacing`: a stack of thin slices, or None: voxel counts)."""
        return self.target_spacing if self.spacing_known else shape_spacing(self.median_shape)

    @property
    def downsample(self) -> float:
        """How many times coarser than the input a 2D image is preprocessed (1: its own pixels); 3D data takes its
        coarse grid from ``target_spacing``."""
        return self.low_factor if self.resolution == "low" and self.spatial_dims == 2 else 1.0

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_ids(self) -> list[int]:
        """The label id of each class of the network, background (class 0) first."""
        return sorted(int(k) for k in self.labels)

    def for_whole_volumes(self) -> Plan:
        """This plan with the uncapped median shape (rounded up to a multiple of 8) as its patch: what a method
        that trains and predicts on whole volumes takes."""
        return dataclasses.replace(self, patch_size=rounded_shape(self.median_shape), strides=None, kernel_sizes=None)

    def describe(self) -> str:
        """One line for the training log: what the plan decided and why."""
        stack = None if self.spacing_known else self.topology_spacing
        spacing = (
            f"spacing {_fmt(self.target_spacing)} mm"
            if self.spacing_known
            else "spacing unknown (identity affines or PNG): patch and topology from voxel counts"
            + (
                f", except axis {stack.index(max(stack))}: a stack of thick slices, counted {max(stack):.3g}x coarser for the topology"
                if stack
                else ""
            )
        )
        slicing = f", slice axis {self.slice_axis}" if self.spatial_dims == 3 else ""
        if self.resolution == "low":
            grid = f", low resolution ({self.low_factor:g}x coarser than the full-resolution grid)"
        elif self.low_factor:
            grid = f", full resolution (a {self.low_factor:g}x coarser grid was proposed: --set data.resolution=low)"
        else:
            grid = f", full resolution ({self.low_reason})" if self.low_reason else ", full resolution"
        return (
            f"plan: patch {_fmt(self.patch_size)} (median shape {_fmt(self.median_shape)}), batch {self.batch_size}, {spacing}, "
            f"{len(self.strides)} stages, strides {self.strides}, kernel sizes {self.kernel_sizes}{slicing}{grid}"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        from unetzoo.io import write_text

        write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise file_error(path, f"unreadable plan ({type(exc).__name__}: {exc})") from None

    @classmethod
    def synthetic(
        cls, spatial: list[int], channels: int = 1, classes: int = 2, patch: list[int] | None = None, cap: bool = True
    ) -> Plan:
        """The plan of synthetic data of ``spatial`` shape (benchmarks, tests): 1-mm MRI-like channels (2D: unknown
        spacing, as PNG), batch 2, the patch the shape itself (capped per axis at ``PATCH_CAP`` unless ``cap`` is
        False); strides and slice axis planned from it."""
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
            patch_size=[int(p) for p in patch]
            if patch
            else [min(PATCH_CAP[dims], int(s)) if cap else int(s) for s in spatial],
            spacing_known=dims == 3,
        )


def _fmt(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def through_plane_axis(spacing, median_shape) -> int:
    """The axis a 2D configuration slices along: the coarsest spacing (None: unknown, every axis 1); among the axes
    within 10 % of it, the one with the fewest voxels (on a tie the last: Z of a RAS volume, an axial scan's slices)."""
    spacing = np.ones(len(median_shape)) if spacing is None else np.asarray(spacing, float)
    coarse = [a for a in range(len(spacing)) if spacing[a] >= 0.9 * spacing.max()]
    return int(min(coarse, key=lambda a: (median_shape[a], -a)))


def anisotropic_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """The median spacing, except on a coarse axis (> 3x the others' spacing with < 1/3 of their voxels): the 10th
    percentile there, not finer than the other axes (nnU-Net's ``determine_fullres_target_spacing``)."""
    target = np.median(spacings, axis=0)
    sizes = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    if others and target[worst] > ANISOTROPY * target[others].max() and sizes[worst] * ANISOTROPY < sizes[others].min():
        target[worst] = max(np.percentile(spacings[:, worst], 10), target[others].max())
    return target


def plan_patch(median_shape, spacing, budget: int) -> list[int]:
    """nnU-Net's patch (module docstring): ``REFERENCE_EDGE^d`` voxels shaped by 1/spacing (None: a cube), clipped to
    the median shape, rounded up to the strides' multiple; the axis largest relative to the median (rounded up
    likewise, so that rounding alone never singles out an axis; ties: the longest) shrinks by that multiple while
    the patch holds more than ``budget / MIN_BATCH`` voxels."""
    dims = len(median_shape)
    median = np.maximum(np.asarray(median_shape, float), 1.0)
    inverse = 1.0 / (np.ones(dims) if spacing is None else np.asarray(spacing, float))
    initial = inverse * (REFERENCE_EDGE[dims] ** dims / np.prod(inverse)) ** (1 / dims)
    patch = [max(1, int(round(p))) for p in np.minimum(initial, median)]
    while True:
        multiple = divisor(pool_and_conv(patch, spacing)[0])
        patch = [int(m * np.ceil(p / m)) for p, m in zip(patch, multiple)]
        if np.prod(patch) <= budget // MIN_BATCH or all(p <= m for p, m in zip(patch, multiple)):
            return patch
        target = [m * np.ceil(d / m) for d, m in zip(median, multiple)]  # the median as the strides round it
        shrinkable = [a for a in range(dims) if patch[a] > multiple[a]]
        axis = max(shrinkable, key=lambda a: (patch[a] / target[a], patch[a], a))
        patch[axis] -= multiple[axis]


def plan_batch(patch, budget: int, dataset_voxels: float) -> int:
    """The step budget over the patch, at most ``MAX_DATASET_SHARE`` of the dataset's voxels, at least ``MIN_BATCH``."""
    voxels = float(np.prod(patch))
    return int(max(MIN_BATCH, min(budget // voxels, MAX_DATASET_SHARE * dataset_voxels // voxels)))


def rounded_shape(shape) -> list[int]:
    """Every edge rounded up to a multiple of 8 (a patch that a U-Net with up to 4 halvings divides)."""
    return [int(8 * np.ceil(float(s) / 8)) for s in shape]


def structure_thickness(label: np.ndarray, spacing, ignore_label: int | None = None) -> list[float]:
    """The thickness of every connected component of every foreground class of ``label``: twice the largest
    distance from one of its voxels to the nearest voxel outside it (the diameter of its largest inscribed ball), in
    the units of ``spacing`` (per array axis; voxels when all ones). Measured to the voxel: a bar w voxels wide is w
    thick when w is even, w + 1 when odd."""
    from scipy import ndimage

    thickness = []
    for value in np.unique(label):
        if value == 0 or value == ignore_label:
            continue
        mask = label == value
        components, count = ndimage.label(mask)
        distance = ndimage.distance_transform_edt(mask, sampling=spacing)
        thickness += [2.0 * float(d) for d in ndimage.maximum(distance, components, index=range(1, count + 1))]
    return thickness


def low_resolution_factor(median_shape, spacing, budget: int, measure, patch_size=None) -> tuple[float | None, str]:
    """The coarser grid the plan proposes (module docstring), as a factor on the spacing (``spacing`` None: voxel
    counts), and, when none, why. ``measure()`` gives the smallest structure's thickness in voxels of the coarsest
    axis of the full-resolution grid (None: no labelled voxel); it is called only when the patch is small. An
    explicit ``patch_size`` is the patch on every grid; otherwise each grid's is planned."""

    def patch(factor: float):
        scaled = None if spacing is None else np.asarray(spacing, float) * factor
        return patch_size or plan_patch(median / factor, scaled, budget)

    median = np.asarray(median_shape, float)
    coverage = float(np.prod(patch(1.0)) / np.prod(median))
    if coverage >= LOW_RES_COVERAGE:
        return None, f"the patch holds {coverage:.0%} of the median image"
    smallest = measure()
    if not smallest:
        return None, f"the patch holds {coverage:.0%} of the median image, but no case has a labelled voxel"
    cap = smallest / MIN_STRUCTURE_PIXELS
    factor = 1.0
    while factor < cap and not all(p >= s for p, s in zip(patch(factor), median / factor)):
        factor = min(factor * LOW_FACTOR_STEP, cap)
    if factor >= MIN_LOW_FACTOR:
        return round(factor, 3), ""
    if factor < cap:  # the patch covers the image on a grid barely coarser
        return None, f"the patch holds {coverage:.0%} of the median image, and covers it {factor:.3g}x coarser"
    return None, (
        f"the patch holds {coverage:.0%} of the median image, but the smallest labelled structure, "
        f"{smallest:.3g} voxels across, allows a grid only {max(factor, 1.0):.3g}x coarser"
    )


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
    images = (
        [dataclasses.replace(image, array=image.array[t : t + 1]) for t in range(frames)] if frames > 1 else [image]
    )
    if images[0].array.shape[0] != n_channels:
        hint = (
            " (a 4D image is 3D+t only in a 1-channel dataset; in a C-channel one it holds the C channels)"
            if n_channels > 1
            else ""
        )
        raise file_error(
            case.images[0], f"has {images[0].array.shape[0]} channel(s), dataset.json lists {n_channels}{hint}"
        )
    labels = read_label_frames(case.label, dataset.spatial_dims)
    if len(labels) != frames:
        raise file_error(case.label, f"has {len(labels)} time frame(s), the image {case.images[0].name} has {frames}")
    found: set[int] = set()
    for image, label in zip(images, labels):
        if label.array.shape != image.spatial_shape:
            raise file_error(
                case.label,
                f"label shape {label.array.shape} differs from image shape {image.spatial_shape} ({case.images[0].name})",
            )
        against = f"the image's ({case.images[0].name})"
        check_same_grid(
            case.label, label.affine, image.affine, "label affine", against, "the label is not on the image's grid"
        )
        values = set(np.unique(label.array).tolist())
        unknown = sorted(values - set(dataset.labels))
        if unknown:
            raise file_error(
                case.label, f"label values {unknown} are not listed in dataset.json labels {sorted(dataset.labels)}"
            )
        found |= values
    return images[0], labels[0], found


def _labels(dataset: Dataset) -> dict[str, str]:
    return {str(k): v for k, v in sorted(dataset.class_labels.items())}


def verify_against_plan(dataset: Dataset, plan: Plan, plan_path: Path, cases: list[Case] | None = None) -> None:
    """Check the dataset against the plan a run already holds (a resumed or restarted run): the same channels and
    labels, and ``cases`` (default every case; a run passes the cases it was planned from, its training cases)
    verified again, since files may have changed since the plan was made."""
    from tqdm import tqdm

    if (
        plan.channel_names != dataset.channel_names
        or plan.labels != _labels(dataset)
        or plan.ignore_label != dataset.ignore_label
    ):
        ignore = f" (ignore label {plan.ignore_label})" if plan.ignore_label is not None else ""
        now = f" (ignore label {dataset.ignore_label})" if dataset.ignore_label is not None else ""
        raise file_error(
            plan_path,
            f"made for channels {plan.channel_names} and labels {plan.labels}{ignore}, but "
            f"{dataset.root / 'dataset.json'} now lists {dataset.channel_names} and {_labels(dataset)}{now}: "
            "train into a new run folder",
        )
    found: set[int] = set()
    cases = dataset.cases if cases is None else cases
    for case in tqdm(cases, desc="verifying dataset", unit="case", disable=len(cases) < 10, leave=False):
        found |= verify_case(case, dataset)[2]
    for warning in dataset_warnings(dataset, found):
        log.warning(warning)


def make_plan(
    dataset: Dataset,
    cases: list[Case],
    patch_size=None,
    target_spacing=None,
    seed: int = 0,
    cap_patch: bool = True,
    device: str = "cpu",
    resolution: str = "auto",
) -> Plan:
    """Verify ``cases`` and compute the plan (see module docstring) for a ``device`` kind ("cuda" or anything else:
    the CPU budget); explicit arguments override the planned values. ``cap_patch`` False (methods that take whole
    volumes) keeps the whole median shape as the patch and batch ``MIN_BATCH``. ``resolution`` ("auto",
    "full" or "low": ``data.resolution``) the grid; "auto" takes a proposed coarse grid when ``cap_patch``, "low"
    without a proposal is one line saying why there is none. An explicit ``target_spacing`` is the grid: no coarse
    one is proposed."""
    from tqdm import tqdm

    dims = dataset.spatial_dims
    rng = np.random.default_rng(seed)
    ct_channels = [i for i, name in enumerate(dataset.channel_names) if name.upper() == "CT"]
    zscore_channels = (
        []
        if all(name.upper() in RGB_NAMES for name in dataset.channel_names)
        else [i for i, name in enumerate(dataset.channel_names) if name.upper() != "CT"]
    )
    spacings, shapes, ct_values, identity = [], [], {c: [] for c in ct_channels}, []
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
        identity.append(dims == 2 or np.allclose(image.affine, np.eye(dims + 1), rtol=0, atol=1e-6))
        for c in zscore_channels:
            nonzero[c].append(np.count_nonzero(image.array[c]) / image.array[c].size)
        foreground = label.array > 0
        if dataset.ignore_label is not None:  # ignored voxels are unlabelled, not foreground
            foreground &= label.array != dataset.ignore_label
        for c in ct_channels:
            values = image.array[c][foreground]
            if values.size:
                ct_values[c].append(rng.choice(values, min(values.size, CT_SAMPLES_PER_CASE), replace=False))
    for warning in dataset_warnings(dataset, found):
        log.warning(warning)
    spacings, shapes = np.array(spacings, float), np.array(shapes, float)
    known = not all(identity)
    spacing = np.array(target_spacing, float) if target_spacing else anisotropic_target_spacing(spacings, shapes)
    resampled = shapes * spacings / spacing
    median_shape = np.median(resampled, axis=0)
    budget = STEP_BUDGET["cuda" if device == "cuda" else "cpu"][dims]
    low_factor, low_reason = None, "its target spacing was given"
    if not target_spacing:
        scale = float(spacing.max()) if known else 1.0  # thickness in voxels of the coarsest target axis
        low_factor, low_reason = low_resolution_factor(
            median_shape,
            spacing if known else None,
            budget,
            lambda: _smallest_structure(_sample(cases, STRUCTURE_CASES, rng), dataset, scale),
            [int(p) for p in patch_size] if patch_size else None,
        )
    chosen = "low" if resolution == "low" or (resolution == "auto" and cap_patch and low_factor) else "full"
    if chosen == "low":
        if not low_factor:
            raise UnetzooError(
                f"data.resolution=low: the plan of {dataset.root} proposes no coarser grid ({low_reason})"
            )
        spacing, median_shape, resampled = spacing * low_factor, median_shape / low_factor, resampled / low_factor
    if patch_size:
        patch = [int(p) for p in patch_size]
    elif cap_patch:
        patch = plan_patch(median_shape, spacing if known else None, budget)
    else:
        patch = rounded_shape(median_shape)
    if len(patch) != dims:
        raise file_error(dataset.root, f"patch size {patch} has {len(patch)} axes, the images have {dims}")
    batch = plan_batch(patch, budget, resampled.prod(axis=1).sum()) if cap_patch else MIN_BATCH
    ct_stats = {}
    for c, chunks in ct_values.items():
        values = np.concatenate(chunks) if chunks else np.zeros(1)
        lo, hi = np.percentile(values, [0.5, 99.5])
        clipped = np.clip(values, lo, hi)
        ct_stats[str(c)] = {
            "p00_5": float(lo),
            "p99_5": float(hi),
            "mean": float(clipped.mean()),
            "std": float(clipped.std() or 1.0),
        }
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
        nonzero_mask=[
            c in nonzero and bool(np.median(nonzero[c]) < NONZERO_MASK_FRACTION)
            for c in range(len(dataset.channel_names))
        ],
        spacing_known=known,
        batch_size=batch,
        ignore_label=dataset.ignore_label,
        resolution=chosen,
        low_factor=low_factor,
        low_reason=low_reason,
    )


def _sample(cases: list[Case], count: int, rng: np.random.Generator) -> list[Case]:
    """At most ``count`` of ``cases``, drawn by ``rng`` (all of them, in order, when there are not more)."""
    if len(cases) <= count:
        return cases
    return [cases[i] for i in sorted(rng.choice(len(cases), count, replace=False))]


def _smallest_structure(cases: list[Case], dataset: Dataset, scale: float) -> float | None:
    """The smallest labelled structure of ``cases`` (``STRUCTURE_PERCENTILE`` of every component's
    :func:`structure_thickness`, in mm for known spacing, else voxels) over ``scale``, the coarsest target axis;
    None when no case has a labelled voxel."""
    from tqdm import tqdm

    thickness = []
    for case in tqdm(cases, desc="measuring structures", unit="case", disable=len(cases) < 10, leave=False):
        label = read_label_frames(case.label, dataset.spatial_dims)[0]
        spacing = label.spacing if dataset.spatial_dims == 3 else None
        thickness += structure_thickness(label.array, spacing, dataset.ignore_label)
    return float(np.percentile(thickness, STRUCTURE_PERCENTILE)) / scale if thickness else None
