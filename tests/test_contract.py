"""The Method contract, for every registered model through its own method, 2D and 3D where supported:
build -> training_loss -> backward -> predict (own grid, odd size, and a 2x finer grid) -> predict_sequence (two
frames of a 3D+t case) -> weights round trip.

A new model is covered by registering it: nothing here names a model."""

from __future__ import annotations

import pytest
import torch

from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.methods import Grid, build_method, inference_context
from unetzoo.models import list_models, model_info

PATCH = {2: [16, 16], 3: [16, 16, 16]}
ODD = {2: (19, 13), 3: (13, 17, 11)}
CASES = [(name, dims) for name in list_models() for dims in model_info(name).spatial_dims]
QUICK = {"nisf": {"fit_steps": 3}}  # per method: methods that fit at test time take a few steps here


def _method(name: str, dims: int, seed: int):
    torch.manual_seed(seed)
    config = Config(model=name)
    config.train.batch_size = 2
    config.method_args = dict(QUICK.get(model_info(name).method, {}))
    return build_method(config, Plan.synthetic(PATCH[dims], channels=2, classes=3), train_cases=3)


def _predict(method, image, grid=None):
    with inference_context(method):
        return method.predict(image, grid)


@pytest.mark.slow
@pytest.mark.parametrize("name,dims", CASES)
def test_every_model_trains_and_predicts_through_its_method(name, dims, tmp_path):
    method, resolved = _method(name, dims, seed=0)
    assert resolved.model == name and resolved is not method.model

    method.model.train()
    loss = method.training_loss(method.example_batch(torch.Generator().manual_seed(0)))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    params = [p for group in method.parameter_groups() for p in group["params"]]
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params), (
        "every trained tensor gets a gradient"
    )

    image = torch.randn(1, 2, *ODD[dims], generator=torch.Generator().manual_seed(1))
    probs = _predict(method, image)
    assert probs.shape == (1, 3, *ODD[dims])
    assert torch.allclose(probs.sum(1), torch.ones(1), atol=1e-4) and probs.min() >= 0
    fine = _predict(method, image, Grid.refinement(ODD[dims], 2))
    assert fine.shape == (1, 3, *[2 * s for s in ODD[dims]])
    assert torch.allclose(fine.sum(1), torch.ones(1), atol=1e-4)

    torch.manual_seed(3)
    with inference_context(method):
        sequence = method.predict_sequence([image, image.flip(2)], Grid.refinement(ODD[dims], 2))
    assert [p.shape for p in sequence] == [fine.shape] * 2, "3D+t: one probability map per frame on the grid"
    assert all(torch.allclose(p.sum(1), torch.ones(1), atol=1e-4) for p in sequence)

    torch.save(method.model.state_dict(), tmp_path / "weights.pt")
    other, _ = _method(name, dims, seed=1)
    other.model.load_state_dict(torch.load(tmp_path / "weights.pt"))
    other.model.eval()
    torch.manual_seed(2)  # methods that fit something at test time start from the same draw
    again = _predict(other, image)
    torch.manual_seed(2)
    assert torch.allclose(_predict(method, image), again, atol=1e-5)


def test_build_method_resolves_a_copy():
    config = Config(model="unet")
    method, resolved = build_method(config, Plan.synthetic([32, 32, 32]))
    assert config.model_args == {} and resolved.model_args["deep_supervision"] is True
    assert (
        resolved.model_args["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 3
        and len(resolved.model_args["kernel_sizes"]) == 4
    )  # 32 -> 4
    assert resolved.method_args == {}  # unet needs no method argument beyond the dense defaults
    config.model_args["n_stages"] = 2
    _, explicit = build_method(config, Plan.synthetic([32, 32, 32]))
    assert (
        explicit.model_args["n_stages"] == 2 and "strides" not in explicit.model_args
    )  # the user's value wins over the plan's


def test_grid_maps_and_resamples():
    """A hand-checked grid: the 2x refinement of a 1D ramp along the last axis samples it at (J + 1/2)/2 - 1/2."""
    grid = Grid.refinement((1, 4), 2)
    points = grid.points()
    assert points.shape == (2, 8, 2)
    assert torch.allclose(points[0, :, 1], torch.tensor([-0.25, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25]))
    ramp = torch.arange(4.0).reshape(1, 1, 1, 4)  # value = index
    resampled = grid.resample(ramp)
    assert torch.allclose(
        resampled[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])
    )  # border outside
    assert grid.step() == pytest.approx(0.5)
    own = Grid.between(torch.eye(3).numpy(), torch.eye(3).numpy(), (1, 4))
    assert own.is_identity((1, 4)) and own.resample(ramp) is ramp
