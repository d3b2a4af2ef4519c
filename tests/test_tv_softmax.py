"""TV-regularized softmax (Ding et al. 2021, FLARE 2021, section 2.1): the discrete operators, the head, the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unetzoo.methods.dense import summed_dice_ce
from unetzoo.models import create_model
from unetzoo.models.tv_softmax import TVSoftmax, divergence, gradient, project_unit_ball


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (2, 3, 5, 6, 4)])
def test_gradient_and_divergence_are_adjoint(shape):
    """<grad u, eta> = -<u, div eta> for random u and eta, 2D and 3D."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(shape, generator=g, dtype=torch.float64)
    eta = torch.randn(shape[:2] + (len(shape) - 2,) + shape[2:], generator=g, dtype=torch.float64)
    lhs = (gradient(u) * eta).sum()
    rhs = -(u * divergence(eta)).sum()
    assert abs(lhs - rhs) <= 1e-6 * abs(lhs)


def test_gradient_by_hand():
    """Forward differences, zero at the last index; the divergence of a hand-made field."""
    u = torch.tensor([[1.0, 4.0, 9.0], [0.0, 0.0, 2.0]])[None, None]
    grad = gradient(u)[0, 0]
    assert torch.equal(grad[0], torch.tensor([[-1.0, -4.0, -7.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(grad[1], torch.tensor([[3.0, 5.0, 0.0], [0.0, 2.0, 0.0]]))
    p = torch.zeros(1, 1, 2, 1, 4)
    p[0, 0, 1, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # the last entry lies outside grad's range: ignored
    assert torch.equal(divergence(p)[0, 0, 0], torch.tensor([1.0, 1.0, 1.0, -3.0]))


def test_projection_onto_the_unit_ball():
    v = torch.tensor([[3.0, 0.3], [4.0, 0.4]])[None, None]  # two voxels: |(3, 4)| = 5, |(0.3, 0.4)| = 0.5
    eta = project_unit_ball(v)[0, 0]
    assert torch.allclose(eta[:, 0], torch.tensor([0.6, 0.8])) and torch.equal(eta[:, 1], v[0, 0, :, 1])


def test_lambda_zero_is_softmax_exactly():
    logits = torch.randn(2, 4, 6, 5, 7, generator=torch.Generator().manual_seed(1))
    head = TVSoftmax(iterations=3, lam_init=0.0)
    assert torch.equal(head(logits), F.log_softmax(logits, dim=1))


@pytest.mark.parametrize("iterations", [1, 4])
def test_probabilities_sum_to_one(iterations):
    logits = 10 * torch.randn(1, 5, 9, 8, generator=torch.Generator().manual_seed(2))
    u = TVSoftmax(iterations)(logits).exp()
    assert torch.allclose(u.sum(1), torch.ones(1), atol=1e-6) and u.min() >= 0 and u.max() <= 1


def _total_variation(u: torch.Tensor) -> float:
    return float(gradient(u).norm(dim=2).sum())


@pytest.mark.parametrize("dims", [2, 3])
def test_noisy_two_regions_are_smoothed(dims):
    """Two half-spaces with noisy logits: lower total variation than softmax, and all but a few of the voxels the
    noise flips set right (2D: all 4; 3D: 73 of 75)."""
    shape = (16,) * dims
    region = (torch.arange(16) >= 8).long().reshape((1,) * (dims - 1) + (16,)).expand(shape)
    clean = 1.5 * torch.stack([1.0 - 2 * region, 2.0 * region - 1])[None]
    logits = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    softmax = logits.softmax(1)
    with torch.no_grad():
        regularized = TVSoftmax()(logits).exp()
    assert _total_variation(regularized) < 0.7 * _total_variation(softmax)
    flipped = int((softmax.argmax(1)[0] != region).sum())
    assert flipped > 0  # the noise flips some voxels ...
    assert (regularized.argmax(1)[0] != region).sum() <= flipped // 10  # ... which the regularized softmax sets right


@pytest.mark.parametrize("dims", [2, 3])
def test_projection_acts_on_a_sharp_boundary(dims):
    """Ding et al. 2021, sec. 2.1: "V = -tau lambda grad S(o), eta = P_B(V), U = S(o - lambda div(eta))" with
    "P_B(V) = V / ||V||_2 if ||V||_2 > 1" and "tau lambda can be seen as step size which is fixed". On a sharp
    half-space boundary the step must be large enough that P_B acts: eta is the unit normal, so the two boundary
    layers' logits move by exactly -+lambda, not by the linear smoothing log_softmax(o + lambda s Laplacian S(o))."""
    n = 8
    region = (torch.arange(n) >= n // 2).long().reshape((1,) * (dims - 1) + (n,)).expand((n,) * dims)
    logits = 3.0 * torch.stack([1.0 - 2 * region, 2.0 * region - 1])[None]  # class 0 left, class 1 right, margin 6
    head = TVSoftmax()
    with torch.no_grad():
        out = head(logits)
        lam, step = float(head.lam), head.step
        linear = F.log_softmax(logits + lam * step * divergence(gradient(logits.softmax(1))), dim=1)
    assert step * float(gradient(logits.softmax(1)).norm(dim=2).max()) > 1  # the projection is active ...
    assert not torch.allclose(out, linear, atol=1e-3)  # ... so the head is not linear smoothing
    expected = logits.clone()
    last, first = (slice(None),) * (dims - 1) + (n // 2 - 1,), (slice(None),) * (dims - 1) + (n // 2,)
    expected[(0, 0) + last] -= lam  # class 0's last layer: eta_0 = +1 there, div = +1
    expected[(0, 1) + last] += lam
    expected[(0, 0) + first] += lam
    expected[(0, 1) + first] -= lam
    assert torch.allclose(out, F.log_softmax(expected, dim=1), atol=1e-5)
    assert torch.equal(out.argmax(1)[0], region)  # a margin of 6 survives lambda = 0.5


def test_gradients_reach_lambda_and_logits():
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
    head = TVSoftmax(iterations=2)
    target = torch.randint(0, 3, (2, 8, 8), generator=torch.Generator().manual_seed(5))
    F.nll_loss(head(logits), target).backward()
    assert head.lam.grad is not None and head.lam.grad != 0
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_regularized_unet_heads_under_deep_supervision():
    """Every deep-supervision output is a log-probability map; eval gives one map; lambda is a model parameter."""
    net = create_model("regularized-unet", spatial_dims=2, in_channels=1, out_channels=3, n_stages=3, tv_iterations=2)
    x = torch.randn(2, 1, 20, 12)
    outputs = net.train()(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 20, 12), (2, 3, 10, 6)]
    assert all(torch.allclose(o.exp().sum(1), torch.ones(1), atol=1e-5) for o in outputs)
    assert any(p is net.head.lam for p in net.parameters())
    assert net.eval()(x).shape == (2, 3, 20, 12)


def test_attention_unet_parameters_over_unet_are_the_gates():
    """The attention U-Net is the plain U-Net plus its gates (same conv units and widths)."""
    unet = create_model("unet", spatial_dims=3, in_channels=1, out_channels=5, n_stages=4)
    attention = create_model("attention-unet", spatial_dims=3, in_channels=1, out_channels=5, n_stages=4)
    gates = sum(p.numel() for p in attention.decoder.gates.parameters())
    # a gate of width w: W_g and W_x (w -> w/2, conv + bias + BatchNorm), psi (w/2 -> 1, conv + bias + BatchNorm)
    assert gates == sum(2 * (w * (w // 2) + w // 2 + w) + (w // 2 + 1 + 2) for w in (32, 64, 128))
    assert sum(p.numel() for p in attention.parameters()) == sum(p.numel() for p in unet.parameters()) + gates


def test_regularized_unet_loss_is_equation_five():
    """Ding et al. 2021, Eq. 5: "L_Entropy(N(I), M) = -1/C sum_{c=1}^C <M_c, log(N(I))_c>" and
    "L_Dice(N(I), M) = sum_{c=1}^C (1 - 2 (sum M_c * (N(I))_c + eps) / (sum M_c + sum (N(I))_c + eps))", "the
    summation between Dice loss and cross entropy loss": every class (background too) summed, by hand on 4 voxels
    (<.,.> as the voxel mean, the declared reading; the batch averages per-image losses)."""
    u = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])  # voxel x class
    label = torch.tensor([0, 1, 1, 2])
    eps = 1e-5
    m = torch.eye(3)[label]
    dice = sum(
        1 - 2 * (float((m[:, c] * u[:, c]).sum()) + eps) / (float(m[:, c].sum() + u[:, c].sum()) + eps)
        for c in range(3)
    )
    entropy = -sum(float((m[:, c] * u[:, c].log()).mean()) for c in range(3)) / 3
    logits = u.log().T.reshape(1, 3, 2, 2)  # log-probabilities, as the TV head returns them
    target = label.reshape(1, 1, 2, 2)
    assert float(summed_dice_ce(logits, target)) == pytest.approx(dice + entropy, rel=1e-5)
    batch = summed_dice_ce(torch.cat([logits, logits + 3.0]), torch.cat([target, target]))  # softmax ignores the shift
    assert float(batch) == pytest.approx(dice + entropy, rel=1e-5)


def test_regularized_unet_trains_with_equation_five():
    """The model's default loss is Eq. 5 (a method default, recorded in the resolved config); a bad name is an error."""
    from unetzoo.config import Config
    from unetzoo.data.plan import Plan
    from unetzoo.errors import UnetzooError
    from unetzoo.methods import build_method

    config = Config(model="regularized-unet", model_args={"n_stages": 2, "base_features": 4})
    method, resolved = build_method(config, Plan.synthetic([8, 8], classes=3))
    assert resolved.method_args == {"loss": "summed-dice-ce"} and method.loss is summed_dice_ce
    method.model.eval()
    batch = method.example_batch(torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(method.training_loss(batch)) == pytest.approx(
            float(summed_dice_ce(method.model(batch["image"]), batch["label"])), rel=1e-6
        )
    config.method_args = {"loss": "dice"}
    with pytest.raises(UnetzooError, match="method_args.loss"):
        build_method(config, Plan.synthetic([8, 8], classes=3))
