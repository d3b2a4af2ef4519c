"""implicit-unet: registry and model contract, the gather at hand-placed points, the point sampler, broad-then-fine
inference against dense inference, and the geometry of ``--upsample`` and ``--grid`` (for every model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import assert_eval_map, assert_gradients
from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.errors import UnetzooError
from unetzoo.methods import METHODS, Grid, build_method
from unetzoo.methods.grid import refined_affine
from unetzoo.methods.implicit import ImplicitMethod, boundary_mask, sample_points
from unetzoo.models import create_model, model_info
from unetzoo.models.implicit_unet import normalise_coordinates, positional_encoding

TINY = {"base_features": 4, "max_features": 8, "hidden": 16}


def _tiny(spatial_dims=3, in_channels=1, out_channels=3, **kwargs):
    torch.manual_seed(0)
    return create_model("implicit-unet", spatial_dims, in_channels, out_channels, **{**TINY, **kwargs})


# ---- registry and model ------------------------------------------------------------------------------
def test_registry_and_paper_encoder():
    entry = model_info("implicit-unet")
    assert entry.method == "implicit" and entry.spatial_dims == (2, 3)
    assert METHODS["implicit"] is ImplicitMethod
    defaults = entry.plan_defaults(Plan.synthetic([40, 56, 40]), Config(model="implicit-unet"))
    assert defaults == {"strides": [[2, 2, 2]] * 4}, "the pipeline gives strides, never nnU-Net's depth"
    net = create_model("implicit-unet", 3, 1, 2)
    assert net.convs_per_stage == [2, 2, 4, 4] and net.widths == [32, 64, 128, 256]
    assert net.in_features == 480 + 3 * 21
    assert [len(stage) for stage in net.encoder.stages] == [2, 2, 4, 4]
    assert len(net.decoder.layers) == 8 and net.decoder.layers[4].weight.shape == (512, 512 + net.in_features)
    assert create_model("implicit-unet", 3, 1, 2, n_stages=5, **TINY).convs_per_stage == [2] * 5  # the paper's option


def test_deepest_cell_is_16_voxels_per_axis_and_32_with_5_blocks():
    """Naval Marimont & Tarroni 2022 (arXiv:2206.15217): "each of the deepest feature vectors is used in the
    predictions of smaller areas (16x16x16 voxels) compared to the architecture with 5 blocks (32x32x32 voxels)":
    every block halves the resolution, the first included (the earlier encoder's first stage did not: its deepest
    map was 1/8)."""
    net = _tiny()
    assert net.cells == [[2, 2, 2], [4, 4, 4], [8, 8, 8], [16, 16, 16]]
    shapes = [tuple(f.shape[2:]) for f in net.encode(torch.zeros(1, 1, 32, 48, 17))]
    assert shapes == [(16, 24, 9), (8, 12, 5), (4, 6, 3), (2, 3, 2)]  # ceil(S / cell)
    five = _tiny(n_stages=5)
    assert five.cells[-1] == [32, 32, 32] and tuple(five.encode(torch.zeros(1, 1, 64, 64, 32))[-1].shape[2:]) == (
        2,
        2,
        1,
    )


@pytest.mark.parametrize("spatial_dims,shape", [(2, (45, 37)), (3, (19, 21, 17))])
@pytest.mark.parametrize("gather", ["floor", "trilinear"])
def test_model_contract(spatial_dims, shape, gather):
    net = _tiny(spatial_dims, in_channels=2, gather=gather)
    x = torch.randn(2, 2, *shape)
    assert_eval_map(net, x, 3)
    net.train()
    net(x).square().mean().backward()
    assert_gradients(net)


# ---- gather ------------------------------------------------------------------------------------------
def _coded_features(batch, net, shape):
    """Stage s, patch b, channel c, voxel v holds 1e6 s + 1e5 b + 1e3 c + linear index of v (all distinct); stage
    s has ceil(S / cell) voxels per axis, as the encoder gives."""
    features = []
    for s, width in enumerate(net.widths):
        size = [-(-n // c) for n, c in zip(shape, net.cells[s])]
        index = torch.arange(math.prod(size), dtype=torch.float64).reshape(size)
        f = torch.stack(
            [torch.stack([1e6 * s + 1e5 * b + 1e3 * c + index for c in range(width)]) for b in range(batch)]
        )
        features.append(f)
    return features


def test_floor_gather_hand_placed_points_every_stage():
    net = _tiny().double()
    shape = (20, 18, 13)
    features = _coded_features(2, net, shape)
    # hand-placed points (patch, z, y, x) and the voxel each stage must read: p // 2^(s+1) of the nearest voxel
    points = torch.tensor(
        [[8, 16, 5], [19, 17, 12], [0, 0, 0], [7.4, 3.6, 12.49], [3.0, 9.0, 1.0]], dtype=torch.float64
    )
    nearest = torch.tensor([[8, 16, 5], [19, 17, 12], [0, 0, 0], [7, 4, 12], [3, 9, 1]])
    batch_index = torch.tensor([0, 1, 1, 0, 1])
    gathered = net.gather_features(features, batch_index, points)
    for s, vectors in enumerate(gathered):
        assert vectors.shape == (5, net.widths[s])
        for m in range(5):
            v = (nearest[m] // 2 ** (s + 1)).tolist()
            assert torch.equal(vectors[m], features[s][batch_index[m], :, v[0], v[1], v[2]]), (s, m)
    # paper's Fig. 1 example in 2D: p = (8, 16) -> (4, 8) in the 2nd map, (2, 4) in the 3rd, ... (the paper counts the
    # full-resolution image as the 1st map: the encoder's stage 0 is its 2nd)
    net2 = _tiny(2).double()
    f2 = _coded_features(1, net2, (32, 32))
    got = net2.gather_features(f2, torch.tensor([0]), torch.tensor([[8.0, 16.0]], dtype=torch.float64))
    for s, expected in enumerate([(4, 8), (2, 4), (1, 2), (0, 1)]):
        assert torch.equal(got[s][0], f2[s][0, :, expected[0], expected[1]])


def test_decoder_input_is_stages_then_encoded_coordinates():
    net = _tiny().double()
    shape = (16, 12, 8)
    features = _coded_features(1, net, shape)
    points = torch.tensor([[5.0, 7.0, 2.0]], dtype=torch.float64)
    x = net.point_inputs(features, torch.tensor([0]), points, shape)
    expected = [features[s][0, :, 5 // 2 ** (s + 1), 7 // 2 ** (s + 1), 2 // 2 ** (s + 1)] for s in range(4)]
    u = torch.tensor([(2 * 5 + 1) / 16 - 1, (2 * 7 + 1) / 12 - 1, (2 * 2 + 1) / 8 - 1], dtype=torch.float64)
    sines = torch.stack([torch.sin(2**k * math.pi * u) for k in range(10)], dim=1).flatten()  # axis-major
    cosines = torch.stack([torch.cos(2**k * math.pi * u) for k in range(10)], dim=1).flatten()
    assert torch.allclose(x[0], torch.cat(expected + [u, sines, cosines]))
    assert torch.allclose(normalise_coordinates(torch.tensor([[-0.5, 15.5]]), (16, 16)), torch.tensor([[-1.0, 1.0]]))
    assert positional_encoding(torch.zeros(4, 3), 10).shape == (4, 63)


def test_trilinear_gather_interpolates_between_stage_voxels():
    net = _tiny(gather="trilinear").double()
    shape = (64, 64, 64)  # the deepest map is 4^3
    features = _coded_features(1, net, shape)
    for s in range(4):
        j = torch.tensor([1, 2, 1])
        at_voxel = net.gather_features(features, torch.tensor([0]), (j * 2 ** (s + 1)).double()[None], [s])[0][0]
        assert torch.allclose(at_voxel, features[s][0, :, j[0], j[1], j[2]])
        between = net.gather_features(
            features, torch.tensor([0]), ((j + torch.tensor([0.5, 0, 0])) * 2 ** (s + 1)).double()[None], [s]
        )[0][0]
        assert torch.allclose(
            between, (features[s][0, :, j[0], j[1], j[2]] + features[s][0, :, j[0] + 1, j[1], j[2]]) / 2
        )


def test_plan_strides_keep_16_voxel_cells_and_stop_an_axis_before_one_voxel():
    """The paper's 16^3 cells wherever the patch has >= 17 voxels per axis (the paper's 160x160x96, the hippocampus
    40x56x40); a shorter axis stops pooling while its map still has 2 voxels (16 -> 8, 4, 2, 2; 5 -> 3, 2, 2, 2)."""
    from unetzoo.models.implicit_unet import patch_strides

    assert patch_strides([160, 160, 96], 4) == [[2, 2, 2]] * 4
    assert patch_strides([16, 5, 40], 4) == [[2, 2, 2], [2, 2, 2], [2, 1, 2], [1, 1, 2]]
    assert patch_strides([64, 64, 64], 5) == [[2, 2, 2]] * 5  # the 5-block option: 32^3 cells
    config = Config(model="implicit-unet", model_args={"n_stages": 5})
    method, resolved = build_method(config, Plan.synthetic([16, 16, 16]))
    assert resolved.model_args["strides"] == [[2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]]
    assert method.model.cells[-1] == [8, 8, 8] and len(method.model.encoder.stages) == 5
    config = Config(model="implicit-unet", model_args={"strides": [2, 2, [1, 2, 2], 2]})
    assert build_method(config, Plan.synthetic([16, 16, 16]))[1].model_args["strides"] == [
        2,
        2,
        [1, 2, 2],
        2,
    ]  # the user's win


@pytest.mark.parametrize("gather", ["floor", "trilinear"])
def test_gather_follows_per_axis_strides(gather):
    """Anisotropic strides (a coarse first axis pooled later): stage s's cell is the product of the
    strides of stages 0..s per axis, and the gather divides by it per axis. Strides (1,2,2), (2,2,2), (2,2,2),
    (1,2,2) give cells (1,2,2), (2,4,4), (4,8,8), (4,16,16); hand-computed below."""
    net = _tiny(strides=[[1, 2, 2], 2, 2, [1, 2, 2]], gather=gather).double()
    assert net.cells == [[1, 2, 2], [2, 4, 4], [4, 8, 8], [4, 16, 16]]
    shape = (9, 40, 36)
    assert [tuple(f.shape[2:]) for f in net.encode(torch.zeros(1, 1, *shape, dtype=torch.float64))] == [
        (9, 20, 18),
        (5, 10, 9),
        (3, 5, 5),
        (3, 3, 3),
    ]
    features = _coded_features(1, net, shape)
    if (
        gather == "floor"
    ):  # point (6.4, 37.2, 17.6) -> nearest voxel (6, 37, 18) -> (6, 18, 9), (3, 9, 4), (1, 4, 2), (1, 2, 1)
        got = net.gather_features(features, torch.tensor([0]), torch.tensor([[6.4, 37.2, 17.6]], dtype=torch.float64))
        for s, v in enumerate([(6, 18, 9), (3, 9, 4), (1, 4, 2), (1, 2, 1)]):
            assert torch.equal(got[s][0], features[s][0, :, v[0], v[1], v[2]]), s
    else:  # stage-3 vector (1, 1, 1) sits at voxel (4, 16, 16); half a cell further along axis 1 is voxel (4, 24, 16)
        at = net.gather_features(
            features, torch.tensor([0]), torch.tensor([[4.0, 16.0, 16.0]], dtype=torch.float64), [3]
        )[0][0]
        mid = net.gather_features(
            features, torch.tensor([0]), torch.tensor([[4.0, 24.0, 16.0]], dtype=torch.float64), [3]
        )[0][0]
        assert torch.allclose(at, features[3][0, :, 1, 1, 1])
        assert torch.allclose(mid, (features[3][0, :, 1, 1, 1] + features[3][0, :, 1, 2, 1]) / 2)
    with pytest.raises(UnetzooError, match="model_args .*4 stages but 3 strides"):  # create_model: a one-line error
        _tiny(strides=[2, 2, 2])


@pytest.mark.parametrize("gather", ["floor", "trilinear"])
def test_factorised_decode_equals_plain_decode(gather, monkeypatch):
    """Many points: the deep stages are multiplied before the gather; same logits as gather-then-multiply."""
    import unetzoo.models.implicit_unet as module

    monkeypatch.setattr(module, "FACTORISE_MIN_WIDTH", 1)  # the tiny model's stages are narrow
    net = _tiny(gather=gather).double().eval()
    shape = (24, 20, 18)  # stage 0 (12x10x9) holds too many vectors to be multiplied first
    features = net.encode(torch.randn(2, 1, *shape, dtype=torch.float64))
    points = torch.rand(2 * 3000, 3, dtype=torch.float64) * torch.tensor(shape) - 0.5
    batch_index = torch.arange(2).repeat_interleave(3000)
    assert sorted(net._products(features, len(points))) == [1, 2, 3]
    fast = net.decode_flat(features, batch_index, points, shape)
    plain = net.decoder(net.point_inputs(features, batch_index, points, shape))
    assert torch.allclose(fast, plain, atol=1e-10)
    net.chunk = 777  # without gradients: chunks of points, products computed once
    with torch.no_grad():
        assert torch.allclose(net.decode_flat(features, batch_index, points, shape), plain, atol=1e-10)


# ---- point sampler -----------------------------------------------------------------------------------
def test_sampler_boundary_fraction_and_spread():
    torch.manual_seed(0)
    shape = (64, 48, 40)
    label = torch.zeros(2, 1, *shape)
    label[0, 0, :32] = 1  # patch 0: one interface between z = 31 and z = 32
    label[1, 0, :16] = 2  # patch 1: between z = 15 and z = 16
    k, alpha, sigma = 20000, 0.5, 5.0
    points, targets = sample_points(label, k, alpha, sigma)
    assert points.shape == (2, k, 3) and targets.shape == (2, k)
    assert (
        (points >= -0.5).all() and (points[..., 0] < shape[0] - 0.5).all() and (points[..., 2] < shape[2] - 0.5).all()
    )
    n_boundary = int(k * alpha)
    for b, plane in [(0, 31.5), (1, 15.5)]:
        near, far = points[b, :n_boundary, 0], points[b, n_boundary:, 0]
        assert abs(near.mean().item() - plane) < 0.3 and abs(near.std().item() - math.sqrt(sigma**2 + 0.25)) < 0.3
        assert (
            abs(far.mean().item() - (shape[0] - 1) / 2) < 1.0 and abs(far.std().item() - shape[0] / math.sqrt(12)) < 0.6
        )
        within = ((points[b, :, 0] - plane).abs() < 2 * sigma).float().mean().item()
        expected = alpha * 0.9545 + (1 - alpha) * (4 * sigma / shape[0])
        assert abs(within - expected) < 0.02
    # targets are the labels of the nearest voxels
    nearest = torch.floor(points + 0.5).long()
    assert torch.equal(targets[0], (nearest[0, :, 0] < 32).long())
    assert torch.equal(targets[1], 2 * (nearest[1, :, 0] < 16).long())
    # a patch without boundary (negative patch) still gets k valid points
    points, targets = sample_points(torch.zeros(1, 1, 8, 8, 8), 500, 0.5, 5.0)
    assert points.shape == (1, 500, 3) and (targets == 0).all() and (points.abs() <= 8).all()


def test_boundary_mask_marks_both_sides():
    label = torch.zeros(1, 1, 6, 5, 4)
    label[0, 0, :3] = 1
    mask = boundary_mask(label)[0]
    assert mask[2].all() and mask[3].all() and not mask[:2].any() and not mask[4:].any()


def test_sampler_reflects_points_into_the_patch():
    torch.manual_seed(1)
    label = torch.zeros(1, 1, 10, 10, 10)
    label[0, 0, :, :, 0] = 1  # the boundary hugs a wall: many displaced points leave the patch
    points, _ = sample_points(label, 5000, 1.0, 5.0)
    assert (points >= -0.5).all() and (points < 9.5).all()
    assert (points[0, :, 2] < 0).float().mean() < 0.1, "reflected, not clamped onto the wall"


# ---- method ------------------------------------------------------------------------------------------
def _method(spatial_dims=3, patch=(24, 24, 24), **method_args):
    plan = Plan.synthetic(list(patch), classes=3, patch=list(patch))
    return ImplicitMethod(_tiny(spatial_dims), plan, Config(model="implicit-unet"), **method_args)


def test_training_loss_backward():
    method = _method(points=400)
    method.model.train()
    batch = {"image": torch.randn(2, 1, 20, 24, 18), "label": torch.zeros(2, 1, 20, 24, 18)}  # deepest map 2x2x2
    batch["label"][:, :, 4:10, 3:9, 2:8] = 1
    batch["label"][:, :, 6:8, 5:7, 4:6] = 2
    loss = method.training_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in method.model.parameters())


def test_build_method_passes_method_args():
    config = Config(model="implicit-unet")
    config.model_args.update(TINY)
    config.method_args.update({"points": 1234, "boundary_fraction": 0.25, "sigma": 3.0, "broad_stride": 2})
    method, resolved = build_method(config, Plan.synthetic([16, 16, 16]))
    assert isinstance(method, ImplicitMethod) and method.points == 1234 and method.broad_stride == 2
    assert "n_stages" not in resolved.model_args and method.model.convs_per_stage == [2, 2, 4, 4]


def test_declared_departures_fine_band_and_elastic_augmentation():
    """Naval Marimont & Tarroni 2022: "the points near the broad boundary are predicted by the Implicit decoder" (no
    width given): the band is broad_stride // 2 = 2 voxels by default. "Training augmentations included elastic
    transforms, ...": elastic deformation is off by default (augment.elastic_p 0). Both are declared departures
    (docs/models.md)."""
    assert _method().band == 2 and _method(broad_stride=8).band == 4 and _method(band=1).band == 1
    assert Config(model="implicit-unet").augment.elastic_p == 0.0


def _ball_logits(points, centre, radii, scale=10.0):
    """Nested balls: class 1 inside radii[0], class 2 inside radii[1] (argmax boundaries exactly at the radii)."""
    r = (points - centre).norm(dim=-1)
    outer, inner = radii[0] - r, radii[1] - r
    return scale * torch.stack([torch.zeros_like(r), outer, outer + 2 * inner], -1)


def _slab_logits(points, centre, normal=(0.8, -0.36, 0.48)):
    """Two parallel oblique planes through ``centre``: class 0 / 1 / 2 below / between / above them. Every class
    region is convex, so a voxel whose enclosing broad samples all agree has their label: broad-then-fine must
    equal dense exactly, whatever the stride."""
    n = torch.tensor(normal[: points.shape[-1]], dtype=points.dtype)
    t = ((points - centre) * n / n.norm()).sum(-1)
    return 10.0 * torch.stack([torch.zeros_like(t), t + 3.1, 2 * t - 5.3], -1)


def _known_decoder(centres, radii=None):
    """A model whose output is known at every continuous coordinate: nested balls (``radii``) or oblique slabs
    around ``centres[patch]``. Replaces ``decode_flat``; counts the points it decodes."""
    calls = {"points": 0}

    def decode_flat(features, batch_index, points, size=None):
        calls["points"] += points.shape[0]
        if radii is None:
            return _slab_logits(points, centres[batch_index])
        return _ball_logits(points, centres[batch_index], radii)

    return decode_flat, calls


@pytest.mark.parametrize("spatial_dims,shape", [(3, (57, 50, 46)), (2, (121, 100))])
@pytest.mark.parametrize("stride", [2, 4, 8])
@pytest.mark.parametrize("upsample", [1, 2])
@pytest.mark.parametrize("shapes", ["slabs", "balls"])
def test_broad_then_fine_equals_dense_for_known_model(spatial_dims, shape, stride, upsample, shapes):
    """Slabs (convex class regions): identical labels. Balls: the region outside a ball is not convex, so a
    ball may poke through the broad mesh between samples (its sliver is missed): at most 0.1% of voxels."""
    method = _method(spatial_dims, shape, broad_stride=stride)
    centres = torch.tensor([[25.3, 23.7, 22.2][:spatial_dims], [30.0, 27.5, 24.0][:spatial_dims]])
    method.model.decode_flat, calls = _known_decoder(centres, (14.2, 6.6) if shapes == "balls" else None)
    features = method.model.encode(torch.zeros(2, 1, *shape))
    dense = method.dense_window(features, shape, upsample)
    n_dense = calls["points"]
    calls["points"] = 0
    sparse = method.sparse_window(features, shape, upsample)
    assert sparse.shape == dense.shape == (2, 3, *[upsample * s for s in shape])
    if shapes == "slabs":
        assert torch.equal(sparse.argmax(1), dense.argmax(1))
    else:
        assert (sparse.argmax(1) != dense.argmax(1)).float().mean() < 1e-3
    assert calls["points"] < 0.6 * n_dense and 0 < method.last_fine_fraction < 0.6
    # where the fine stage ran, its values are the dense ones
    fine = (sparse - dense).abs().amax(1) < 1e-6
    assert fine.float().mean() >= method.last_fine_fraction - 1e-6


def test_no_boundary_means_broad_prediction_only():
    method = _method(3, (24, 20, 16))
    method.model.decode_flat, calls = _known_decoder(torch.zeros(2, 3) - 100, (1.0, 0.5))  # balls far outside
    features = method.model.encode(torch.zeros(2, 1, 24, 20, 16))
    probs = method.sparse_window(features, (24, 20, 16))
    assert calls["points"] == 2 * 7 * 6 * 5 and method.last_fine_fraction == 0.0  # voxels 0, 4, ... and the last
    assert (probs.argmax(1) == 0).all()


def _install_known_model(method, centre, radii):
    """Make ``method.model`` the nested-balls model in *image* coordinates. The image carries its own voxel
    coordinates in channels 1.. (channel 0 goes to the real encoder), so each sliding window tells the model
    where it is; the decoder adds that origin to its window coordinates."""
    ball, calls = _known_decoder(centre[None], radii)
    state = {}
    real_encode = method.model.encode

    def encode(window):
        d = window.dim() - 2
        state["origin"] = window[(slice(None), slice(1, None)) + (0,) * d]  # (B, d): coordinates of voxel 0
        return real_encode(window[:, :1])

    def decode_flat(features, batch_index, points, size=None):
        return ball(features, torch.zeros_like(batch_index), points + state["origin"][batch_index], size)

    method.model.encode, method.model.decode_flat = encode, decode_flat
    return calls


def _coordinate_image(shape):
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    return torch.cat([torch.zeros(1, *shape), grid])[None]


def _ball_labels(shape, centre, radii, upsample=1):
    """The balls on the (upsampled) grid, after the procedure's final 3^3 average pooling of probabilities."""
    axes = [(torch.arange(upsample * s, dtype=torch.float32) + 0.5) / upsample - 0.5 for s in shape]
    labels = _ball_logits(torch.stack(torch.meshgrid(*axes, indexing="ij"), -1), centre, radii).argmax(-1)
    one_hot = torch.nn.functional.one_hot(labels, 3).movedim(-1, 0)[None].float()
    return torch.nn.functional.avg_pool3d(one_hot, 3, 1, 1, count_include_pad=False).argmax(1)[0]


