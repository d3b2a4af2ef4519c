"""TV-regularized softmax (regularized-unet.md section 2.1): the discrete operators, the head, the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
    """Two half-spaces with noisy logits: lower total variation than softmax, every voxel's argmax the region's."""
    shape = (16,) * dims
    region = (torch.arange(16) >= 8).long().reshape((1,) * (dims - 1) + (16,)).expand(shape)
    clean = 1.5 * torch.stack([1.0 - 2 * region, 2.0 * region - 1])[None]
    logits = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    softmax = logits.softmax(1)
    with torch.no_grad():
        regularized = TVSoftmax()(logits).exp()
    assert _total_variation(regularized) < 0.7 * _total_variation(softmax)
    assert (softmax.argmax(1)[0] != region).sum() > 0  # the noise flips some voxels ...
    assert torch.equal(regularized.argmax(1)[0], region)  # ... which the regularized softmax sets right


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
