"""Spatial dependency layer: causality of every sweep direction, equivalence with a per-position loop, shapes."""

from __future__ import annotations

import itertools

import pytest
import torch

from unetzoo.models.sdn import DEFAULT_DIRECTIONS, SDN, SDN_DIRECTIONS, ResSDN, SDNCell

CASES = [(2, name) for name in SDN_DIRECTIONS[2]] + [(3, name) for name in SDN_DIRECTIONS[3]]
SHAPES = {2: (7, 5), 3: (5, 4, 6)}  # non-square, non-cubic


def _line(x: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    return x.select(2 + axis, index)


@pytest.mark.parametrize("spatial_dims,direction", CASES)
def test_sweep_is_causal_in_every_direction(spatial_dims, direction):
    """Single sweep: the first line of the sweep reaches the last one; the last line never reaches the first."""
    torch.manual_seed(0)
    axis, reverse = SDN_DIRECTIONS[spatial_dims][direction]
    layer = SDN(spatial_dims, 3, 4, state_size=6, directions=[direction]).double()
    x = torch.randn(2, 3, *SHAPES[spatial_dims], dtype=torch.float64)
    n = x.shape[2 + axis]
    first, last = (n - 1, 0) if reverse else (0, n - 1)
    with torch.no_grad():
        y = layer(x)
        x_first = x.clone()
        _line(x_first, axis, first).add_(1.0)
        x_last = x.clone()
        _line(x_last, axis, last).add_(1.0)
        y_first, y_last = layer(x_first), layer(x_last)
    assert (_line(y_first, axis, last) - _line(y, axis, last)).abs().max() > 1e-6
    assert torch.equal(_line(y_last, axis, first), _line(y, axis, first))


@pytest.mark.parametrize("spatial_dims,direction", CASES)
def test_correction_stage_depends_only_on_earlier_lines(spatial_dims, direction):
    """The correction stage alone: changing line k changes line k and every later line, no earlier one."""
    torch.manual_seed(1)
    axis, reverse = SDN_DIRECTIONS[spatial_dims][direction]
    cell = SDNCell(spatial_dims, 5).double()
    state = torch.randn(2, 5, *SHAPES[spatial_dims], dtype=torch.float64)
    n = state.shape[2 + axis]
    k = n // 2
    changed = state.clone()
    _line(changed, axis, k).add_(0.5)
    with torch.no_grad():
        diff = (cell(changed, axis, reverse) - cell(state, axis, reverse)).abs()
    per_line = diff.movedim(2 + axis, 0).flatten(1).amax(dim=1)
    visited = list(range(n - 1, -1, -1)) if reverse else list(range(n))
    position = visited.index(k)
    assert all(per_line[i] == 0 for i in visited[:position])
    assert all(per_line[i] > 1e-8 for i in visited[position:])


def reference_sweep(cell: SDNCell, state: torch.Tensor, axis: int, reverse: bool) -> torch.Tensor:
    """The sweep written naively: one GRU cell update per line, per position, per batch element."""
    size = cell.state_size
    lines = state.movedim(2 + axis, 2)  # (B, S, L, *line)
    batch, n_lines, line_shape = lines.shape[0], lines.shape[2], lines.shape[3:]
    out = lines.clone()
    w_ih, b_ih, w_hh, b_hh = cell.weight_ih, cell.bias_ih, cell.weight_hh, cell.bias_hh
    order = list(range(n_lines - 1, -1, -1)) if reverse else list(range(n_lines))
    for prev, d in zip(order[:-1], order[1:]):
        for b in range(batch):
            for pos in itertools.product(*(range(m) for m in line_shape)):
                gi = b_ih.clone()
                for offset in itertools.product(range(3), repeat=len(line_shape)):
                    q = tuple(p + o - 1 for p, o in zip(pos, offset))
                    if all(0 <= qi < m for qi, m in zip(q, line_shape)):
                        gi = gi + w_ih[(slice(None), slice(None)) + offset] @ out[(b, slice(None), prev) + q]
                h = lines[(b, slice(None), d) + pos]
                gh = w_hh @ h + b_hh
                r = torch.sigmoid(gi[:size] + gh[:size])
                z = torch.sigmoid(gi[size : 2 * size] + gh[size : 2 * size])
                n = torch.tanh(gi[2 * size :] + r * gh[2 * size :])
                out[(b, slice(None), d) + pos] = z * n + (1 - z) * h
    return out.movedim(2, 2 + axis)


@pytest.mark.parametrize("spatial_dims,direction", CASES)
def test_vectorised_sweep_matches_per_position_loop(spatial_dims, direction):
    torch.manual_seed(2)
    axis, reverse = SDN_DIRECTIONS[spatial_dims][direction]
    cell = SDNCell(spatial_dims, 4)
    state = torch.tanh(torch.randn(2, 4, *SHAPES[spatial_dims]))
    with torch.no_grad():
        fast = cell(state, axis, reverse)
        slow = reference_sweep(cell, state, axis, reverse)
    assert fast.shape == state.shape
    assert (fast - slow).abs().max() < 1e-5


def autograd_sweep(cell: SDNCell, state: torch.Tensor, axis: int, reverse: bool) -> torch.Tensor:
    """The sweep as a loop of differentiable per-line steps, for plain autograd (the reference for gradients)."""
    conv = torch.nn.functional.conv1d if cell.spatial_dims == 2 else torch.nn.functional.conv2d
    lines = state.movedim(2 + axis, 0).unbind(0)
    weight_hh = cell.weight_hh.view(*cell.weight_hh.shape, *([1] * (cell.spatial_dims - 1)))
    order = list(range(len(lines) - 1, -1, -1)) if reverse else list(range(len(lines)))
    out = {order[0]: lines[order[0]]}
    for prev, d in zip(order[:-1], order[1:]):
        x_r, x_z, x_n = conv(out[prev], cell.weight_ih, cell.bias_ih, padding=1).chunk(3, dim=1)
        h_r, h_z, h_n = conv(lines[d], weight_hh, cell.bias_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        out[d] = z * torch.tanh(x_n + r * h_n) + (1 - z) * lines[d]
    return torch.stack([out[d] for d in range(len(lines))], dim=2 + axis)


@pytest.mark.parametrize("spatial_dims,direction", CASES)
def test_sweep_gradients_match_autograd_through_the_reference(spatial_dims, direction):
    """The custom backward against plain autograd through the per-line loop (itself checked against the naive
    loop's output): gradients of the input and of every cell parameter, to 1e-5."""
    torch.manual_seed(6)
    axis, reverse = SDN_DIRECTIONS[spatial_dims][direction]
    cell = SDNCell(spatial_dims, 3).double()
    state = torch.tanh(torch.randn(2, 3, *SHAPES[spatial_dims], dtype=torch.float64)).requires_grad_()
    weights = torch.randn(state.shape, dtype=torch.float64)
    grads = []
    with torch.no_grad():
        assert (
            autograd_sweep(cell, state, axis, reverse) - reference_sweep(cell, state, axis, reverse)
        ).abs().max() < 1e-10
    outputs = []
    for sweep in (cell, lambda *a: autograd_sweep(cell, *a)):
        outputs.append(sweep(state, axis, reverse))
        (outputs[-1] * weights).sum().backward()
        grads.append([state.grad.clone()] + [p.grad.clone() for p in cell.parameters()])
        state.grad = None
        cell.zero_grad(set_to_none=True)
    for fast, slow in zip(*grads):
        assert (fast - slow).abs().max() < 1e-5 * max(1.0, slow.abs().max().item())
    with torch.no_grad():  # the gradient-free path (inference, export) and the autograd function agree
        assert (cell(state, axis, reverse) - outputs[0]).abs().max() < 1e-12
    assert (outputs[0] - outputs[1]).abs().max() < 1e-12


def test_sweep_passes_gradcheck_and_runs_under_bf16_autocast():
    torch.manual_seed(7)
    cell = SDNCell(2, 2).double()
    state = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: cell(s, 0, True), (state,))
    layer = SDN(2, 3, 2, state_size=4)
    x = torch.randn(1, 3, 5, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.float32
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        for p in layer.parameters()
    )


def test_layer_matches_reference_with_several_sweeps():
    """Project-in, two sweeps along different axes in order, project-out, against the naive loop."""
    torch.manual_seed(3)
    layer = SDN(2, 3, 2, state_size=4, directions=["bottom_up", "left_right"])
    x = torch.randn(1, 3, 6, 9)
    with torch.no_grad():
        state = torch.tanh(layer.project_in(x))
        for cell, (axis, reverse) in zip(layer.cells, layer.sweeps):
            state = reference_sweep(cell, state, axis, reverse)
        expected = layer.project_out(state)
        assert (layer(x) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("spatial_dims,shape", [(2, (45, 37)), (2, (1, 6)), (3, (5, 7, 3)), (3, (1, 2, 9))])
@pytest.mark.parametrize("layer_cls", [SDN, ResSDN])
def test_any_shape_forward_backward(spatial_dims, shape, layer_cls):
    torch.manual_seed(4)
    layer = layer_cls(spatial_dims, 3, 5, state_size=6, directions=list(SDN_DIRECTIONS[spatial_dims]))
    x = torch.randn(2, 3, *shape, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 5, *shape)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    if min(shape) > 1:  # a sweep along a size-1 axis has a single line: its cell is never used
        assert all(g is not None for g in grads)


def test_defaults_and_validation():
    layer = SDN(2, 8, 8)
    assert layer.directions == DEFAULT_DIRECTIONS[2] == ("left_right", "top_down")
    assert len(layer.cells) == 2 and layer.cells[0].state_size == 150
    assert layer.project_in.kernel_size == (3, 3) and layer.project_out.kernel_size == (1, 1)
    assert SDN(3, 2, 2, state_size=4).directions == ("front_back", "top_down", "left_right")
    with pytest.raises(ValueError, match="valid"):
        SDN(2, 2, 2, directions=["front_back"])
    with pytest.raises(ValueError):
        SDN(2, 2, 2, directions=[])
    with pytest.raises(ValueError):
        SDN(2, 2, 2, directions="top_down")


def test_ressdn_mixes_conv_and_sdn():
    torch.manual_seed(5)
    layer = ResSDN(2, 3, 4, state_size=5, directions=["top_down"])
    x = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        sdn_out, gate = layer.sdn(x).chunk(2, dim=1)
        gate = torch.sigmoid(gate)
        expected = gate * layer.conv(x) + (1 - gate) * sdn_out
        assert torch.allclose(layer(x), expected)