@pytest.mark.slow
def test_sliding_window_predict_sparse_equals_dense_and_upsamples():
    """The whole procedure (windows, Gaussian blend, 3^3 smoothing): sparse and dense agree, and both find the
    known balls, on the input grid and on the 2x finer grid."""
    shape, centre, radii = (40, 37, 30), torch.tensor([20.3, 15.7, 14.2]), (9.2, 4.6)
    image = _coordinate_image(shape)
    labels, decoded = {}, {}
    for dense in (False, True):
        for upsample in (1, 2):
            method = _method(3, (24, 24, 24), dense=dense)
            calls = _install_known_model(method, centre, radii)
            with torch.no_grad():
                probs = method.predict(image, None if upsample == 1 else Grid.refinement(shape, upsample))
            decoded[dense, upsample] = calls["points"]
            assert probs.shape == (1, 3, *[upsample * s for s in shape])
            labels[dense, upsample] = probs.argmax(1)[0]
            truth = _ball_labels(shape, centre, radii, upsample)
            assert (labels[dense, upsample] == truth).float().mean() > 0.999
    for upsample in (1, 2):
        agreement = (labels[False, upsample] == labels[True, upsample]).float().mean().item()
        assert agreement > 0.999
        assert decoded[False, upsample] < 0.5 * decoded[True, upsample]


