"""Synthetic datasets for tests, demos and smoke runs without downloads.

``write_organs_phantom`` writes 3D MRI-like volumes with a few overlapping ellipsoid "organs";
``write_nuclei_phantom`` writes 2D RGB images of bright nuclei on a dark background (both nnU-Net v2 layout);
``write_cardiac_phantom`` writes 3D+t beating hearts as 4D NIfTI files (MSD layout). These are easy
enough for a small U-Net to learn in a few hundred iterations. ``write_vessels_phantom`` writes sparse
MRA-like vessel trees among bright distractors (the task of Angermann & Haltmeier 2019, arXiv:1910.10398), harder
by design. ``write_ellipses_phantom`` writes large 2D ultrasound-like images of one ellipse among same-texture
distractors, which a full-resolution patch cannot tell apart. All are reproducible: case ``i`` is drawn from
``(seed, i)`` only, so the same seed gives identical arrays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.ndimage import label as label_components

from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import write_array, write_text

MIN_STRUCTURE_VOXELS = 300


def _case_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    """A random 3x3 rotation about a random axis by up to ``max_degrees`` (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _ellipsoid(
    coords: np.ndarray, centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Mask of the points of ``coords`` (3, *shape) inside the ellipsoid of ``radii`` about ``centre``, its axes
    turned by ``rotation`` (3x3)."""
    local = coords - centre[:, None, None, None]
    if rotation is not None:
        local = np.tensordot(rotation.T, local, axes=1)
    return np.sum((local / radii[:, None, None, None]) ** 2, axis=0) <= 1.0


def _write_dataset_json(
    out_dir: Path, name: str, description: str, channel_names: dict, labels: dict, cases: int, ending: str
) -> None:
    dataset = {
        "name": name,
        "description": description,
        "channel_names": channel_names,
        "labels": labels,
        "numTraining": cases,
        "file_ending": ending,
    }
    write_text(out_dir / "dataset.json", json.dumps(dataset, indent=2) + "\n")


def _new_dataset(out_dir: str | os.PathLike, cases: int) -> Path:
    """The folder a phantom is written into: new or empty, so that no dataset's ``dataset.json`` and cases are
    overwritten; at least one case. One line otherwise, before anything is written."""
    out_dir = Path(out_dir)
    if cases < 1:
        raise UnetzooError(f"a phantom needs at least one case, got --cases {cases}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise file_error(out_dir, "is not an empty folder: write the phantom into a new or empty one")
    return out_dir


def _organ_labels(
    rng: np.random.Generator, grid_mm: np.ndarray, extent_mm: np.ndarray, n_structures: int
) -> np.ndarray:
    """Label map of ``n_structures`` random rotated ellipsoids, later ones on top, each still big enough."""
    for _ in range(100):
        label = np.zeros(grid_mm.shape[1:], np.uint8)
        for k in range(1, n_structures + 1):
            radii = rng.uniform(6.0, 12.0, size=3)
            centre = rng.uniform(0.25 * extent_mm, 0.75 * extent_mm)
            label[_ellipsoid(grid_mm, centre, radii, _rotation(rng, 90.0))] = k
        if np.bincount(label.ravel(), minlength=n_structures + 1)[1:].min() >= MIN_STRUCTURE_VOXELS:
            return label
    raise UnetzooError(f"cannot fit {n_structures} structures of {MIN_STRUCTURE_VOXELS}+ voxels; use a larger shape")


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth multiplicative field within about +-15%: exp of a random quadratic polynomial."""
    u = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    linear, quadratic = rng.normal(0, 0.06, size=(2, len(shape)))
    return np.exp(np.tensordot(linear, u, axes=1) + np.tensordot(quadratic, u**2, axes=1))


def write_organs_phantom(
    out_dir: str | os.PathLike,
    cases: int,
    seed: int,
    shape: tuple[int, int, int] = (48, 56, 40),
    spacing: tuple[float, float, float] = (1.5, 1.0, 1.0),
    n_structures: int = 3,
) -> Path:
    """Write ``cases`` 3D cases ``organs_000`` ... with ``n_structures`` labelled organs; returns ``out_dir``.

    Each organ is a randomly placed, sized and rotated ellipsoid with its own mean intensity (the same
    for every case, so it can be learned), blurred a little, times a smooth bias field, plus Gaussian
    noise. Image and label share an affine made of a random rotation, the anisotropic ``spacing`` and
    an origin offset, as real scanner data would.
    """
    out_dir = _new_dataset(out_dir, cases)
    spacing_arr = np.asarray(spacing, dtype=float)
    extent_mm = np.asarray(shape) * spacing_arr
    grid_mm = np.indices(shape, dtype=np.float64) * spacing_arr[:, None, None, None]
    for index in range(cases):
        rng = _case_rng(seed, index)
        label = _organ_labels(rng, grid_mm, extent_mm, n_structures)
        means = 0.2 + 0.5 * np.arange(n_structures + 1) + rng.uniform(-0.05, 0.05, n_structures + 1)
        image = gaussian_filter(means[label], sigma=0.6) * _bias_field(rng, shape)
        image = 100.0 * (image + rng.normal(0.0, 0.05, size=shape))
        affine = np.eye(4)
        affine[:3, :3] = _rotation(rng, 30.0) @ np.diag(spacing_arr)
        affine[:3, 3] = rng.uniform(-100.0, 100.0, size=3)
        case = f"organs_{index:03d}"
        write_array(image.astype(np.float32), out_dir / "imagesTr" / f"{case}_0000.nii.gz", affine)
        write_array(label, out_dir / "labelsTr" / f"{case}.nii.gz", affine)
    labels = {"background": 0, **{f"organ{k}": k for k in range(1, n_structures + 1)}}
    _write_dataset_json(
        out_dir,
        "OrgansPhantom",
        f"Synthetic MRI-like volumes with {n_structures} overlapping ellipsoid organs (seed {seed})",
        {"0": "MRI"},
        labels,
        cases,
        ".nii.gz",
    )
    return out_dir


def write_nuclei_phantom(out_dir: str | os.PathLike, cases: int, seed: int, shape: tuple[int, int] = (96, 96)) -> Path:
    """Write ``cases`` 2D RGB cases ``nuclei_000`` ... of bright elliptic nuclei (label 1); returns ``out_dir``."""
    out_dir = _new_dataset(out_dir, cases)
    rows, cols = np.indices(shape, dtype=np.float64)
    for index in range(cases):
        rng = _case_rng(seed, index)
        label = np.zeros(shape, np.uint8)
        brightness = np.zeros(shape)
        for _ in range(rng.integers(4, 10)):
            radii = rng.uniform(4.0, 9.0, size=2)
            centre = rng.uniform(10.0, np.asarray(shape) - 10.0)
            angle = rng.uniform(0, np.pi)
            dr, dc = rows - centre[0], cols - centre[1]
            u = (np.cos(angle) * dr + np.sin(angle) * dc) / radii[0]
            v = (-np.sin(angle) * dr + np.cos(angle) * dc) / radii[1]
            inside = u**2 + v**2 <= 1.0
            label[inside] = 1
            brightness = np.maximum(brightness, inside * (1.0 - 0.3 * (u**2 + v**2)))  # brighter centre
        colour = np.array([190.0, 110.0, 210.0]) + rng.uniform(-20, 20, size=3)
        background = np.array([25.0, 20.0, 35.0])
        image = background + gaussian_filter(brightness, sigma=0.8)[..., None] * (colour - background)
        image = np.clip(image + rng.normal(0.0, 10.0, size=image.shape), 0, 255)
        case = f"nuclei_{index:03d}"
        write_array(np.rint(image).astype(np.uint8), out_dir / "imagesTr" / f"{case}_0000.png")
        write_array(label, out_dir / "labelsTr" / f"{case}.png")
    _write_dataset_json(
        out_dir,
        "NucleiPhantom",
        f"Synthetic RGB images of bright nuclei on a dark noisy background (seed {seed})",
        {"0": "R", "1": "G", "2": "B"},
        {"background": 0, "nucleus": 1},
        cases,
        ".png",
    )
    return out_dir


ELLIPSE_SIZES = (0.05, 0.3)  # the ellipse's mean semi-axis, as a share of the image's shorter edge (log-uniform)
DISTRACTOR_MIN = 0.15  # a distractor region is at least a disc of this radius (share of the shorter edge)


def _speckle(rng: np.random.Generator, echo: np.ndarray, grain: float) -> np.ndarray:
    """Ultrasound-like speckle over the echogenicity map ``echo``: a fully developed speckle pattern (the magnitude
    of smoothed complex Gaussian noise: Rayleigh statistics, ``grain`` pixels across) multiplied into it."""
    noise = gaussian_filter(rng.normal(size=echo.shape), grain) + 1j * gaussian_filter(
        rng.normal(size=echo.shape), grain
    )
    magnitude = np.abs(noise)
    return echo * magnitude / magnitude.mean()


def write_ellipses_phantom(
    out_dir: str | os.PathLike, cases: int, seed: int, shape: tuple[int, int] = (540, 800)
) -> Path:
    """Write ``cases`` large 2D grey images ``ellipses_000`` ... of one filled ellipse (label 1) in speckle among
    distractor regions of the same texture; returns ``out_dir`` (nnU-Net layout, PNG).

    The failure this reproduces: on 800x540 ultrasound images a full-resolution patch (320x384 on the CPU budget)
    never shows the whole image, so a network learns texture, not the object. Here the ellipse's interior and the
    distractors (large irregular blobs, several times bigger than a small ellipse) share one echogenicity and one
    speckle, so a window inside either looks the same; what tells them apart is shape and a thin bright rim at the
    ellipse's edge, visible only with the object's whole outline in view. The ellipse's size varies
    ``ELLIPSE_SIZES`` (six-fold), its aspect 0.55-1 and its angle freely.
    """
    out_dir = _new_dataset(out_dir, cases)
    rows, cols = np.indices(shape, dtype=np.float64)
    short = min(shape)
    for index in range(cases):
        rng = _case_rng(seed, index)
        size = short * np.exp(rng.uniform(*np.log(ELLIPSE_SIZES)))
        aspect = rng.uniform(0.55, 1.0)
        radii = np.array([size / np.sqrt(aspect), size * np.sqrt(aspect)])
        centre = rng.uniform(radii.max() + 4, np.asarray(shape) - radii.max() - 4)
        angle = rng.uniform(0, np.pi)
        dr, dc = rows - centre[0], cols - centre[1]
        u = (np.cos(angle) * dr + np.sin(angle) * dc) / radii[0]
        v = (-np.sin(angle) * dr + np.cos(angle) * dc) / radii[1]
        radius = np.sqrt(u**2 + v**2)
        inside = radius <= 1.0
        field = gaussian_filter(rng.normal(size=shape), short / 12)
        distractors = (field > np.quantile(field, 0.8)) & (radius > 1.25)  # a fifth of the image, off the ellipse
        pieces, count = label_components(distractors)
        areas = np.bincount(pieces.ravel(), minlength=count + 1)
        distractors &= areas[pieces] >= np.pi * (DISTRACTOR_MIN * short) ** 2  # large, irregular: none ellipse-sized
        tissue = gaussian_filter(rng.normal(size=shape), short / 6)
        echo = 0.3 + 0.05 * tissue / tissue.std()  # background tissue, slowly varying
        echo = np.where(distractors | inside, 0.65, echo)
        rim = np.abs(radius - 1.0) * size < 2.0  # a 4-pixel bright edge, as a fetal skull or a vessel wall
        echo = np.where(rim, 0.9, echo)
        image = _speckle(rng, gaussian_filter(echo, 1.5), grain=1.2)
        image = np.clip(255 * image / 2.0, 0, 255)
        case = f"ellipses_{index:03d}"
        write_array(np.rint(image).astype(np.uint8), out_dir / "imagesTr" / f"{case}_0000.png")
        write_array(inside.astype(np.uint8), out_dir / "labelsTr" / f"{case}.png")
    _write_dataset_json(
        out_dir,
        "EllipsesPhantom",
        f"Synthetic ultrasound-like images: one filled ellipse in speckle among same-texture distractors (seed {seed})",
        {"0": "US"},
        {"background": 0, "object": 1},
        cases,
        ".png",
    )
    return out_dir


def _ball(mask: np.ndarray, centre: np.ndarray, radius: float) -> None:
    """Set the voxels of ``mask`` within ``radius`` of ``centre`` (voxel coordinates)."""
    lo = np.maximum(np.floor(centre - radius).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radius).astype(int) + 1, mask.shape)
    if np.any(hi <= lo):
        return
    local = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    inside = sum((g - c) ** 2 for g, c in zip(local, centre)) <= radius**2
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] |= inside


