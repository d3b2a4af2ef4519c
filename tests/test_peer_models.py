"""The peer baselines ``segresnet`` (MONAI) and ``resenc-unet`` (nnU-Net ResEnc M): any patch size, the preset's
widths and blocks, the planner's topology, the width rule (their method contract: tests/test_contract.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import tiny_config
from unetzoo.data.plan import Plan
from unetzoo.models import create_model
from unetzoo.training.width import budget_width, default_width

ANISO = {"strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]]}


@pytest.mark.parametrize("shape", [(5, 37, 41), (37, 41)])
def test_segresnet_keeps_odd_and_thin_sizes(shape):
    """SegResNet needs multiples of 8; the wrapper pads and crops, so an ACDC-thin 5-slice patch comes back whole."""
    net = create_model("segresnet", spatial_dims=len(shape), in_channels=2, out_channels=3).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, *shape))
    assert out.shape == (1, 3, *shape) and torch.isfinite(out).all()
    assert net.net.init_filters == 8 and net.net.blocks_down == (1, 2, 2, 4) and net.net.blocks_up == (1, 1, 1)


def conv(c_in: int, c_out: int, kernel: int, bias: bool = True) -> int:
    return c_in * c_out * kernel + (c_out if bias else 0)


def unit(c_in: int, c_out: int, kernel: int, bias: bool = True) -> int:
    """conv + InstanceNorm (affine: weight and bias)."""
    return conv(c_in, c_out, kernel, bias) + 2 * c_out


def test_resenc_parameters_are_the_m_preset_by_hand():
    """2D, 3 stages (strides 1, 2, 2; kernel 3x3 = 9), 1 -> 2 channels: widths 32-64-128, residual blocks 1-3-4 of two
    conv units each (the first of a widening block with a 1x1 projection, no bias), one conv unit per decoder stage,
    transposed convs with kernel = stride 2x2 = 4, a 1x1 head per decoder level."""
    net = create_model("resenc-unet", spatial_dims=2, in_channels=1, out_channels=2, n_stages=3)
    stem = unit(1, 32, 9)
    stage0 = 2 * unit(32, 32, 9)
    stage1 = unit(32, 64, 9) + unit(64, 64, 9) + unit(32, 64, 1, bias=False) + 2 * 2 * unit(64, 64, 9)
    stage2 = unit(64, 128, 9) + unit(128, 128, 9) + unit(64, 128, 1, bias=False) + 3 * 2 * unit(128, 128, 9)
    decoder = conv(128, 64, 4) + unit(128, 64, 9) + conv(64, 2, 1) + conv(64, 32, 4) + unit(64, 32, 9) + conv(32, 2, 1)
    assert stem + stage0 + stage1 + stage2 + decoder == 1_476_228
    assert sum(p.numel() for p in net.parameters()) == 1_476_228


@pytest.mark.parametrize(
    "n_stages,base,widths,blocks",
    [
        (6, 32, [32, 64, 128, 256, 320, 320], [1, 3, 4, 6, 6, 6]),
        (7, 16, [16, 32, 64, 128, 160, 160, 160], [1, 3, 4, 6, 6, 6, 6]),  # the cap scales with the width
        (2, 32, [32, 64], [1, 3]),
    ],
)
def test_resenc_stage_widths_and_blocks(n_stages, base, widths, blocks):
    net = create_model("resenc-unet", spatial_dims=2, n_stages=n_stages, base_features=base)
    stages = net.net.encoder.stages
    assert [s.output_channels for s in stages] == widths and [len(s.blocks) for s in stages] == blocks
    assert [len(s.convs) for s in net.net.decoder.stages] == [1] * (n_stages - 1)


def test_resenc_takes_the_planned_topology_and_supervises_as_unet():
    """Per-axis strides and kernels reach every stage (a thin axis pooled once); the deep-supervision outputs are
    those of ``unet`` on the same topology; eval gives one full-size map."""
    net = create_model("resenc-unet", spatial_dims=3, in_channels=1, out_channels=3, **ANISO)
    assert net.net.encoder.strides == ANISO["strides"]
    assert [list(s.blocks[0].conv1.conv.kernel_size) for s in net.net.encoder.stages] == ANISO["kernel_sizes"]
    unet = create_model("unet", spatial_dims=3, in_channels=1, out_channels=3, **ANISO)
    x = torch.randn(2, 1, 5, 37, 41)
    shapes = [o.shape for o in net.train()(x)]
    assert shapes == [o.shape for o in unet.train()(x)] == [(2, 3, 5, 37, 41), (2, 3, 5, 19, 21)]
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 3, 5, 37, 41)


def test_resenc_is_planned_like_unet():
    from unetzoo.config import Config
    from unetzoo.methods import build_method

    plan = Plan.synthetic([40, 56, 40])
    _, resolved = build_method(Config(model="resenc-unet"), plan)
    assert resolved.model_args["strides"] == plan.strides == [[1, 1, 1]] + [[2, 2, 2]] * 3
    assert resolved.model_args["deep_supervision"] is True


def test_the_width_rule_halves_the_peers_from_their_defaults():
    """A budget too short for the default width: resenc-unet halves 32 -> 16; segresnet's default 8 is the floor."""
    assert default_width("segresnet") == 8 and default_width("resenc-unet") == 32
    asked = []

    def timer(config, plan, train_cases):
        asked.append(config.model_args["base_features"])
        return {32: 3.0, 16: 0.8, 8: 3.0}[config.model_args["base_features"]]

    log = logging.getLogger("test")
    for model, chosen in (("resenc-unet", 16), ("segresnet", 8)):
        config = tiny_config(model)
        config.train.max_minutes = 20  # 900 s for steps: 3 s holds 300 < 1,000, 0.8 s holds 1,125
        assert budget_width(config, Plan.synthetic([16, 16, 16]), 10, log, timer=timer).model_args == {
            "base_features": chosen
        }
    assert asked == [32, 16, 8]