# ---- --upsample and --grid -----------------------------------------------------------------------------
def _tiny_run(root, model, dims=3):
    """A run folder with untrained weights (geometry does not need training): config, plan, checkpoint."""
    from unetzoo.data.datasets import load_dataset
    from unetzoo.data.phantoms import write_nuclei_phantom, write_organs_phantom
    from unetzoo.data.plan import make_plan

    data = root / f"data{dims}d"
    if not data.exists():
        if dims == 3:
            write_organs_phantom(data, cases=2, seed=0, shape=(26, 30, 24))
        else:
            write_nuclei_phantom(data, cases=2, seed=0, shape=(40, 36))
    dataset = load_dataset(data)
    # 3D: a target spacing unlike the files' (1.5, 1, 1) and rotated affines: predictions must be resampled back
    if dims == 3:
        plan = make_plan(dataset, dataset.cases, patch_size=[16, 16, 16], target_spacing=[1.2, 1.3, 0.9])
    else:
        plan = make_plan(dataset, dataset.cases, patch_size=[32, 32])
    config = Config(model=model)
    config.model_args.update(TINY if model == "implicit-unet" else {"base_features": 4, "max_features": 8})
    run = root / f"{model}{dims}d"
    run.mkdir()
    method, resolved = build_method(config, plan)
    resolved.save(run / "config.json")
    plan.save(run / "plan.json")
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in method.model.state_dict().items()}}, run / "checkpoint_last.pt"
    )
    return dataset, run


