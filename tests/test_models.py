"""The nnU-Net-style U-Net and its slice-wise 2D wrapper (every model's method contract: tests/test_contract.py)."""

import pytest
import torch

from conftest import assert_eval_map, assert_gradients
from unetzoo import UnetzooError, create_model


def test_unet_deep_supervision_levels():
    model = create_model("unet", spatial_dims=3, in_channels=1, out_channels=2, n_stages=4).train()
    outputs = model(torch.randn(1, 1, 16, 24, 32))
    assert [tuple(o.shape[2:]) for o in outputs] == [(16, 24, 32), (8, 12, 16), (4, 6, 8)]


def test_unet_default_widths_are_nnunet():
    model = create_model("unet", spatial_dims=3)
    assert model.encoder.widths == [32, 64, 128, 256, 320, 320]


def test_slicewise_never_mixes_slices():
    model = create_model("unet2d-slices", spatial_dims=3, in_channels=1, out_channels=2, n_stages=3).eval()
    x = torch.randn(1, 1, 5, 16, 16)
    y = x.clone()
    y[:, :, 3] += 10  # change one slice only
    with torch.no_grad():
        a, b = model(x), model(y)
    changed = (a - b).abs().amax(dim=(0, 1, 3, 4))
    assert changed[3] > 0 and torch.all(changed[[0, 1, 2, 4]] == 0)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnetzooError, match="unknown model 'unet3'.*unet, unet2d-slices"):
        create_model("unet3")


# ---- topology as data: per-stage strides and kernel sizes per axis (nnU-Net's pool_op/conv_kernel_sizes) ----
ANISO = {"strides": [1, [1, 2, 2], [2, 2, 2]], "kernel_sizes": [[1, 3, 3], [1, 3, 3], 3]}
TOPOLOGY_MODELS = ["unet", "attention-unet", "regularized-unet", "sd-unet", "unetpp", "sdn-unetpp"]
SMALL = {"base_features": 4, "max_features": 8}
SDN_SMALL = {"sdn_state_size": 4}


def _convs(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_topology_resolves_per_axis_lists():
    from unetzoo.models.blocks import Topology

    topology = Topology(3, strides=ANISO["strides"], kernel_sizes=ANISO["kernel_sizes"])
    assert topology.n_stages == 3 and topology.strides == [(1, 1, 1), (1, 2, 2), (2, 2, 2)]
    assert topology.kernel_sizes == [(1, 3, 3), (1, 3, 3), (3, 3, 3)]
    assert topology.cumulative(1) == (1, 2, 2) and topology.divisor == (2, 4, 4)
    assert topology.output_shape((5, 13, 11), 2) == [3, 4, 3]  # ceil(5/2), ceil(13/4), ceil(11/4)
    assert Topology(2, n_stages=4).strides == [(1, 1), (2, 2), (2, 2), (2, 2)]  # n_stages alone: isotropic, as before
    assert Topology(2, n_stages=4).kernel_sizes == [(3, 3)] * 4
    for bad, message in [
        ({"n_stages": 4, "strides": [1, 2]}, "disagrees"),
        ({"strides": [2, 2]}, "first stage"),
        ({"strides": [1, 2], "kernel_sizes": [3]}, "1 kernel sizes for 2 stages"),
        ({"strides": [1, 2], "kernel_sizes": [3, 2]}, "odd"),
        ({"strides": [1, [2, 2, 2]]}, "one positive integer per axis"),
    ]:
        with pytest.raises(ValueError, match=message):
            Topology(2, **bad)


@pytest.mark.parametrize("name", TOPOLOGY_MODELS)
def test_models_build_the_planned_anisotropic_topology(name):
    """An axis that is not pooled keeps its size; the first stages convolve in-plane only (kernel 1 on axis 0);
    padding follows the cumulative stride per axis (2, 4, 4), so odd sizes come back whole."""
    extra = SDN_SMALL if name.startswith("sd") else {}
    model = create_model(name, spatial_dims=3, in_channels=1, out_channels=2, **ANISO, **SMALL, **extra)
    convs = [m for m in _convs(model, torch.nn.Conv3d) if m.kernel_size != (1, 1, 1)]
    first = [m for m in convs if m.in_channels == 1][0]
    assert first.kernel_size == (1, 3, 3) and first.padding == (0, 1, 1) and first.stride == (1, 1, 1)
    assert {m.stride for m in convs if m.stride != (1, 1, 1)} == {(1, 2, 2), (2, 2, 2)}
    assert {m.kernel_size for m in _convs(model, torch.nn.ConvTranspose3d)} == {(1, 2, 2), (2, 2, 2)}  # kernel = stride
    assert_eval_map(model, torch.randn(1, 1, 5, 13, 11), 2)
    model.train()
    outputs = model(torch.randn(2, 1, 5, 13, 11))
    expected = (
        [(5, 13, 11)] * 2 if name in ("unetpp", "sdn-unetpp") else [(5, 13, 11), (5, 7, 6)]
    )  # U-Net++ heads: full size
    assert [tuple(o.shape[2:]) for o in outputs] == expected
    sum(o.float().mean() for o in outputs).backward()
    assert_gradients(model)


def test_deep_supervision_targets_follow_per_axis_strides():
    """The dense loss downsamples the label to each output's size: (5, 7, 6) for the stride-(1, 2, 2) level."""
    from unetzoo.config import Config
    from unetzoo.data.plan import Plan
    from unetzoo.methods import build_method

    config = Config(model="unet", model_args={**ANISO, **SMALL})
    method, _ = build_method(config, Plan.synthetic([5, 13, 11], classes=2))
    label = torch.zeros(2, 1, 5, 13, 11)
    label[:, :, :, 4:10, 2:8] = 1
    seen, loss_fn = [], method.loss
    method.loss = lambda logits, target: (
        seen.append((tuple(logits.shape[2:]), tuple(target.shape[2:]), target.sum().item())) or loss_fn(logits, target)
    )
    loss = method.training_loss({"image": torch.randn(2, 1, 5, 13, 11), "label": label})
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert [(out, target) for out, target, _ in seen] == [((5, 13, 11), (5, 13, 11)), ((5, 7, 6), (5, 7, 6))]
    assert seen[1][2] > 0  # the downsampled target keeps the foreground


def test_unet2d_slices_takes_the_plane_topology():
    """unet2d-slices: a 2D topology of the slice plane (the two axes other than slice_axis)."""
    model = create_model(
        "unet2d-slices",
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        slice_axis=2,
        strides=[1, [2, 1], 2],
        kernel_sizes=[3, 3, 3],
        **SMALL,
    )
    assert model.axis == 2 and {m.kernel_size for m in _convs(model, torch.nn.ConvTranspose2d)} == {(2, 1), (2, 2)}
    assert_eval_map(model, torch.randn(1, 1, 13, 6, 3), 2)
