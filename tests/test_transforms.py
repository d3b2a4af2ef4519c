import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from unetzoo.config import AugmentConfig
from unetzoo.data.datasets import load_dataset
from unetzoo.data.plan import make_plan
from unetzoo.data.transforms import NormalizeByModalityd, augmentation, preprocessing


def _norm(channel_names, image, ct_stats=None, nonzero_mask=()):
    return NormalizeByModalityd(channel_names, ct_stats or {}, nonzero_mask)(
        {"image": MetaTensor(torch.as_tensor(image))}
    )["image"]


def test_ct_clip_then_dataset_zscore():
    image = np.array([[[-2000.0, 0.0, 100.0, 5000.0]]], np.float32)
    stats = {"0": {"p00_5": -100.0, "p99_5": 300.0, "mean": 50.0, "std": 100.0}}
    out = _norm(["CT"], image, stats)
    assert out.flatten().tolist() == pytest.approx([-1.5, -0.5, 0.5, 2.5])


def test_mri_zscore_ignores_zero_background_when_the_plan_says_so():
    image = np.zeros((1, 4, 4, 4), np.float32)
    image[0, :2, :2, :2] = np.arange(1, 9).reshape(2, 2, 2)
    out = _norm(["MRI"], image, nonzero_mask=[True])
    values = np.arange(1, 9, dtype=np.float32)
    expected = (values - values.mean()) / values.std(ddof=1)
    assert out[0, :2, :2, :2].flatten().tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert float(out[0, 3, 3, 3]) == 0.0  # background stays zero
    whole = _norm(["MRI"], image, nonzero_mask=[False])  # the dataset has no zero background: every voxel counts
    assert float(whole[0, 3, 3, 3]) == pytest.approx(-image.mean() / image.std(ddof=1), abs=1e-5)


def test_rgb_scaled_to_unit_range():
    out = _norm(["R", "G", "B"], np.full((3, 2, 2), 255, np.float32))
    assert float(out.max()) == 1.0 and float(out.min()) == 1.0


def test_preprocessing_reorients_and_resamples(organs):
    dataset = load_dataset(organs)
    plan = make_plan(dataset, dataset.cases)
    data = preprocessing(plan)(dataset.cases[0].as_dict())
    image, label = data["image"], data["label"]
    assert image.shape[1:] == label.shape[1:]
    spacing = np.linalg.norm(image.affine[:3, :3].numpy(), axis=0)
    assert spacing == pytest.approx(plan.target_spacing, rel=1e-3)
    assert set(torch.unique(label).tolist()) <= {0, 1, 2, 3}


@pytest.mark.parametrize("patch", [[16, 16, 16], [1, 16, 16]])
def test_augmentation_patch_shapes(organs, patch):
    dataset = load_dataset(organs)
    plan = make_plan(dataset, dataset.cases)
    data = preprocessing(plan)(dataset.cases[0].as_dict())
    aug = AugmentConfig(rotation_p=1.0, scaling_p=1.0, noise_p=1.0, contrast_p=1.0)
    samples = augmentation(patch, aug, [1, 2], samples=3)(data)
    assert len(samples) == 3
    for s in samples:
        assert list(s["image"].shape) == [1, *patch] and list(s["label"].shape) == [1, *patch]
        assert set(torch.unique(s["label"]).tolist()) <= {0, 1, 2, 3}


def test_a_slab_of_thick_slices_is_rotated_and_zoomed_in_plane_only():
    """nnU-Net's "dummy 2D" augmentation: a 3D patch whose shortest edge is under 1/3 of its longest (ACDC's
    160x128x5) turns and zooms in its plane only. A label constant along the slab (a disk through every slice)
    stays constant along it under certain rotation, zoom and flips; a cube patch is still turned about every axis."""
    yy, xx = np.mgrid[:48, :40]
    disk = ((yy - 20) ** 2 + (xx - 22) ** 2 < 100).astype(np.float32)
    volume = np.repeat(disk[None, :, :, None], 4, axis=3)  # 1 x 48 x 40 x 4
    data = {"image": MetaTensor(torch.as_tensor(volume)), "label": MetaTensor(torch.as_tensor(volume))}
    aug = AugmentConfig(rotation_p=1.0, scaling_p=1.0, flip_p=1.0, noise_p=0.0, contrast_p=0.0)
    for sample in augmentation([48, 40, 4], aug, [1, 2], samples=4)(data):
        label = sample["label"][0]
        assert all(torch.equal(label[..., z], label[..., 0]) for z in range(4))
        assert not torch.equal(label[..., 0], torch.as_tensor(disk))  # it did turn, zoom or flip in the plane
    rotation = [
        t for t in augmentation([16, 16, 16], aug, [1, 2], samples=1).transforms if type(t).__name__ == "RandRotated"
    ][0]
    assert rotation.rand_rotate.range_x == rotation.rand_rotate.range_z != (0.0, 0.0)
