"""Speed of the spatial dependency layer: vectorised sweep vs per-line / per-position loops vs a 3x3 conv.

Forward + backward of one 2D SDN layer (state 150, 2 directions, ``left_right`` then ``top_down``) on a
2x150x64x64 map, with its correction stage computed three ways, and of the 3x3 conv (150 -> 150) that
the SDN replaces in an SDU-Net stage:

* ``vectorised``: :class:`unetzoo.models.sdn.SDNCell` -- one batched step per line (conv over the
  previous line), hidden projections of all lines computed once before the loop;
* ``per-line (authors' style)``: a loop over lines; each step gathers the 3 neighbours of every
  position of the previous line (channels last) and applies the GRU cell, hidden part included, to the
  whole line, as joaocarv/holistic-seg ``lib/sdn.py`` does (but for any map shape);
* ``per-position loop``: a loop over lines and over the positions of each line, the cell applied to one
  position at a time (batch and channels still batched).

All three give the same output (checked below). Timing: median of ``--repeats`` runs after
``--warmup`` runs. Usage::

    PYTHONPATH=src python3 benchmarks/sdn_speed.py [--out benchmarks/results/sdn_speed.md] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from unetzoo.models.sdn import SDN, SDNCell


def _gates(cell: SDNCell, gi: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The GRU update from the input part ``gi`` (..., 3S) and the pre-sweep value ``h`` (..., S), channels last."""
    gh = F.linear(h, cell.weight_hh, cell.bias_hh)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return h + z * (n - h)


def per_line_sweep(cell: SDNCell, state: torch.Tensor, axis: int, reverse: bool) -> torch.Tensor:
    """Authors' style: loop over lines, the GRU cell on all positions of a line (channels last)."""
    lines = state.movedim(2 + axis, 0).transpose(2, 3).unbind(0)  # L x (B, W, S)
    size = cell.state_size
    w_ih = cell.weight_ih.permute(0, 2, 1).reshape(3 * size, 3 * size)  # inputs ordered [n_{j-1}; n_j; n_{j+1}]
    order = range(len(lines) - 1, -1, -1) if reverse else range(len(lines))
    out = [None] * len(lines)
    prev = None
    for d in order:
        h = lines[d]
        if prev is not None:
            padded = F.pad(prev, (0, 0, 1, 1))  # zero neighbour beyond both ends of the line
            x = torch.cat([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]], dim=-1)  # (B, W, 3S)
            h = _gates(cell, F.linear(x, w_ih, cell.bias_ih), h)
        out[d] = h
        prev = h
    return torch.stack(out, 0).transpose(2, 3).movedim(0, 2 + axis)


def per_position_sweep(cell: SDNCell, state: torch.Tensor, axis: int, reverse: bool) -> torch.Tensor:
    """Loop over lines and over the positions of each line; one cell update per position."""
    lines = state.movedim(2 + axis, 0).unbind(0)  # L x (B, S, W); unbind: indexing would zero-fill in backward
    width = lines[0].shape[-1]
    order = range(len(lines) - 1, -1, -1) if reverse else range(len(lines))
    out = [None] * len(lines)
    prev = None
    for d in order:
        if prev is None:
            line = lines[d]
        else:
            columns = []
            current = lines[d].unbind(-1)
            for j in range(width):
                lo, hi = max(j - 1, 0), min(j + 2, width)
                weight = cell.weight_ih[:, :, lo - j + 1 : hi - j + 1]  # the kernel taps inside the line
                gi = torch.einsum("osk,bsk->bo", weight, prev[:, :, lo:hi]) + cell.bias_ih
                columns.append(_gates(cell, gi, current[j]))
            line = torch.stack(columns, dim=-1)
        out[d] = line
        prev = line
    return torch.stack(out, 0).movedim(0, 2 + axis)


def layer_forward(layer: SDN, x: torch.Tensor, sweep) -> torch.Tensor:
    state = torch.tanh(layer.project_in(x))
    for cell, (axis, reverse) in zip(layer.cells, layer.sweeps):
        state = cell(state, axis, reverse) if sweep is None else sweep(cell, state, axis, reverse)
    return layer.project_out(state)


def time_it(fn, warmup: int, repeats: int, device: torch.device) -> float:
    def once():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        once()
    return statistics.median(once() for _ in range(repeats))


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/sdn_speed.md")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=150)
    parser.add_argument("--size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"))
    parser.add_argument("--state", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-repeats", type=int, default=3, help="repeats of the per-position loop (slow)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    c = args.channels
    layer = SDN(2, c, c, state_size=args.state, directions=["left_right", "top_down"]).to(device)
    conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device)
    x = torch.randn(args.batch, c, *args.size, device=device, requires_grad=True)

    with torch.no_grad():  # the three sweeps agree
        reference = layer(x)
        errors = {name: (layer_forward(layer, x, fn) - reference).abs().max().item() for name, fn in [("line", per_line_sweep), ("position", per_position_sweep)]}

    def run(forward):
        def fn():
            x.grad = None
            layer.zero_grad(set_to_none=True)
            conv.zero_grad(set_to_none=True)
            forward().square().mean().backward()

        return fn

    rows = [
        ("SDN layer, vectorised sweep (unetzoo)", run(lambda: layer(x)), args.repeats),
        ("SDN layer, per-line loop (authors' style)", run(lambda: layer_forward(layer, x, per_line_sweep)), args.repeats),
        ("SDN layer, per-position loop", run(lambda: layer_forward(layer, x, per_position_sweep)), args.slow_repeats),
        ("3x3 conv it replaces", run(lambda: conv(x)), args.repeats),
    ]
    times = {}
    for name, fn, repeats in rows:
        times[name] = time_it(fn, args.warmup if repeats == args.repeats else 1, repeats, device)
        print(f"  {name}: {times[name] * 1e3:.1f} ms", flush=True)
    vectorised = times[rows[0][0]]
    conv_time = times[rows[-1][0]]

    shape = f"{args.batch}x{c}x{args.size[0]}x{args.size[1]}"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [
        f"# SDN layer speed: forward + backward on {shape}",
        "",
        f"State {args.state}, 2 sweeps (left_right, top_down), project-in kernel 3. Device: {device_name}; torch {torch.__version__}.",
        f"Median of {args.repeats} runs ({args.slow_repeats} for the per-position loop) after warm-up.",
        f"Max |difference| to the vectorised output: per-line {errors['line']:.1e}, per-position {errors['position']:.1e}.",
        "",
        "| variant | time (ms) | vs vectorised | vs 3x3 conv |",
        "|---|---:|---:|---:|",
    ]
    for name, _, _ in rows:
        t = times[name]
        lines.append(f"| {name} | {t * 1e3:.1f} | {t / vectorised:.2f}x | {t / conv_time:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    return table


if __name__ == "__main__":
    main()
