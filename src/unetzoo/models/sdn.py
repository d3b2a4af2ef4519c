"""Spatial dependency layers (SDN, Miladinović et al. 2021) for 2D and 3D feature maps, as used by the
spatially dependent U-Nets of Carvalho et al. 2021 (arXiv:2103.11713).

A spatial dependency layer has three stages (Carvalho et al. 2021, Sec. 2.1, Fig. 3):

1. **project-in**: a convolution ``in_channels -> state_size`` followed by ``tanh``. The paper's Eq. (1)
   is a 1x1 projection, but its Table 5 ("SDN kernel size 3x3") and the authors' code
   (joaocarv/holistic-seg ``lib/sdn.py``) use a 3x3 kernel; ``kernel_size`` (default 3) selects it.
2. **correction stage**: one directional sweep per entry of ``directions``, applied one after the other
   (the output of a sweep is the input of the next, as the authors' ``nn.Sequential``), each with its
   own gated recurrent cell. A sweep walks the *lines* of the map (rows, columns; in 3D planes) in
   order; the first line is left unchanged and every later line ``d`` is updated from the *already
   updated* line ``d-1``:

   * in 2D the cell at position ``j`` of line ``d`` sees the 3 neighbours ``j-1, j, j+1`` of line ``d-1``;
   * in 3D the cell at ``(j, k)`` of plane ``d`` sees the 3x3 neighbourhood of plane ``d-1``;

   (zero padding at the borders). With ``x`` that neighbourhood (concatenated, ``3S`` or ``9S``
   features) and ``h`` the cell's current value (its value before this sweep), the cell is the GRU
   [Cho et al. 2014, ref. 4 of Carvalho et al. 2021] of the authors' ``SDNCell``::

       r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
       z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
       n  = tanh   (W_in x + b_in + r * (W_hn h + b_hn))
       h' = z * n + (1 - z) * h

3. **project-out**: a 1x1 convolution ``state_size -> out_channels``, no activation.

Implementation (what differs from the authors' code, see the reference-implementation notes):

* The input part ``W_i x`` over the neighbourhood of the previous line is a convolution with kernel 3
  (2D: ``conv1d`` over the line; 3D: 3x3 ``conv2d`` over the plane), so one step updates a whole line
  or plane for every batch element at once. The hidden part ``W_h h + b_h`` does not depend on the
  sweep (``h`` is the value before the sweep), so it is computed for *all* lines with one 1x1
  convolution before the loop. The only Python loop left is the one along the sweep axis.
* Where a gradient is wanted, the recurrence (``sweep``) runs in a custom autograd function (``_Sweep``) with its
  backward written out (inference and export tracing call ``sweep`` directly): the reverse
  pass over lines only carries the gradient from line to line (one transposed convolution per line), and
  the gradient of ``weight_ih`` / ``bias_ih`` is one batched convolution-weight gradient over all lines
  (the sum of the per-line products) instead of one small product per line; gates are saved in
  preallocated whole-map tensors. Exact: the same outputs and gradients as autograd through the loop
  (tests/test_sdn.py).
* A direction is an (axis, reverse) pair: the sweep axis is moved to the front and the lines are
  visited in increasing or decreasing order (the neighbourhood is symmetric, so nothing is flipped), so one routine serves every direction and any map
  shape (the authors' loop always runs over ``H``, which breaks non-square maps).
* The weights are stored as ``weight_ih`` (3S, S, 3[, 3]) -- the authors' ``W_ih`` (3S, 3S) with the
  neighbour axis split out -- ``bias_ih`` (3S), ``weight_hh`` (3S, S), ``bias_hh`` (3S), gate order
  (r, z, n) as ``torch.nn.GRUCell``, all initialised U(-1/sqrt(S), 1/sqrt(S)) as the authors' cell.
  The projections keep PyTorch's default convolution initialisation (the SDN stages of ``sd_unet``
  re-initialise them He-style, like every convolution of the zoo).

Direction names (``SDN_DIRECTIONS``), spatial axes counted after batch and channels:

* 2D, axes (H, W): ``top_down`` / ``bottom_up`` sweep along H (rows, increasing / decreasing);
  ``left_right`` / ``right_left`` sweep along W (columns).
* 3D, axes (D, H, W): ``front_back`` / ``back_front`` sweep along D (planes); ``top_down`` /
  ``bottom_up`` along H; ``left_right`` / ``right_left`` along W.

The default is the authors' choice, two sweeps along different axes: ``("left_right", "top_down")``
(their dirs [0, 2]) in 2D; in 3D, for which the paper only says that 6 directions are possible, one
forward sweep per axis ``("front_back", "top_down", "left_right")`` (a departure: every axis gets a
recurrence).

Example::

    layer = SDN(spatial_dims=2, in_channels=64, out_channels=64)          # state 150, 2 sweeps
    y = layer(torch.randn(2, 64, 45, 37))                                  # -> (2, 64, 45, 37)
    res = ResSDN(spatial_dims=3, in_channels=8, out_channels=8, state_size=16, directions=["bottom_up"])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

SDN_DIRECTIONS: dict[int, dict[str, tuple[int, bool]]] = {
    2: {
        "top_down": (0, False),
        "bottom_up": (0, True),
        "left_right": (1, False),
        "right_left": (1, True),
    },
    3: {
        "front_back": (0, False),
        "back_front": (0, True),
        "top_down": (1, False),
        "bottom_up": (1, True),
        "left_right": (2, False),
        "right_left": (2, True),
    },
}

DEFAULT_DIRECTIONS: dict[int, tuple[str, ...]] = {
    2: ("left_right", "top_down"),
    3: ("front_back", "top_down", "left_right"),
}


def direction_axis(spatial_dims: int, direction: str) -> tuple[int, bool]:
    """``(spatial axis, reverse)`` of a direction name; unknown names raise a ``ValueError`` listing the valid ones."""
    if spatial_dims not in SDN_DIRECTIONS:
        raise ValueError(f"SDN supports spatial_dims 2 and 3, got {spatial_dims}")
    names = SDN_DIRECTIONS[spatial_dims]
    if direction not in names:
        raise ValueError(f"unknown {spatial_dims}D SDN direction {direction!r}; valid: {', '.join(names)}")
    return names[direction]


class SDNCell(nn.Module):
    """The gated recurrent cell of one directional sweep (one per direction, own weights).

    ``forward(state, axis, reverse)`` sweeps ``state`` (B, S, *spatial) along spatial ``axis`` and returns
    the corrected map of the same shape. See the module docstring for the equations.
    """

    def __init__(self, spatial_dims: int, state_size: int):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"SDN supports spatial_dims 2 and 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.state_size = state_size
        line_dims = spatial_dims - 1  # a line (2D) or a plane (3D)
        self.weight_ih = nn.Parameter(torch.empty(3 * state_size, state_size, *([3] * line_dims)))
        self.bias_ih = nn.Parameter(torch.empty(3 * state_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * state_size, state_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * state_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.state_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, state: torch.Tensor, axis: int, reverse: bool) -> torch.Tensor:
        if state.shape[2 + axis] == 1:  # a single line: nothing to update, the cell is not used
            return state
        lines = state.movedim(2 + axis, 0).contiguous()  # (L, B, S, *line): lines[d] is line d, contiguous
        n_lines, batch = lines.shape[:2]
        # hidden part W_h h + b_h of every line at once (it only depends on the pre-sweep values)
        conv = F.conv1d if self.spatial_dims == 2 else F.conv2d
        weight_hh = self.weight_hh.view(*self.weight_hh.shape, *([1] * (self.spatial_dims - 1)))
        hidden = conv(lines.flatten(0, 1), weight_hh, self.bias_hh).unflatten(0, (n_lines, batch))
        # under autocast the sweep runs in the dtype of the state (as autocast would run its convolutions)
        weight_ih, bias_ih = self.weight_ih.to(lines.dtype), self.bias_ih.to(lines.dtype)
        hidden = hidden.to(lines.dtype)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (lines, hidden, weight_ih, bias_ih)):
            out = _Sweep.apply(lines, hidden, weight_ih, bias_ih, reverse)
        else:  # no gradient wanted (inference, export tracing): the plain recurrence, no autograd.Function
            out = sweep(lines, hidden, weight_ih, bias_ih, reverse)[0]
        return out.movedim(0, 2 + axis).contiguous()


_CONV = {1: F.conv1d, 2: F.conv2d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d}
_CONV_WEIGHT = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight}


def sweep(lines, hidden, weight_ih, bias_ih, reverse):
    """The GRU recurrence over ``L >= 2`` lines ``(L, B, S, *line)`` given the hidden part ``(L, B, 3S, *line)``:
    the swept lines and the gates ``r, z, n`` of every line (which :class:`_Sweep` keeps for its backward)."""
    with torch.autocast(lines.device.type, enabled=False):
        conv = _CONV[lines.dim() - 3]
        n_lines = lines.shape[0]
        out = torch.empty_like(lines)
        r_all, z_all, n_all = (torch.empty_like(lines) for _ in range(3))
        order = range(n_lines - 1, -1, -1) if reverse else range(n_lines)
        out[order[0]] = lines[order[0]]
        for prev, d in zip(order[:-1], order[1:]):
            x_r, x_z, x_n = conv(out[prev], weight_ih, bias_ih, padding=1).chunk(3, dim=1)
            h_r, h_z, h_n = hidden[d].chunk(3, dim=1)
            r = torch.sigmoid(x_r.add_(h_r), out=r_all[d])
            z = torch.sigmoid(x_z.add_(h_z), out=z_all[d])
            n = torch.tanh(x_n.addcmul_(r, h_n), out=n_all[d])
            torch.addcmul(lines[d], z, n - lines[d], out=out[d])  # z * n + (1 - z) * h
    return out, r_all, z_all, n_all


class _Sweep(torch.autograd.Function):
    """The recurrence of one sweep over ``L >= 2`` lines ``(L, B, S, *line)`` given the hidden part ``(L, B, 3S, *line)``.

    Exact forward and backward of the GRU update of the module docstring, with the backward written out: the
    reverse pass over lines only propagates the gradient from line to line (a transposed convolution per line);
    the gradient of ``weight_ih`` and ``bias_ih`` is then one convolution-weight gradient over all lines at once
    (the sum over lines of per-line weight gradients is a single batched product), instead of one small
    weight-gradient product per line as autograd would record.
    """

    @staticmethod
    def forward(ctx, lines, hidden, weight_ih, bias_ih, reverse):
        out, r_all, z_all, n_all = sweep(lines, hidden, weight_ih, bias_ih, reverse)
        ctx.reverse = reverse
        ctx.save_for_backward(lines, hidden, weight_ih, out, r_all, z_all, n_all)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        lines, hidden, weight_ih, out, r_all, z_all, n_all = ctx.saved_tensors
        dims = lines.dim() - 3
        n_lines = lines.shape[0]
        order = range(n_lines - 1, -1, -1) if ctx.reverse else range(n_lines)
        grad_out = grad_out.contiguous()
        grad_lines = torch.empty_like(lines)
        grad_hidden = torch.empty_like(hidden)
        grad_hidden[order[0]] = 0  # the first line is not updated: its hidden part is unused
        grad_x = torch.empty_like(hidden)  # gradient of the input part W_i x + b_i of every updated line
        carry = torch.zeros_like(lines[0])  # gradient reaching line d through the update of line d+1
        for d in reversed(order[1:]):
            g = grad_out[d] + carry
            h, r, z, n = lines[d], r_all[d], z_all[d], n_all[d]
            g_r, g_z, g_n = grad_x[d].chunk(3, dim=1)
            h_r, h_z, h_n = grad_hidden[d].chunk(3, dim=1)
            torch.mul(g, 1 - z, out=grad_lines[d])
            torch.mul(g * z, 1 - n * n, out=g_n)  # through n = tanh(a_n)
            torch.mul(g_n * hidden[d].chunk(3, dim=1)[2], r * (1 - r), out=g_r)  # a_n = x_n + r * hid_n; r = sigmoid
            torch.mul(g * (n - h), z * (1 - z), out=g_z)
            h_r.copy_(g_r)
            h_z.copy_(g_z)
            torch.mul(g_n, r, out=h_n)
            carry = _CONV_T[dims](grad_x[d], weight_ih, padding=1)
        grad_lines[order[0]] = grad_out[order[0]] + carry
        # every update in one weight gradient: line d-1 (d+1 when reversed) against the gradient of line d
        sources, targets = (out[1:], grad_x[:-1]) if ctx.reverse else (out[:-1], grad_x[1:])
        grad_weight = _CONV_WEIGHT[dims](sources.flatten(0, 1), weight_ih.shape, targets.flatten(0, 1), padding=1)
        grad_bias = targets.sum(dim=(0, 1, *range(3, 3 + dims)))
        return grad_lines, grad_hidden, grad_weight, grad_bias, None


class SDN(nn.Module):
    """Spatial dependency layer: project-in (conv + tanh), directional sweeps, project-out (1x1 conv).

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channels of the input and of the output map.
        state_size: channels of the correction stage (the paper's "SDN #channels", 150).
        directions: sweep directions, applied in order (names in ``SDN_DIRECTIONS``; any non-empty
            subset, repetitions allowed); ``None`` = ``DEFAULT_DIRECTIONS[spatial_dims]``.
        kernel_size: kernel of the project-in convolution (3 as the paper's Table 5; 1 = Eq. (1)).

    The output has the input's spatial shape, whatever it is (non-square, non-cubic, odd sizes).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        state_size: int = 150,
        directions: Sequence[str] | None = None,
        kernel_size: int = 3,
    ):
        super().__init__()
        directions = tuple(DEFAULT_DIRECTIONS[spatial_dims] if directions is None else directions)
        if isinstance(directions, str) or not directions:
            raise ValueError("directions must be a non-empty sequence of direction names")
        self.sweeps = [direction_axis(spatial_dims, name) for name in directions]
        self.directions = directions
        self.spatial_dims = spatial_dims
        conv = Conv[Conv.CONV, spatial_dims]
        self.project_in = conv(in_channels, state_size, kernel_size, padding=kernel_size // 2)
        self.cells = nn.ModuleList(SDNCell(spatial_dims, state_size) for _ in directions)
        self.project_out = conv(state_size, out_channels, 1)

    def correct(self, state: torch.Tensor) -> torch.Tensor:
        """The correction stage alone: every sweep in turn on a (B, S, *spatial) state."""
        for cell, (axis, reverse) in zip(self.cells, self.sweeps):
            state = cell(state, axis, reverse)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.correct(torch.tanh(self.project_in(x))))

    def extra_repr(self) -> str:
        return f"directions={list(self.directions)}"


class ResSDN(nn.Module):
    """Residual SDN (authors' ``ResSDNLayer``): a gated mix of an SDN and a plain convolution.

    The SDN projects out to ``2 * out_channels``, split into ``(sdn_out, g)``; a plain convolution with the
    same kernel on the same input gives ``conv_out``; the output is
    ``sigmoid(g) * conv_out + (1 - sigmoid(g)) * sdn_out``. Arguments as :class:`SDN`.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        state_size: int = 150,
        directions: Sequence[str] | None = None,
        kernel_size: int = 3,
    ):
        super().__init__()
        self.sdn = SDN(spatial_dims, in_channels, 2 * out_channels, state_size, directions, kernel_size)
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sdn_out, gate = self.sdn(x).chunk(2, dim=1)
        gate = torch.sigmoid(gate)
        return gate * self.conv(x) + (1 - gate) * sdn_out
