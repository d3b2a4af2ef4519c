"""Projection U-Nets (Angermann & Haltmeier 2019, arXiv:1910.10398): projection geometry, backprojection,
adjointness, the two training paths, shapes, the loss mix schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.methods import build_method
from unetzoo.methods.projection import dice_loss
from unetzoo.models.projection_unet import (
    ProjectionUNet,
    RandomProjectionUNet,
    backproject,
    detector_size,
    mip,
    sum_project,
)

SHAPE = (7, 5, 11)  # axis 1 rotates the 7 x 11 plane (D, W) about voxel (3, 5); detector 2 ceil(hypot(3, 5)) + 1 = 13


def _expected_pixel(p: int, q: int, plane, n: int, theta: float) -> float:
    """Detector coordinate of voxel (p, q) from the rotation matrix: the plane's centre voxel maps to the detector's."""
    rad = math.radians(theta)
    rotation = torch.tensor([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]], dtype=torch.float64)
    centred = torch.tensor([q - (plane[1] - 1) // 2, p - (plane[0] - 1) // 2], dtype=torch.float64)
    return float((rotation @ centred)[0]) + (n - 1) / 2


@pytest.mark.parametrize("theta", [0.0, 30.0, 90.0, 135.0, 171.0])
def test_bright_voxel_projects_where_the_rotation_puts_it(theta):
    x = torch.zeros(1, 1, *SHAPE)
    x[0, 0, 2, 3, 8] = 1.0  # depth-plane (p, q) = (2, 8), row 3
    n = detector_size(SHAPE, 1)
    assert n == 13
    image = mip(x, theta, axis=1)
    assert image.shape == (1, 1, 5, n)
    assert image[0, 0, [0, 1, 2, 4]].abs().max() == 0  # only the voxel's row lights up
    u = _expected_pixel(2, 8, (7, 11), n, theta)
    assert int(image[0, 0, 3].argmax()) == round(u)
    if theta in (0.0, 90.0):  # on the lattice: the full value at exactly one pixel
        assert image[0, 0, 3, round(u)] == pytest.approx(1.0) and image.sum() == pytest.approx(1.0)
    assert image[0, 0, 3, round(u)] >= 0.25  # bilinear: the nearest pixel keeps at least a quarter


@pytest.mark.parametrize("shape", [(40, 3, 40), (7, 2, 11), (8, 2, 11), (7, 3, 10), (8, 2, 10), (9, 3, 6), (32, 2, 48)])
def test_one_voxel_keeps_its_value_at_0_and_90_degrees_for_every_parity(shape):
    """Sec. 3.1: "M_theta_i : R^{a x b x c} -> R^{b x c} are MIP images for different directions": at theta = 0 and
    90 degrees the projection is along an axis of the volume, so the maximum intensity projection of a one-voxel
    structure is that voxel's value, whatever the parity of the volume's sizes (the first shape is the hippocampus
    plan's 40 x 56 x 40 plane, where the old lattice gave 0.25 of it)."""
    size_p, size_q = shape[0], shape[2]
    for p, q in [(0, 0), (size_p - 1, size_q - 1), (size_p // 2, size_q // 3), (1, size_q - 2)]:
        x = torch.zeros(1, 1, *shape)
        x[0, 0, p, 1, q] = 2.0
        for theta in (0.0, 90.0):
            image = mip(x, theta, axis=1)
            assert image.shape == (1, 1, shape[1], detector_size(shape, 1))
            assert float(image.max()) == pytest.approx(2.0, abs=1e-5) and float(image.sum()) == pytest.approx(
                2.0, abs=1e-4
            )
            pixel = int(image[0, 0, 1].argmax())  # the voxel's detector pixel: u = q' at 0 degrees, -p' at 90
            centre = (detector_size(shape, 1) - 1) // 2
            assert pixel == centre + (q - (size_q - 1) // 2 if theta == 0 else (size_p - 1) // 2 - p)
            back = backproject(image, theta, shape, 1)  # and the backprojection's line passes through that voxel
            assert float(back[0, 0, p, 1, q]) == pytest.approx(2.0, abs=1e-5)


def test_mip_pads_with_the_volume_minimum():
    x = torch.full((1, 1, *SHAPE), -3.0)
    x[0, 0, 1, 2, 5] = 2.0
    image = mip(x, 45.0, axis=1)
    assert image.min() == pytest.approx(-3.0) and image.max() > -3.0  # outside the volume is never brighter


def test_backprojection_of_one_pixel_is_the_line_through_the_volume():
    n = detector_size(SHAPE, 1)
    y = torch.zeros(1, 1, 5, n)
    y[0, 0, 3, 7] = 1.0
    # theta 0: detector pixel 7 is column q = 7 - 6 + 5 = 6 of the (D, W) plane, at every depth of row 3
    line = torch.zeros(1, 1, *SHAPE)
    line[0, 0, :, 3, 6] = 1.0
    assert torch.equal(backproject(y, 0.0, SHAPE, 1), line)
    # theta 90: u = -(p - 3) + 6, so pixel 7 is depth p = 2, along every column
    line = torch.zeros(1, 1, *SHAPE)
    line[0, 0, 2, 3, :] = 1.0
    assert torch.allclose(backproject(y, 90.0, SHAPE, 1), line, atol=1e-6)
    # any angle: the literal smear along the depth, rotated back by -theta with grid_sample
    for theta in (20.0, 63.0, 145.0):
        smeared = y[:, :, 3:4].expand(1, 1, n, n).double()  # (t, u) plane of row 3: constant along the depth t
        rad = math.radians(theta)
        p = torch.arange(7.0, dtype=torch.float64)[:, None] - 3
        q = torch.arange(11.0, dtype=torch.float64)[None, :] - 5
        u = q * math.cos(rad) - p * math.sin(rad) + (n - 1) / 2
        t = q * math.sin(rad) + p * math.cos(rad) + (n - 1) / 2
        grid = torch.stack([(2 * u + 1) / n - 1, (2 * t + 1) / n - 1], dim=-1)[None]
        literal = F.grid_sample(smeared, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
        volume = backproject(y.double(), theta, SHAPE, 1)
        assert torch.allclose(volume[0, 0, :, 3], literal, atol=1e-6)
        assert volume[0, 0, :, [0, 1, 2, 4]].abs().max() == 0
        assert volume.sum() > 0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_sum_projection_and_backprojection_are_adjoint(axis):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, *SHAPE, generator=g, dtype=torch.float64)
    for theta in (0.0, 17.0, 90.0, 123.0):
        px = sum_project(x, theta, axis)
        y = torch.rand(px.shape, generator=g, dtype=torch.float64)
        left, right = (px * y).sum(), (x * backproject(y, theta, SHAPE, axis)).sum()
        assert abs(float(left - right)) <= 1e-4 * abs(float(left))
        assert px.sum() == pytest.approx(float(x.sum()))  # every voxel lands on the detector in full


def _small(cls, **kwargs):
    torch.manual_seed(0)
    return cls(3, in_channels=1, out_channels=3, n_stages=2, base_features=4, max_features=8, **kwargs)


def test_path_two_trains_only_its_filtration_and_tuning():
    net = _small(RandomProjectionUNet, directions=4, all_directions=6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    x = torch.rand(1, 1, 9, 8, 10)
    label = (x > 0.7).long()
    dice_loss(net.path2(x), label).backward()
    assert all(p.grad is None for p in net.net2d.parameters()) and all(
        p.grad is None for p in net.reconstruction.parameters()
    )
    optimizer.step()
    after = net.state_dict()
    assert all(
        torch.equal(before[k], after[k]) for k in before if k.startswith("net2d.") or k.startswith("reconstruction.")
    )
    assert not torch.equal(before["full_reconstruction.filters"], after["full_reconstruction.filters"])
    net.zero_grad()
    dice_loss(net.path1(x), label).backward()  # path 1 trains the 2D U-Net
    assert all(p.grad is not None for p in net.net2d.parameters())


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_odd_sizes_keep_their_shape(axis):
    x = torch.rand(1, 1, 13, 17, 11)
    for net in (
        _small(ProjectionUNet, directions=3, axis=axis),
        _small(RandomProjectionUNet, directions=3, all_directions=5, axis=axis),
    ):
        assert net.eval()(x).shape == (1, 3, 13, 17, 11)


def test_random_angles_one_whole_degree_per_bin():
    net = _small(RandomProjectionUNet, directions=12)
    angles = net.random_angles(torch.Generator().manual_seed(3))
    assert len(angles) == 12
    for k, theta in enumerate(angles):
        assert theta == int(theta) and 15 * k <= theta < 15 * (k + 1)
    assert RandomProjectionUNet.fixed_angles(60)[:3] == [0.0, 3.0, 6.0]


def test_loss_mix_schedule_and_whole_volume_prediction():
    config = Config(
        model="random-2.5d-unet", model_args={"directions": 2, "all_directions": 3, "n_stages": 2, "base_features": 4}
    )
    method, resolved = build_method(config, Plan.synthetic([12, 10, 9]), train_cases=2)
    assert resolved.method_args == {} and method.whole_volumes
    weights = []
    for steps in range(3):  # 2 volumes a step, 2 training cases: a pass per step, n = 1, 2, 3
        method.steps = steps
        weights.append(method.path1_weight())
    assert weights == pytest.approx([0.99, 0.99 * 0.99, 0.99 * 0.99 * 0.99**2])  # c(n+1) = c(n) 0.99^n
    probs = method.predict(torch.rand(1, 1, 12, 10, 9))
    assert probs.shape == (1, 2, 12, 10, 9) and torch.allclose(probs.sum(1), torch.ones(1))


def test_dice_loss_matches_equation_one():
    logits = torch.tensor([0.0, 2.0, -1.0, 0.5]).reshape(1, 1, 1, 1, 4)
    logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
    label = torch.tensor([1, 1, 0, 0]).reshape(1, 1, 1, 1, 4)
    p = torch.sigmoid(torch.tensor([0.0, 2.0, -1.0, 0.5]))
    expected = 1 - 2 * (p[0] + p[1]) / (p.sum() + 2)
    assert float(dice_loss(logits, label)) == pytest.approx(float(expected), rel=1e-5)


def test_tuning_starts_at_three_standard_deviations():
    """The initial decision boundary (p = 0.5) sits 3 standard deviations above the volume's mean (docstring)."""
    net = _small(ProjectionUNet, directions=2)
    volume = torch.randn(1, 2, 9, 8, 7, generator=torch.Generator().manual_seed(0))
    z = net.reconstruction.tuning(volume)
    pooled = F.avg_pool3d(F.pad(volume, (0, 1, 0, 1, 0, 1), mode="replicate"), 2, stride=1)
    var, mean = torch.var_mean(pooled, dim=(2, 3, 4), keepdim=True, correction=0)
    assert torch.allclose(z, 3 * ((pooled - mean) / torch.sqrt(var + 1e-5) - 3), atol=1e-5)


def test_paper_optimiser_settings(tmp_path):
    """Sec. 4: "Adam-optimizer is used with learning rate 0.001 in combination with learning-rate-scheduling, i.e. if
    validation loss does not decrease within 3 epochs the learning rate gets halved. If the network shows no
    improvement for 5 epochs, the training process gets stopped": the rate is halved at the 3rd flat epoch."""
    from lightning.pytorch.callbacks import EarlyStopping

    from unetzoo.training.module import SegmentationModule
    from unetzoo.training.trainer import build_trainer

    config = Config(model="projection-2.5d-unet", model_args={"directions": 2, "n_stages": 2, "base_features": 4})
    for assignment in ("train.optimizer=adam", "train.lr=1e-3", "train.scheduler=plateau", "train.early_stop=5"):
        config.set(assignment)
    method, resolved = build_method(config, Plan.synthetic([12, 10, 9]))
    setup = SegmentationModule(method, resolved, method.plan).configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["lr"] == 1e-3
    assert (
        isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
        and scheduler["monitor"] == "val_dice"
    )
    rates = []
    for val_dice in [0.5, 0.5, 0.5, 0.5, 0.6, 0.6, 0.6, 0.6]:  # a best epoch, 3 flat ones; a better one, 3 flat ones
        scheduler["scheduler"].step(val_dice)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 5e-4, 2.5e-4])
    stops = [c for c in build_trainer(resolved, tmp_path, method).callbacks if isinstance(c, EarlyStopping)]
    assert len(stops) == 1 and stops[0].patience == 5 and stops[0].monitor == "val_dice"


def test_training_takes_whole_volumes_of_any_size():
    """Angermann & Haltmeier 2019, abstract: "The proposed architecture can be applied end-to-end to very large data
    volumes without cropping or sliding-window techniques": a training volume larger than the plan's patch is not
    cropped, a smaller one not padded alone; a batch of both is padded to the larger (image: each volume's minimum;
    label: -1) with each volume's shape, and the Dice loss counts only the volumes' own voxels."""
    config = Config(model="projection-2.5d-unet", model_args={"directions": 2, "n_stages": 2, "base_features": 4})
    method, _ = build_method(config, Plan.synthetic([12, 10, 9]))
    transform = method.train_transform()
    transform.set_random_state(seed=0)
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape in [(20, 14, 9), (8, 10, 7)]:  # larger and smaller than the 12 x 10 x 9 patch
        image = torch.randn(1, *shape, generator=g) - 3.0
        label = (torch.rand(1, *shape, generator=g) > 0.8).float()
        out = transform({"image": image, "label": label})
        assert (
            not isinstance(out, list)
            and tuple(out["image"].shape) == (1, *shape)
            and tuple(out["label"].shape) == (1, *shape)
        )
        cases.append({"image": image, "label": label})
    batch = method.collate(cases)
    assert batch["image"].shape == (2, 1, 20, 14, 9) and batch["label"].shape == (2, 1, 20, 14, 9)
    assert batch["shape"].tolist() == [[20, 14, 9], [8, 10, 7]]
    small = batch["image"][1, 0]
    assert torch.equal(small[:8, :10, :7], cases[1]["image"][0])
    assert float(small[8:].max()) == float(cases[1]["image"].min()) and float(batch["label"][1, 0, 8:].max()) == -1.0
    logits = torch.randn(2, 2, 20, 14, 9, generator=g)
    real = [logits[0].flatten(1), logits[1, :, :8, :10, :7].flatten(1)]
    labels = [cases[0]["label"].flatten(), cases[1]["label"].flatten()]
    p = torch.softmax(torch.cat(real, dim=1), dim=0)[1]
    y = torch.cat(labels)
    expected = 1 - 2 * (p * y).sum() / (p.sum() + y.sum())
    assert float(dice_loss(logits, batch["label"])) == pytest.approx(float(expected), rel=1e-5)
    assert torch.isfinite(method.training_loss(batch))
