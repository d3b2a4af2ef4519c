"""Projection U-Nets (Angermann & Haltmeier 2019, arXiv:1910.10398) in training batches and at prediction: a volume's
output does not depend on its batch partner, the in-plane stride is applied at prediction as in training, and the
loss mix c(n) counts passes over the training set."""

from __future__ import annotations

import pytest
import torch

from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.errors import UnetzooError
from unetzoo.methods import build_method

SMALL = {"directions": 2, "n_stages": 2, "base_features": 4}
MODELS = {"projection-2.5d-unet": SMALL, "random-2.5d-unet": {**SMALL, "all_directions": 3}}


def _method(model: str, *assignments: str, train_cases: int | None = None):
    torch.manual_seed(0)
    config = Config(model=model, model_args=MODELS[model])
    for assignment in assignments:
        config.set(assignment)
    return build_method(config, Plan.synthetic([12, 10, 9]), train_cases=train_cases)[0]


def _case(shape, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, *shape, generator=g)
    return {"image": image, "label": (image > 1.0).float()}


# the first volume is padded on two axes beside its partner, the partner on the third
ALONE, PARTNER = _case((6, 9, 7), 1), _case((9, 7, 10), 2)


@pytest.mark.parametrize("model", list(MODELS))
def test_volume_output_does_not_depend_on_its_batch_partner(model):
    """A volume alone and padded beside a partner of another shape: the same logits (both paths of the random
    model, its path 1 with the same random directions), since every volume runs through the network at its own
    shape; run on the padded tensor instead, the logits differ (the rotation centre and tuning see the padding)."""
    method = _method(model)
    method.model.eval()
    batch = method.collate([ALONE, PARTNER])
    assert batch["image"].shape == (2, 1, 9, 9, 10) and batch["shape"].tolist() == [[6, 9, 7], [9, 7, 10]]
    with torch.no_grad():
        torch.manual_seed(5)
        in_batch = method.volume_outputs(batch)
        torch.manual_seed(5)
        alone = method.model.training_outputs(ALONE["image"][None])
        partner = method.model(PARTNER["image"][None])
        padded = method.model(batch["image"])[:1, :, :6, :9, :7]
    assert len(in_batch) == 2 and len(in_batch[0][0]) == len(alone) == (2 if model == "random-2.5d-unet" else 1)
    for got, expected in zip(in_batch[0][0], alone):
        assert got.shape == (1, 2, 6, 9, 7) and float((got - expected).abs().max()) < 1e-4
    assert torch.equal(in_batch[0][1], ALONE["label"][None])
    assert float((in_batch[1][0][-1] - partner).abs().max()) < 1e-4
    assert float((padded - in_batch[0][0][-1]).abs().max()) > 1e-2


@pytest.mark.parametrize("model", list(MODELS))
def test_training_loss_of_a_padded_batch_is_the_mean_of_the_volume_losses(model):
    method = _method(model, train_cases=4)
    method.model.train()
    torch.manual_seed(7)
    method.steps = 2  # c(n) at n = 1 + 2 * 2 // 4 = 2 for every call
    together = method.training_loss(method.collate([ALONE, PARTNER])).item()
    torch.manual_seed(7)  # the random model's path 1 then draws the same directions: ALONE's, then PARTNER's
    losses = []
    for case in (ALONE, PARTNER):
        method.steps = 2
        losses.append(method.training_loss(method.collate([case])).item())
    assert together == pytest.approx((losses[0] + losses[1]) / 2, abs=1e-5)
    assert losses[0] != pytest.approx(losses[1])


def test_mix_weight_counts_passes_over_the_training_set():
    """Sec. 3.2: c(1) = 0.99, c(n + 1) = c(n) 0.99^n, n the epoch, here the pass over the training set: 5 training
    volumes, 2 per step; before steps 0..5 the loader has handed over 0, 2, 4, 6, 8, 10 volumes, i.e. 0, 0, 0, 1, 1,
    2 full passes, n = 1, 1, 1, 2, 2, 3, c = 0.99, 0.99, 0.99, 0.99^2, 0.99^2, 0.99^2 0.99^2."""
    method = _method("random-2.5d-unet", "train.batch_size=2", "train.iters_per_epoch=4", train_cases=5)
    batch = method.collate([_case((5, 4, 6), 3), _case((4, 6, 5), 4)])
    weights = []
    for _ in range(6):
        weights.append(method.path1_weight())
        method.training_loss(batch)
    assert weights == pytest.approx([0.99, 0.99, 0.99, 0.99**2, 0.99**2, 0.99**4])
    method.start_epoch(2)  # a resumed run: 2 epochs of 4 steps = 16 volumes, 3 full passes, n = 4
    assert method.passes() == 4 and method.path1_weight() == pytest.approx(0.99 * 0.99 ** (1 + 2 + 3))
    method.train_cases = None  # unknown (the benchmark): c(1)
    assert method.path1_weight() == pytest.approx(0.99)


def test_pass_epochs_make_an_epoch_one_pass_over_the_training_set():
    """``method_args.pass_epochs``: the epoch that the validation, the plateau and the early-stop counters count is
    ceil(5 training volumes / 2 per step) = 3 steps; without the option, ``train.iters_per_epoch``."""
    method = _method("projection-2.5d-unet", "train.batch_size=2", "method_args.pass_epochs=true", train_cases=5)
    assert method.steps_per_epoch() == 3
    method.start_epoch(2)  # 6 steps, 12 volumes: 2 full passes
    assert method.steps == 6 and method.passes() == 3
    assert _method("projection-2.5d-unet", "train.iters_per_epoch=7", train_cases=5).steps_per_epoch() == 7
    with pytest.raises(UnetzooError, match="number of training cases"):
        _method("projection-2.5d-unet", "method_args.pass_epochs=true").steps_per_epoch()


def test_prediction_applies_the_in_plane_stride_as_training():
    """Ding et al. 2021's in-plane stride s = 2 (the plan's in-plane axes 0 and 1): training sees every 2nd voxel of
    both axes; prediction runs the network on each of the 4 interleaved sub-volumes, whole, and interleaves them
    back to the full 9 x 8 x 7 volume."""
    method = _method("projection-2.5d-unet", "augment.in_plane_stride=2")
    assert method.stride_axes == (0, 1)
    transform = method.train_transform()
    transform.set_random_state(seed=0)
    image = torch.randn(1, 1, 9, 8, 7, generator=torch.Generator().manual_seed(0))
    trained = transform({"image": image[0], "label": (image[0] > 1).float()})
    assert trained["image"].shape[2:] == (4, 7) and trained["image"].shape[1] in (4, 5)
    seen = []
    hook = method.model.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[2:])))
    with torch.no_grad():
        probs = method.predict(image)
    hook.remove()
    assert sorted(seen) == [(4, 4, 7), (4, 4, 7), (5, 4, 7), (5, 4, 7)]
    assert probs.shape == (1, 2, 9, 8, 7)
    with torch.no_grad():
        for i in range(2):
            for j in range(2):
                part = torch.softmax(method.model(image[:, :, i::2, j::2]), dim=1)
                assert torch.allclose(probs[:, :, i::2, j::2], part, atol=1e-6)
