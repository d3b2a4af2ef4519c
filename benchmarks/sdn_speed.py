"""Speed of the spatial dependency layer: unetzoo's sweep vs per-line / per-position loops vs a 3x3 conv.

Forward + backward of one 2D SDN layer (state 150, 2 directions, ``left_right`` then ``top_down``) on a
2x150x64x64 map, with its correction stage computed three ways, of the correction stage alone (the two
sweeps, where the three differ; the layer adds its project-in 3x3 and project-out 1x1 convolutions), and of the
3x3 conv (150 -> 150) that the SDN replaces in an SDU-Net stage:

* ``unetzoo``: :class:`unetzoo.models.sdn.SDNCell` -- one batched step per line (conv over the previous
  line), hidden projections of all lines computed once before the loop, and a custom autograd function whose
  backward carries only the line-to-line gradient in its loop and computes the weight gradient of all lines in
  one batched product;
* ``per-line (authors' style)``: a loop over lines under plain autograd; each step gathers the 3 neighbours
  of every position of the previous line (channels last) and applies the GRU cell, hidden part included, to
  the whole line, as joaocarv/holistic-seg ``lib/sdn.py`` does (but for any map shape);
* ``per-position loop``: a loop over lines and over the positions of each line, the cell applied to one
  position at a time (batch and channels still batched).

All three give the same output and the same gradients (checked below). Timing: the variants run in turn
(round robin, one run of each per round), median of ``--repeats`` rounds after ``--warmup`` rounds. On CPU the
figure is the process's CPU time (with one thread, the work done, whatever other jobs on a shared machine take of
the core); wall time is shown beside it. On CUDA it is the wall time. Usage::

    PYTHONPATH=src python3 benchmarks/sdn_speed.py [--out benchmarks/results/sdn_speed.md] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
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


def time_rounds(fns: dict, repeats: dict, warmup: int, device: torch.device) -> dict:
    """Median wall time of each function, run in turn (one call of each per round)."""

    def once(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu_start

    times = {name: [] for name in fns}
    for round_ in range(warmup + max(repeats.values())):
        for name, fn in fns.items():
            if round_ < warmup and repeats[name] < max(repeats.values()):
                continue  # the slow variant: no warm-up rounds
            if round_ >= warmup and len(times[name]) >= repeats[name]:
                continue
            elapsed = once(fn)
            if round_ >= warmup:
                times[name].append(elapsed)
        print(
            f"  round {round_ + 1} (wall/CPU ms): "
            + ", ".join(f"{t[-1][0] * 1e3:.0f}/{t[-1][1] * 1e3:.0f}" for t in times.values() if t),
            flush=True,
        )
    return {name: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for name, t in times.items()}


def correction_forward(layer: SDN, state: torch.Tensor, sweep) -> torch.Tensor:
    for cell, (axis, reverse) in zip(layer.cells, layer.sweeps):
        state = cell(state, axis, reverse) if sweep is None else sweep(cell, state, axis, reverse)
    return state


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
    state = torch.tanh(torch.randn(args.batch, args.state, *args.size, device=device)).requires_grad_()

    def gradients(forward, inputs):
        layer.zero_grad(set_to_none=True)
        out = forward()
        out.square().mean().backward()
        grads = [inputs.grad] + [p.grad for p in layer.parameters() if p.grad is not None]
        inputs.grad = None
        return out.detach(), grads

    # the three sweeps agree: outputs and gradients (input and every parameter) against unetzoo's
    out_ref, grads_ref = gradients(lambda: layer(x), x)
    errors = {}
    for name, fn in [("line", per_line_sweep), ("position", per_position_sweep)]:
        out, grads = gradients(lambda: layer_forward(layer, x, fn), x)
        errors[name] = (
            (out - out_ref).abs().max().item(),
            max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, grads_ref)),
        )

    def run(forward, inputs):
        def fn():
            inputs.grad = None
            layer.zero_grad(set_to_none=True)
            conv.zero_grad(set_to_none=True)
            forward().square().mean().backward()

        return fn

    rows = {
        "SDN layer, unetzoo": run(lambda: layer(x), x),
        "SDN layer, per-line loop (authors' style)": run(lambda: layer_forward(layer, x, per_line_sweep), x),
        "SDN layer, per-position loop": run(lambda: layer_forward(layer, x, per_position_sweep), x),
        "correction stage (2 sweeps), unetzoo": run(lambda: correction_forward(layer, state, None), state),
        "correction stage (2 sweeps), per-line loop": run(
            lambda: correction_forward(layer, state, per_line_sweep), state
        ),
        "3x3 conv it replaces": run(lambda: conv(x), x),
    }
    repeats = {name: args.slow_repeats if "per-position" in name else args.repeats for name in rows}
    timed = time_rounds(rows, repeats, args.warmup, device)
    times = {name: cpu if device.type == "cpu" else wall for name, (wall, cpu) in timed.items()}

    shape = f"{args.batch}x{c}x{args.size[0]}x{args.size[1]}"
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({_cpu_name()}, {torch.get_num_threads()} threads)"
    )
    load = f"; load average before the run {_load:.1f}" if (_load := _load_average()) is not None else ""
    lines = [
        f"# SDN layer speed: forward + backward on {shape}",
        "",
        f"State {args.state}, 2 sweeps (left_right, top_down), project-in kernel 3. Device: {device_name}; torch {torch.__version__}{load}.",
        f"Variants run in turn; median of {args.repeats} rounds ({args.slow_repeats} for the per-position loop) after {args.warmup} warm-up rounds.",
        f"Against unetzoo: max |output difference| per-line {errors['line'][0]:.1e}, per-position {errors['position'][0]:.1e}; "
        f"max gradient difference (relative to the largest gradient entry, input and every parameter) per-line {errors['line'][1]:.1e}, "
        f"per-position {errors['position'][1]:.1e}.",
        "",
        f"| variant | {'CPU' if device.type == 'cpu' else 'wall'} time (ms) | per-line loop / this | vs 3x3 conv | wall time (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    conv_time = times["3x3 conv it replaces"]
    for name, t in times.items():
        baseline = times[
            "correction stage (2 sweeps), per-line loop"
            if name.startswith("correction")
            else "SDN layer, per-line loop (authors' style)"
        ]
        speedup = f"{baseline / t:.2f}x" if name != "3x3 conv it replaces" else ""
        lines.append(f"| {name} | {t * 1e3:.1f} | {speedup} | {t / conv_time:.2f}x | {timed[name][0] * 1e3:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    return table


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


if __name__ == "__main__":
    main()