def _turn(rng: np.random.Generator, direction: np.ndarray, degrees: float) -> np.ndarray:
    """``direction`` turned by ``degrees`` about a random axis perpendicular to it."""
    axis = np.cross(direction, rng.normal(size=3))
    axis /= np.linalg.norm(axis)
    rad = np.deg2rad(degrees)
    return np.cos(rad) * direction + np.sin(rad) * np.cross(axis, direction)


def _vessel_tree(rng: np.random.Generator, shape: tuple[int, int, int], target: int) -> np.ndarray:
    """A label mask of branching, tortuous tubes grown until ``target`` voxels are foreground.

    Trunks enter through a face of the longest axis (radius 1.8-2.4 voxels); every branch walks in unit steps
    whose heading drifts (tortuosity) and, with probability 1/25 per step, spawns a child turned by 30-70
    degrees with 0.6-0.85 of its radius (children thinner than 0.8 voxels are dropped); a tube ends where it
    leaves the volume or after its length. A new trunk starts while the tree is below ``target``."""
    size = np.asarray(shape, float)
    long_axis = int(np.argmax(size))
    mask = np.zeros(shape, bool)
    branches: list[tuple[np.ndarray, np.ndarray, float]] = []
    while mask.sum() < target:
        if not branches:
            start = rng.uniform(0.25 * size, 0.75 * size)
            start[long_axis] = 0.0 if rng.random() < 0.5 else size[long_axis] - 1
            heading = np.zeros(3)
            heading[long_axis] = 1.0 if start[long_axis] == 0 else -1.0
            branches.append((start, _turn(rng, heading, rng.uniform(0, 25)), rng.uniform(1.8, 2.4)))
        position, heading, radius = branches.pop()
        drift = np.zeros(3)
        for _ in range(int(rng.uniform(0.4, 0.9) * size[long_axis])):
            _ball(mask, position, radius)
            drift = 0.8 * drift + rng.normal(0.0, 0.12, size=3)
            heading = heading + drift
            heading /= np.linalg.norm(heading)
            position = position + heading
            if np.any(position < 0) or np.any(position > size - 1) or mask.sum() >= target:
                break
            if rng.random() < 1 / 25 and radius * 0.6 >= 0.8:
                branches.append(
                    (position.copy(), _turn(rng, heading, rng.uniform(30, 70)), radius * rng.uniform(0.6, 0.85))
                )
    return mask


