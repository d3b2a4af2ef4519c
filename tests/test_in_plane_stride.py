"""The in-plane strided sub-sampling of Ding et al. 2021 (FLARE 2021, Table 3): the training transform and
interleaved prediction."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unetzoo.config import AugmentConfig, Config
from unetzoo.data.plan import Plan
from unetzoo.data.transforms import RandInPlaneStrided, augmentation
from unetzoo.errors import UnetzooError
from unetzoo.methods import build_method, inference_context
from unetzoo.methods.base import in_plane_axes


def test_transform_takes_every_sth_voxel_from_one_random_offset():
    image = torch.arange(6 * 9 * 10, dtype=torch.float32).reshape(1, 6, 9, 10)
    transform = RandInPlaneStrided(["image", "label"], stride=4, axes=(0, 1))
    transform.set_random_state(seed=0)
    seen = set()
    for _ in range(30):
        out = transform({"image": image, "label": image.clone()})
        i, j = transform.offsets
        seen.add((i, j))
        assert torch.equal(out["image"], image[:, i::4, j::4, :]) and torch.equal(out["label"], out["image"])
    assert len(seen) > 4 and all(0 <= i < 4 and 0 <= j < 4 for i, j in seen)


def test_in_plane_axes_are_the_two_other_than_the_slice_axis():
    """The coarsest spacing marks the slice axis; with equal spacings, the axis with the fewest voxels; 2D: both."""
    plan = Plan.synthetic([64, 64, 20])
    assert in_plane_axes(plan) == (0, 1)  # isotropic: the 20-voxel axis holds the slices
    coronal = dataclasses.replace(plan, target_spacing=[0.8, 3.0, 0.8], slice_axis=None)
    assert in_plane_axes(coronal) == (0, 2)  # a coronal stack
    cube = dataclasses.replace(plan, target_spacing=[1.0, 1.0, 1.0], median_shape=[30.0, 30.0, 30.0], slice_axis=None)
    assert in_plane_axes(cube) == (0, 1)  # a cube: Z, the slice axis of an axial RAS scan
    assert in_plane_axes(Plan.synthetic([40, 30])) == (0, 1)


def test_axial_nifti_keeps_its_slices_in_training_and_prediction(tmp_path):
    """Ding et al. 2021, Table 3: "for a image I with size C x 512 x 512, the patch with size 128 x 128 x 128 is
    generated as I[k:k+128, i::4, j::4]" (C slices): on an axial NIfTI volume of 64 x 64 x 20 voxels (0.8 x 0.8 x 3
    mm, a scanner-like rotated affine) the stride takes every 4th voxel of the 64 x 64 slices and keeps all 20
    slices, at training and at prediction."""
    from unetzoo.data.datasets import load_dataset
    from unetzoo.data.phantoms import write_organs_phantom
    from unetzoo.data.plan import make_plan
    from unetzoo.data.transforms import preprocessing

    write_organs_phantom(tmp_path / "axial", cases=1, seed=0, shape=(64, 64, 20), spacing=(0.8, 0.8, 3.0))
    dataset = load_dataset(tmp_path / "axial")
    plan = make_plan(dataset, dataset.cases, patch_size=[16, 16, 20])
    case = preprocessing(plan)({"image": dataset.cases[0].images, "label": dataset.cases[0].label})
    case = {key: case[key].as_tensor() for key in ("image", "label")}
    assert tuple(case["image"].shape[1:]) == (64, 64, 20) and in_plane_axes(plan) == (0, 1)
    config = Config(model="unet")
    config.augment = AugmentConfig(in_plane_stride=4, rotation_p=0, scaling_p=0, flip_p=0, noise_p=0, contrast_p=0)
    method, _ = build_method(config, plan)
    transform = method.train_transform()
    transform.set_random_state(seed=0)
    out = transform({"image": case["image"], "label": case["label"]})
    sample = out[0] if isinstance(out, list) else out
    offsets = next(t for t in transform.transforms if isinstance(t, RandInPlaneStrided)).offsets
    assert tuple(sample["image"].shape) == (1, 16, 16, 20)
    assert torch.equal(torch.as_tensor(sample["image"]), case["image"][:, offsets[0] :: 4, offsets[1] :: 4, :])
    seen = []
    method.predict_window = lambda w: (
        seen.append(tuple(w.shape[2:])),
        torch.cat([torch.sigmoid(w), 1 - torch.sigmoid(w)], dim=1),
    )[1]
    with inference_context(method):
        probs = method.predict(case["image"][None])
    assert probs.shape == (1, 2, 64, 64, 20) and seen and all(shape == (16, 16, 20) for shape in seen)


def test_augmentation_chain_with_stride_gives_patches():
    chain = augmentation([4, 4, 4], AugmentConfig(in_plane_stride=2), [1.0, 2.0], 1)
    chain.set_random_state(seed=0)
    label = torch.zeros(1, 8, 12, 10)
    label[:, 2:6, 4:8, 3:7] = 1
    out = chain({"image": torch.randn(1, 8, 12, 10), "label": label})
    sample = out[0] if isinstance(out, list) else out
    assert sample["image"].shape == (1, 4, 4, 4) and sample["label"].shape == (1, 4, 4, 4)


def test_interleaved_prediction_covers_every_voxel():
    """A voxel-wise predictor gives the same map strided or not: every voxel is predicted once, at its place."""
    config = Config(model="unet")
    config.augment.in_plane_stride = 3
    method, _ = build_method(config, Plan.synthetic([8, 8, 8], channels=1, classes=2))
    method.predict_window = lambda w: torch.cat([torch.sigmoid(w), 1 - torch.sigmoid(w)], dim=1)
    image = torch.randn(1, 1, 10, 13, 11, generator=torch.Generator().manual_seed(0))
    with inference_context(method):
        probs = method.predict(image)
    expected = torch.cat([torch.sigmoid(image), 1 - torch.sigmoid(image)], dim=1)
    assert probs.shape == expected.shape and torch.allclose(probs, expected, atol=1e-6)


def test_stride_must_be_positive():
    config = Config(model="unet")
    config.augment.in_plane_stride = 0
    with pytest.raises(UnetzooError, match="in_plane_stride"):
        build_method(config, Plan.synthetic([8, 8, 8]))
