"""regularized-unet.md's in-plane strided sub-sampling (Table 3): the training transform and interleaved prediction."""

from __future__ import annotations

import pytest
import torch

from unetzoo.config import AugmentConfig, Config
from unetzoo.data.plan import Plan
from unetzoo.data.transforms import RandInPlaneStrided, augmentation
from unetzoo.errors import UnetzooError
from unetzoo.methods import build_method, inference_context


def test_transform_takes_every_sth_voxel_from_one_random_offset():
    image = torch.arange(6 * 9 * 10, dtype=torch.float32).reshape(1, 6, 9, 10)
    transform = RandInPlaneStrided(["image", "label"], stride=4)
    transform.set_random_state(seed=0)
    seen = set()
    for _ in range(30):
        out = transform({"image": image, "label": image.clone()})
        i, j = transform.offsets
        seen.add((i, j))
        assert torch.equal(out["image"], image[:, :, i::4, j::4]) and torch.equal(out["label"], out["image"])
    assert len(seen) > 4 and all(0 <= i < 4 and 0 <= j < 4 for i, j in seen)


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