@pytest.mark.slow
def test_upsample_writes_finer_grid_of_the_same_extent(tmp_path):
    import nibabel as nib

    from unetzoo.inference import Predictor

    dataset, run = _tiny_run(tmp_path, "implicit-unet")
    case = dataset.cases[0]
    predictor = Predictor(run, upsample=2)
    written = predictor.predict_cases({case.name: case.images}, tmp_path / "out")
    ref, out = nib.load(str(case.images[0])), nib.load(str(written[0]))
    assert out.shape == tuple(2 * s for s in ref.shape[:3])
    assert np.allclose(out.header.get_zooms()[:3], np.array(ref.header.get_zooms()[:3]) / 2, atol=1e-5)
    assert np.allclose(out.affine[:3, :3], ref.affine[:3, :3] / 2, atol=1e-5)
    for corner_in, corner_out in [(-0.5, -0.5), (np.array(ref.shape[:3]) - 0.5, 2 * np.array(ref.shape[:3]) - 0.5)]:
        world_in = ref.affine @ np.append(np.broadcast_to(corner_in, 3), 1)
        world_out = out.affine @ np.append(np.broadcast_to(corner_out, 3), 1)
        assert np.allclose(world_in, world_out, atol=1e-4), "the world extent (box of voxel edges) is unchanged"
    assert np.allclose(refined_affine(np.diag([2.0, 3.0, 1.0, 1.0]), 2)[:3, 3], [-0.5, -0.75, -0.25])


