"""The nnU-Net-style U-Net and its slice-wise 2D wrapper (every model's method contract: tests/test_contract.py)."""

import pytest
import torch

from conftest import assert_eval_map, assert_gradients
from unetzoo import UnetzooError, create_model, list_models, model_info

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
