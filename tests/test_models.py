"""Every registered model: 2D and 3D, odd input sizes, train (deep supervision) and eval, backward, save/load."""

import pytest
import torch

from conftest import assert_eval_map, assert_gradients
from unetzoo import UnetzooError, create_model, list_models, model_info

ODD_SHAPES = {2: (45, 37), 3: (19, 21, 17)}
SMALL_ARGS = {"n_stages": 3, "sdn_state_size": 8}


def _cases():
    return [(name, dims) for name in list_models() for dims in model_info(name).spatial_dims]


def _build(name, dims, **extra):
    entry = model_info(name)
    kwargs = {k: v for k, v in SMALL_ARGS.items() if entry.accepts(k)}
    return create_model(name, spatial_dims=dims, in_channels=2, out_channels=3, **kwargs, **extra)


@pytest.mark.parametrize("name,dims", _cases())
def test_forward_backward_any_size(name, dims):
    torch.manual_seed(0)
    model = _build(name, dims)
    x = torch.randn(2, 2, *ODD_SHAPES[dims])
    assert_eval_map(model, x, 3)
    model.train()
    outputs = model(x)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    assert outputs[0].shape == (2, 3, *ODD_SHAPES[dims])
    sum(o.float().mean() for o in outputs).backward()
    assert_gradients(model)


@pytest.mark.parametrize("name,dims", _cases())
def test_state_dict_round_trip(name, dims, tmp_path):
    torch.manual_seed(0)
    model = _build(name, dims).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(1)
    other = _build(name, dims).eval()
    other.load_state_dict(torch.load(tmp_path / "w.pt"))
    x = torch.randn(1, 2, *ODD_SHAPES[dims])
    with torch.no_grad():
        assert torch.allclose(model(x), other(x))


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