@pytest.mark.slow
def test_direct_resampling_matches_invertd(tmp_path):
    """The input's own grid as a target Grid (affine-to-affine resampling) = the usual Invertd route."""
    from unetzoo.inference.predictor import Predictor, file_geometry

    dataset, run = _tiny_run(tmp_path, "implicit-unet")
    predictor = Predictor(run)
    paths = dataset.cases[0].images
    via_invertd = predictor.predict_probabilities(paths)
    image = predictor.preprocess({"image": [str(p) for p in paths]})["image"]
    with torch.no_grad():
        probs = predictor.method.predict(image.as_tensor()[None])
    affine, shape, _ = file_geometry(paths[0])
    direct = Grid.between(image.affine.numpy(), affine, shape).resample(probs)[0]
    assert direct.shape == via_invertd.shape
    assert (direct - via_invertd).abs().max() < 1e-5  # (a one-voxel shift of the target grid changes it by ~2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["unet", "implicit-unet"])
def test_grid_reference_gives_that_images_geometry(tmp_path, model):
    """--grid REF: the output has REF's shape and affine; REF = the input itself reproduces the plain prediction.
    Voxel-grid models resample their probabilities, continuous ones sample their function."""
    import nibabel as nib

    from unetzoo.cli import main

    dataset, run = _tiny_run(tmp_path, model)
    case, other = dataset.cases
    plain = main(["predict", str(run), str(case.images[0]), str(tmp_path / "plain")])
    itself = main(["predict", str(run), str(case.images[0]), str(tmp_path / "itself"), "--grid", str(case.images[0])])
    assert plain == itself == 0
    name = case.images[0].name.replace("_0000", "")
    a, b = nib.load(str(tmp_path / "plain" / name)), nib.load(str(tmp_path / "itself" / name))
    assert np.array_equal(a.affine, b.affine) and (np.asarray(a.dataobj) == np.asarray(b.dataobj)).mean() > 0.99
    # another image's grid (rotated affine, other shape), twice as fine: exactly its geometry
    reference = nib.load(str(other.images[0]))
    fine = nib.Nifti1Image(np.zeros([2 * s for s in reference.shape], np.float32), refined_affine(reference.affine, 2))
    nib.save(fine, str(tmp_path / "ref.nii.gz"))
    assert (
        main(
            ["predict", str(run), str(case.images[0]), str(tmp_path / "other"), "--grid", str(tmp_path / "ref.nii.gz")]
        )
        == 0
    )
    out = nib.load(str(tmp_path / "other" / name))
    assert out.shape == fine.shape and np.allclose(out.affine, fine.affine, atol=1e-6)