def write_vessels_phantom(
    out_dir: str | os.PathLike,
    cases: int,
    seed: int,
    shape: tuple[int, int, int] = (96, 288, 224),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Path:
    """Write ``cases`` MRA-like cases ``vessels_000`` ... (label 1: vessel); returns ``out_dir``.

    The problem of Angermann & Haltmeier 2019 in miniature, at its volume size by default: thin branching tortuous tubes
    (:func:`_vessel_tree`) making 0.2-0.3 % of the voxels (the paper: 99.76 % background), bright on a dim,
    unevenly lit tissue background, together with unlabelled bright distractors (3-6 ellipsoids of 2-8 voxel
    radii, as bright as the vessels or brighter) and Gaussian noise, so that no threshold separates the vessels.
    """
    out_dir = _new_dataset(out_dir, cases)
    shape = tuple(int(s) for s in shape)
    n_voxels = int(np.prod(shape))
    grid = np.indices(shape, dtype=np.float64)
    for index in range(cases):
        rng = _case_rng(seed, index)
        vessels = _vessel_tree(rng, shape, int(rng.uniform(0.002, 0.003) * n_voxels))
        brightness = 0.25 + 0.08 * gaussian_filter(rng.normal(size=shape), sigma=3.0) * 3.0
        for _ in range(rng.integers(3, 7)):
            radii = rng.uniform(2.0, 8.0, size=3)
            centre = rng.uniform(0.1, 0.9, size=3) * np.asarray(shape)
            blob = _ellipsoid(grid, centre, radii, _rotation(rng, 90.0))
            brightness[blob & ~vessels] = rng.uniform(0.9, 1.3)
        brightness[vessels] = rng.uniform(0.9, 1.1)
        image = gaussian_filter(brightness, sigma=0.6) * _bias_field(rng, shape)
        image = 100.0 * (image + rng.normal(0.0, 0.08, size=shape))
        affine = np.diag([*spacing, 1.0])
        case = f"vessels_{index:03d}"
        write_array(image.astype(np.float32), out_dir / "imagesTr" / f"{case}_0000.nii.gz", affine)
        write_array(vessels.astype(np.uint8), out_dir / "labelsTr" / f"{case}.nii.gz", affine)
    _write_dataset_json(
        out_dir,
        "VesselsPhantom",
        f"Synthetic MRA-like volumes: thin branching vessels (0.2-0.3 % of the voxels), bright distractors, noise (seed {seed})",
        {"0": "MRI"},
        {"background": 0, "vessel": 1},
        cases,
        ".nii.gz",
    )
    return out_dir


CARDIAC_LABELS = {"0": "background", "1": "RV cavity", "2": "LV myocardium", "3": "LV cavity"}  # ACDC's ids


def _heart_frame(coords: np.ndarray, anatomy: dict, phase: float) -> np.ndarray:
    """Label map of one frame at cardiac ``phase`` in [0, 1) (0 = end-diastole, 0.5 = end-systole).

    The cavities shrink by the factor ``1 - ejection * (1 - cos 2 pi phase) / 2`` of their radii; the
    myocardium keeps its volume (its outer radii follow ``cbrt(k_cavity^3 + wall^3 - 1)``), so the wall
    thickens in systole as a real one does. The myocardium always contains the one-voxel dilation of the LV
    cavity, so the structures stay nested at any resolution; the RV is the part of its ellipsoid outside the LV.
    """
    from scipy.ndimage import binary_dilation

    squeeze = (1 - np.cos(2 * np.pi * phase)) / 2
    k_lv = 1 - anatomy["lv_ejection"] * squeeze
    k_epi = np.cbrt(k_lv**3 + anatomy["wall"] ** 3 - 1)
    k_rv = 1 - anatomy["rv_ejection"] * squeeze
    cavity = _ellipsoid(coords, anatomy["lv_centre"], anatomy["lv_radii"] * k_lv)
    epicardium = _ellipsoid(coords, anatomy["lv_centre"], anatomy["lv_radii"] * k_epi) | binary_dilation(cavity)
    rv = _ellipsoid(coords, anatomy["rv_centre"], anatomy["rv_radii"] * k_rv) & ~epicardium
    label = np.zeros(coords.shape[1:], np.uint8)
    label[rv] = 1
    label[epicardium] = 2
    label[cavity] = 3
    return label


def write_cardiac_phantom(
    out_dir: str | os.PathLike,
    cases: int,
    frames: int,
    seed: int,
    shape: tuple[int, int, int] = (48, 48, 12),
    spacing: tuple[float, float, float] = (1.8, 1.8, 7.0),
) -> Path:
    """Write ``cases`` beating hearts ``heart_000`` ... as 4D NIfTI (X, Y, Z, T) images and labels in the MSD
    layout (``dataset.json`` with a ``training`` list); returns ``out_dir``.

    A short-axis-like stack (Z the long axis, thick slices) of three structures with ACDC's label ids: LV cavity
    (3) inside the LV myocardium (2), the RV cavity (1) beside them. Over ``frames`` frames of one cardiac cycle
    (frame 0 end-diastole, frame T/2 end-systole) the cavities contract and relax (see :func:`_heart_frame`).
    The anatomy is placed in coordinates relative to the field of view, so any ``shape`` holds the whole heart.
    Per case: random position, size, ejection fractions; bright blood, dark myocardium, grey body and dark air,
    with a random gain, contrast and bias field, blur and Gaussian noise.
    """
    if frames < 1:
        raise UnetzooError(f"the cardiac phantom needs at least one frame, got --frames {frames}")
    if min(shape) < 4:
        raise UnetzooError(
            f"the cardiac phantom needs at least 4 voxels per axis, got --shape {' '.join(map(str, shape))}"
        )
    out_dir = _new_dataset(out_dir, cases)
    coords = np.stack(
        np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    )  # relative to the field of view
    body = _ellipsoid(coords, np.zeros(3), np.array([0.95, 0.85, 2.0]))
    entries = []
    for index in range(cases):
        rng = _case_rng(seed, index)
        lv_centre = np.array([0.15, 0.0, 0.0]) + rng.uniform(-0.08, 0.08, 3)
        lv_radii = np.array([0.3, 0.3, 0.6]) * rng.uniform(0.85, 1.15, 3)
        anatomy = {
            "lv_centre": lv_centre,
            "lv_radii": lv_radii,
            "wall": rng.uniform(1.3, 1.45),
            "lv_ejection": rng.uniform(0.25, 0.35),
            "rv_centre": lv_centre + np.array([-0.42, 0.05, -0.05]) + rng.uniform(-0.04, 0.04, 3),
            "rv_radii": np.array([0.32, 0.5, 0.55]) * rng.uniform(0.85, 1.15, 3),
            "rv_ejection": rng.uniform(0.2, 0.3),
        }
        #                 background(body), RV blood, myocardium, LV blood; air outside the body
        means = np.array([0.35, 0.9, 0.15, 1.0]) + rng.uniform(-0.04, 0.04, 4)
        gain, air = rng.uniform(0.7, 1.3), rng.uniform(0.0, 0.05)
        bias = _bias_field(rng, shape)
        labels, images = [], []
        for t in range(frames):
            label = _heart_frame(coords, anatomy, t / frames)
            intensity = np.where(body | (label > 0), means[label], air)
            image = gaussian_filter(intensity, sigma=(0.7, 0.7, 0.3)) * bias
            images.append(1000.0 * gain * (image + rng.normal(0.0, 0.04, size=shape)))
            labels.append(label)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = rng.uniform(-50.0, 50.0, size=3)
        case = f"heart_{index:03d}"
        write_array(np.stack(images, -1).astype(np.float32), out_dir / "imagesTr" / f"{case}.nii.gz", affine)
        write_array(np.stack(labels, -1), out_dir / "labelsTr" / f"{case}.nii.gz", affine)
        entries.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    dataset = {
        "name": "CardiacPhantom",
        "description": f"Synthetic 3D+t beating hearts, {frames} frames per case (seed {seed})",
        "tensorImageSize": "4D",
        "modality": {"0": "MRI"},
        "labels": CARDIAC_LABELS,
        "numTraining": cases,
        "training": entries,
    }
    write_text(out_dir / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    return out_dir


def synthetic_case(shape, channels: int, num_classes: int, generator, blobs: int = 3):
    """An image ``(C, *shape)`` and a label ``(1, *shape)`` of class ids: ``blobs`` random ellipsoids per
    foreground class (every label holds foreground, so point-sampling methods find boundaries), the image
    their class intensity plus Gaussian noise."""
    shape = [int(s) for s in shape]
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    label = torch.zeros(shape, dtype=torch.float32)
    for cls in range(1, num_classes):
        for _ in range(blobs):
            center = [torch.rand((), generator=generator) * s for s in shape]
            radius = [(0.1 + 0.2 * torch.rand((), generator=generator)) * max(s, 2) if s > 1 else 1.0 for s in shape]
            distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radius))
            label[distance <= 1] = cls
        # at least the voxel nearest the last centre, whatever the radii
        label[tuple(min(int(c), s - 1) for c, s in zip(center, shape))] = cls
    image = label[None].repeat(channels, *[1] * len(shape)) / max(num_classes - 1, 1)
    image = image + 0.3 * torch.randn(image.shape, generator=generator)
    return image, label[None]
