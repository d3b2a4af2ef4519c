"""TV-regularized softmax (regularized-unet.md section 2.1) and ``regularized-unet``: Attention U-Net + this head.

The softmax ``S(o)`` minimises ``-<U, o> + <U, log U>`` over the simplex (eq. 1). Adding ``lambda TV(U)`` (eq. 2),
with ``TV(U) = max_{|eta| <= 1} <U, div eta>``, gives the saddle point ``U = S(o - lambda div eta)``, which the paper
approaches by the iteration, from ``V0 = eta0 = 0`` (so ``U0 = S(o)``)::

    V_t   = V_{t-1} - (tau lambda) grad U_{t-1}
    eta_t = P_B(V_t)
    U_t   = S(o - lambda div eta_t)

``grad`` is forward differences (zero at the last index, Neumann) and ``div`` backward differences with the
matching boundary, so that ``<grad u, eta> = -<u, div eta>`` exactly. ``P_B`` projects every voxel's gradient
vector onto the unit ball, separately per class channel. The paper runs one iteration (``iterations = 1``).

No authors' code exists (reference-implementations.md section 5); the constants are ours:

* ``lambda`` is learnable, initialised to 5.0, the value of the learnable weight in the same group's soft
  threshold dynamics layer (Liu et al., arXiv 2002.03989): large enough that the term moves the logits by a few
  units at the start of training, so that the gradient reaching ``lambda`` is not negligible.
* ``tau lambda`` is a fixed step (the paper), by default ``1 / (4 d)`` in ``d`` dimensions: Chambolle's bound
  for the dual projection algorithm (1/8 in 2D, 1/12 in 3D), since ``|grad|^2 <= 4 d``.

The head returns ``log U`` (a log-softmax), so the dense method's ``softmax`` gives back ``U`` and its Dice+CE
loss is the paper's (eq. 5) without any special case; under deep supervision every output gets the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unetzoo.models.attention_unet import AttentionUNet
from unetzoo.models.blocks import unet_plan_defaults
from unetzoo.models.registry import register


def gradient(u: torch.Tensor) -> torch.Tensor:
    """Forward differences of ``u`` (B, C, *S) along every spatial axis, zero at the last index: (B, C, d, *S)."""
    parts = []
    for dim in range(2, u.dim()):
        diff = torch.diff(u, dim=dim)
        parts.append(torch.cat([diff, torch.zeros_like(u.narrow(dim, 0, 1))], dim=dim))
    return torch.stack(parts, dim=2)


def divergence(p: torch.Tensor) -> torch.Tensor:
    """Backward differences of ``p`` (B, C, d, *S) summed over the ``d`` components: the negative adjoint of
    :func:`gradient`, ``(div p)_i = p_i - p_{i-1}`` inside, ``p_0`` at the first index, ``-p_{n-2}`` at the last."""
    total = 0
    for k in range(p.shape[2]):
        dim = 2 + k
        q = p[:, :, k]
        q = torch.cat([q.narrow(dim, 0, q.shape[dim] - 1), torch.zeros_like(q.narrow(dim, 0, 1))], dim=dim)
        total = total + torch.diff(q, dim=dim, prepend=torch.zeros_like(q.narrow(dim, 0, 1)))
    return total


def project_unit_ball(v: torch.Tensor) -> torch.Tensor:
    """``v / max(1, |v|_2)`` with the norm over the gradient components (dim 2), per voxel and class."""
    return v / v.norm(dim=2, keepdim=True).clamp_min(1.0)


class TVSoftmax(nn.Module):
    """TV-regularized softmax over dim 1 of logits (B, K, *S) in any number of spatial dims; returns ``log U``.

    ``iterations`` T of the primal-dual scheme (the paper: 1), learnable ``lam`` (init ``lam_init``), fixed dual
    step ``step`` = tau lambda (default ``1 / (4 d)``). With ``lam = 0`` it is exactly ``log_softmax``.
    """

    def __init__(self, iterations: int = 1, lam_init: float = 5.0, step: float | None = None):
        super().__init__()
        if iterations < 0:
            raise ValueError(f"TV-softmax iterations must be >= 0, got {iterations}")
        self.iterations = iterations
        self.step = step
        self.lam = nn.Parameter(torch.tensor(float(lam_init)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        o = logits.float()
        step = self.step if self.step is not None else 1.0 / (4 * (o.dim() - 2))
        log_u = F.log_softmax(o, dim=1)
        v = 0
        for _ in range(self.iterations):
            v = v - step * gradient(log_u.exp())
            log_u = F.log_softmax(o - self.lam * divergence(project_unit_ball(v)), dim=1)
        return log_u


class Regularized(nn.Module):
    """A segmentation network followed by :class:`TVSoftmax` on each of its outputs (deep-supervision lists too)."""

    def __init__(self, net: nn.Module, head: TVSoftmax):
        super().__init__()
        self.net, self.head = net, head

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        return [self.head(o) for o in out] if isinstance(out, list) else self.head(out)


@register(
    "regularized-unet",
    description="Attention U-Net with a TV-regularized softmax output (learnable lambda, T primal-dual steps)",
    paper="Ding, Liu, Jiang, Zhang, Regularized U-Net, FLARE 2021 (regularized-unet.md)",
    plan_defaults=unet_plan_defaults,
)
def regularized_unet(
    spatial_dims: int, in_channels: int, out_channels: int, tv_iterations: int = 1, tv_lambda: float = 5.0,
    tv_step: float | None = None, **kwargs
) -> nn.Module:
    """:class:`~unetzoo.models.attention_unet.AttentionUNet` (same arguments) whose outputs pass through
    :class:`TVSoftmax` (``tv_iterations``, initial ``tv_lambda``, ``tv_step`` = tau lambda)."""
    return Regularized(AttentionUNet(spatial_dims, in_channels, out_channels, **kwargs), TVSoftmax(tv_iterations, tv_lambda, tv_step))