@pytest.mark.slow
def test_upsample_resamples_voxel_grid_models_and_grid_errors_are_one_line(tmp_path, capsys):
    import nibabel as nib

    from unetzoo.cli import main
    from unetzoo.inference import Predictor

    dataset, run = _tiny_run(tmp_path, "unet")
    case = dataset.cases[0]
    written = Predictor(run, upsample=2).predict_cases({case.name: case.images}, tmp_path / "out")
    assert nib.load(str(written[0])).shape == tuple(2 * s for s in nib.load(str(case.images[0])).shape)
    status = main(
        ["predict", str(run), str(case.images[0]), str(tmp_path / "out2"), "--grid", str(tmp_path / "nope.nii.gz")]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "nope.nii.gz" in err


def test_points_as_a_fraction_of_the_patch():
    default = _method()  # the paper's density: 30,000 points per 160x160x96 patch at any patch size
    assert default.points_per_patch((160, 160, 96)) == 30000
    assert default.points_per_patch((96, 96, 64)) == 7200 and default.points_per_patch((40, 56, 40)) == 1094
    method = _method(points=0.0122)
    assert method.points_per_patch((160, 160, 96)) == round(0.0122 * 160 * 160 * 96)  # the paper's ~30,000
    assert _method(points=30000).points_per_patch((96, 96, 64)) == 30000


def test_training_loss_under_bf16_autocast(monkeypatch):
    import unetzoo.models.implicit_unet as module

    monkeypatch.setattr(module, "FACTORISE_MIN_WIDTH", 1)  # exercise the factorised path too
    method = _method(points=300)
    method.model.train()
    batch = {"image": torch.randn(1, 1, 18, 18, 18), "label": (torch.rand(1, 1, 18, 18, 18) > 0.5).float()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("train_chunk", [700, 1500])  # uneven chunks of 2 x 1000 points
def test_checkpointed_decoder_gives_the_same_gradients(train_chunk):
    grads, losses = [], []
    for checkpoint in (False, True):
        net = (
            _tiny(checkpoint=checkpoint, train_chunk=train_chunk, dropout=0.0).double().train()
        )  # (chunks draw other masks)
        torch.manual_seed(5)
        x = torch.randn(2, 1, 18, 20, 17, dtype=torch.float64)  # deepest map 2x2x2
        points = torch.rand(2, 1000, 3, dtype=torch.float64) * 8
        loss = net.decode(net.encode(x), points).square().mean()
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in net.parameters()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(*grads))


def test_checkpointing_is_the_default_and_frees_the_decoder_activations():
    """Saved-for-backward memory of the decoder: with recomputation only its inputs, without it at least 8 x hidden
    floats per point (one activation per layer)."""
    saved = {}
    for checkpoint in (False, True):
        net = _tiny(checkpoint=checkpoint, train_chunk=500).train()
        assert _tiny().checkpoint and _tiny().train_chunk == 4096
        features = [f.detach().requires_grad_() for f in net.encode(torch.randn(1, 1, 18, 20, 17))]
        points = torch.rand(1, 2000, 3) * 8
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net.decode(features, points)
        saved[checkpoint] = total
    assert saved[False] - saved[True] > 8 * TINY["hidden"] * 2000 * 4


def test_upsample_2d_png_doubles_the_size(tmp_path):
    from PIL import Image

    from unetzoo.inference import Predictor

    dataset, run = _tiny_run(tmp_path, "implicit-unet", dims=2)
    case = dataset.cases[0]
    written = Predictor(run, upsample=2).predict_cases({case.name: case.images}, tmp_path / "out")
    with Image.open(case.images[0]) as ref, Image.open(written[0]) as out:
        assert out.size == (2 * ref.size[0], 2 * ref.size[1])
