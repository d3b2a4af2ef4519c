"""Cost benchmark of any set of registered models, measured the same way for each (the papers' cost tables).

For every model, two fresh subprocesses (:mod:`unetzoo.experiments.benchmark_worker`), one per phase, so that nothing
(allocations, caches, memory peaks, compiled kernels) carries from one model or phase to the next:

* training: ``params`` (trainable parameters), ``macs`` (multiply-accumulates of one inference forward on
  one patch, batch 1, ``torch.utils.flop_counter``: convolutions and matrix products), ``train_step_s``
  (median wall time of a training step: forward, loss, backward, gradient clip, optimizer step, after
  ``warmup`` untimed steps, in the config's ``train.precision``) and ``train_peak_mem_mb`` (peak memory
  over the timed steps);
* inference: ``infer_s`` and ``infer_peak_mem_mb``: the method's full inference procedure
  (``Method.predict``: sliding windows, mirroring if configured) on one whole volume, in fp32 as
  ``unetzoo predict``.

The model's own method decides what a step and a forward are: a slice method trains on
``batch_size * patch[axis]`` one-slice patches (what its loader gives), a point-sampling method samples its
points, and so on; MACs are those of ``Method.predict_window`` on one volume patch (for a dense model, its
forward). Inputs are synthetic (random ellipsoid labels with foreground in every patch, noisy image),
the same for every model. Memory: see :mod:`unetzoo.experiments.benchmark_worker`.

Outputs: ``benchmark.json``, ``benchmark.csv``, ``benchmark.png``, and the table on stdout (each figure
with its ratio to the first model).
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from unetzoo.config import BenchmarkConfig, Config
from unetzoo.data.plan import Plan
from unetzoo.errors import UnetzooError
from unetzoo.formatting import human, shape
from unetzoo.io import output_folder, write_bytes, write_text
from unetzoo.runfolder import RunFolder

FIGURES = ("params", "macs", "train_step_s", "train_peak_mem_mb", "infer_s", "infer_peak_mem_mb")
LABELS = {
    "params": "parameters",
    "macs": "MACs / patch",
    "train_step_s": "train step (s)",
    "train_peak_mem_mb": "train peak mem (MB)",
    "infer_s": "inference (s)",
    "infer_peak_mem_mb": "infer peak mem (MB)",
}


def synthetic_plan(shape: list[int], classes: int = 2, patch: list[int] | None = None) -> Plan:
    """A plan for synthetic ``shape`` = ``[C, *spatial]`` (2D or 3D) with ``classes`` classes (background
    included); the patch defaults to the spatial shape, capped at 128 (3D) or 256 (2D) per axis."""
    if len(shape) not in (3, 4) or any(int(s) < 1 for s in shape):
        raise UnetzooError(f"--shape expects C H W (2D) or C D H W (3D) with positive sizes, got {shape}")
    channels, spatial = int(shape[0]), [int(s) for s in shape[1:]]
    if classes < 2:
        raise UnetzooError(f"--classes must be at least 2 (background and one class), got {classes}")
    return Plan.synthetic(spatial, channels, classes, _check_patch(patch, len(spatial)))


def data_plan(data_dir: str | Path, patch: list[int] | None = None) -> Plan:
    """The plan ``unetzoo train`` would compute for the dataset (patch from the data unless ``patch``)."""
    from unetzoo.data.datasets import load_dataset
    from unetzoo.data.plan import make_plan

    dataset = load_dataset(data_dir)
    return make_plan(dataset, dataset.cases, _check_patch(patch, dataset.spatial_dims))


def _check_patch(patch, dims: int):
    if not patch:
        return None
    if len(patch) != dims or any(int(p) < 1 for p in patch):
        raise UnetzooError(f"--patch {' '.join(map(str, patch))} must give {dims} positive sizes for {dims}D data")
    return [int(p) for p in patch]


def _run_worker(spec: dict, timeout: float | None = None) -> dict:
    """Run one phase in a fresh ``python -m unetzoo.experiments.benchmark_worker`` process; returns its JSON result."""
    with tempfile.TemporaryDirectory(prefix="unetzoo_bench_") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        if spec.get("threads"):
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec["threads"])
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "unetzoo.experiments.benchmark_worker", str(spec_path), str(out_path)],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s"}
        if out_path.is_file():
            return json.loads(out_path.read_text())
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        return {"error": f"worker exited with status {proc.returncode} (killed for memory?): " + " | ".join(tail)}


def _model_config(base: Config, name: str, plan: Plan) -> Config:
    config = Config.from_dict(json.loads(json.dumps(base.to_dict())))
    config.model = name
    config.data.patch_size = plan.patch_size
    if config.train.batch_size is None:
        config.train.batch_size = plan.batch_size
    return config


def _model_plan(plan: Plan, name: str, fixed_patch: bool) -> Plan:
    """The plan a model is measured on: whole-volume methods take the whole (median) volume unless the patch was
    given explicitly."""
    from unetzoo.methods import method_class

    return plan.for_whole_volumes() if method_class(name).whole_volumes and not fixed_patch else plan


def benchmark_models(
    models: list[str],
    plan: Plan,
    config: Config | None = None,
    device: str = "auto",
    warmup: int = 2,
    steps: int = 5,
    infer_shape: list[int] | None = None,
    infer_repeats: int = 1,
    threads: int | None = None,
    configs: dict[str, Config] | None = None,
    timeout: float | None = None,
    log=None,
    patch_given: bool = False,
    phases=("train", "infer"),
) -> dict:
    """Measure every model in ``models`` (registry names) on ``plan``; returns the ``benchmark.json`` dict.

    ``config`` holds the shared settings (batch size, optimizer, inference, model_args ...; default
    ``Config()``); ``configs`` may give a model its own config instead (e.g. a trained run's). The
    inference volume is ``infer_shape`` (spatial), default the plan's median shape. Whole-volume methods are
    measured on the whole median volume unless ``patch_given`` (the user fixed the patch). ``phases`` may leave
    out ``"infer"`` (its figures are then None).
    """
    import torch

    from unetzoo.device import resolve_device, resolve_precision
    from unetzoo.models import model_info

    if not models:
        raise UnetzooError("no models to benchmark")
    if warmup < 0 or steps < 1:
        raise UnetzooError(f"need warmup >= 0 and steps >= 1, got {warmup} and {steps}")
    base = config or Config()
    device = resolve_device(device).type  # auto: the device it resolves to, named in the results
    precision, precision_line = resolve_precision(base.train.precision, resolve_device(device))
    configs = configs or {}
    for name in models:
        entry = model_info(name)  # unknown name: error listing the valid ones
        if plan.spatial_dims not in entry.spatial_dims:
            raise UnetzooError(
                f"model {name!r} supports spatial_dims {entry.spatial_dims}, the benchmark data is {plan.spatial_dims}D"
            )
    infer_shape = [int(round(s)) for s in (infer_shape or plan.median_shape)]
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    log(f"benchmark: {precision_line}")
    load = load_average()  # other work on the machine before we start: times are only comparable on an idle one
    rows = []
    for index, name in enumerate(models):
        model_plan = _model_plan(plan, name, fixed_patch=bool(configs.get(name) or patch_given))
        model_config = configs.get(name) or _model_config(base, name, model_plan)
        spec = {
            "config": model_config.to_dict(),
            "plan": model_plan.to_dict(),
            "device": device,
            "threads": threads,
            "warmup": warmup,
            "steps": steps,
            "infer_shape": infer_shape,
            "infer_repeats": infer_repeats,
            "seed": model_config.seed,
        }
        row = {"model": name}
        for phase in phases:
            log(f"benchmark [{index + 1}/{len(models)}] {name}: {phase} ...")
            result = _run_worker({**spec, "phase": phase}, timeout=timeout)
            if "error" in result:
                row.setdefault("errors", {})[phase] = result["error"]
                if result.get("traceback"):
                    row.setdefault("tracebacks", {})[phase] = result["traceback"]
                log(f"benchmark {name}: {phase} failed: {result['error']}")
                continue
            row.update(result)
        for figure in FIGURES:
            row.setdefault(figure, None)
        row["batch_size"] = model_config.train.batch_size
        row["patch"] = list(model_plan.patch_size)
        rows.append(row)
    threads_used = next((r["threads"] for r in rows if r.get("threads")), threads or torch.get_num_threads())
    memory_methods = sorted({r["memory_method"] for r in rows if r.get("memory_method")})
    return {
        "models": [{"model": row["model"], **{f: row[f] for f in FIGURES}, **row} for row in rows],
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": threads_used,
        "patch": list(plan.patch_size),
        "batch_size": base.train.batch_size or plan.batch_size,
        "spatial_dims": plan.spatial_dims,
        "channels": plan.in_channels,
        "num_classes": plan.num_classes,
        "infer_shape": infer_shape,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "infer_repeats": infer_repeats,
        "memory_method": memory_methods[0] if len(memory_methods) == 1 else memory_methods,
        "optimizer": base.train.optimizer,
        "load_average": load,
        "cpu_count": os.cpu_count(),
        "precision": precision,
    }


def load_average() -> float | None:
    """The machine's 1-minute load average before a measurement (None where the platform has none): CPU times
    are only comparable on an idle machine, so every benchmark result records it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def device_name(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores"


def ratios(result: dict) -> list[dict]:
    """Per model, each figure divided by the first model's (None where either is missing or zero)."""
    first = result["models"][0]
    out = []
    for row in result["models"]:
        out.append({f: (row[f] / first[f] if row.get(f) is not None and first.get(f) else None) for f in FIGURES})
    return out


def format_table(result: dict) -> str:
    """The text table: a header naming device, threads, torch, patch and batch; every figure with its
    ratio to the first model."""
    header = (
        f"device {result['device']} ({result['device_name']}), {result['threads']} threads, torch {result['torch']}, "
        f"{result['precision']}\npatch {shape(result['patch'])}, batch {result['batch_size']}, "
        f"inference volume {shape(result['infer_shape'])} ({result['channels']} channel(s), {result['num_classes']} classes); "
        f"median of {result['timed_steps']} training steps after {result['warmup_steps']} warm-up steps; "
        f"memory: {result['memory_method']}"
    )
    columns = ["model", *[LABELS[f] for f in FIGURES]]
    table = [columns]
    for row, ratio in zip(result["models"], ratios(result)):
        cells = [row["model"]]
        for f in FIGURES:
            text = human(f, row.get(f))
            if ratio[f] is not None:
                text += f" (x{ratio[f]:.2f})"
            cells.append(text)
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = []
    for row in result["models"]:
        slices = row.get("train_patch") and row["train_patch"] != row.get("patch")
        if slices:
            notes.append(
                f"{row['model']}: a training step is {row['train_batch']} patches of {shape(row['train_patch'])}"
            )
        for phase, error in (row.get("errors") or {}).items():
            notes.append(f"{row['model']}: {phase} failed: {error}")
    load, cores = result.get("load_average"), result.get("cpu_count")
    if load is not None and cores and result["device"] == "cpu" and load > 0.5 * cores:
        notes.append(
            f"warning: the machine was busy before the benchmark (1-minute load {load} on {cores} cores): CPU times are unreliable"
        )
    return "\n".join([header, "", *lines, *(["", *notes] if notes else [])])


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``benchmark.json``, ``benchmark.csv`` and ``benchmark.png`` into ``out_dir``."""
    out_dir = output_folder(out_dir)
    paths = {"json": out_dir / "benchmark.json", "csv": out_dir / "benchmark.csv", "png": out_dir / "benchmark.png"}
    write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    buffer = _io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    context = ("device", "threads", "torch", "batch_size")
    writer.writerow(
        ["model", *FIGURES, *[f"{f}_ratio" for f in FIGURES], "patch", "train_patch", "train_batch", *context]
    )
    for row, ratio in zip(result["models"], ratios(result)):
        writer.writerow(
            [
                row["model"],
                *["" if row.get(f) is None else row[f] for f in FIGURES],
                *["" if ratio[f] is None else f"{ratio[f]:.4f}" for f in FIGURES],
                shape(row.get("patch") or result["patch"]),
                shape(row.get("train_patch") or []),
                row.get("train_batch", ""),
                *[result[c] for c in context],
            ]
        )
    write_text(paths["csv"], buffer.getvalue())
    write_bytes(paths["png"], _bar_chart(result))
    return paths


def _bar_chart(result: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = [row["model"] for row in result["models"]]
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(2, 3, figsize=(4 + 1.1 * max(3, len(names)) * 1.5, 7.5))
    for ax, figure in zip(axes.flat, FIGURES):
        values = [row.get(figure) for row in result["models"]]
        heights = [v if v is not None else 0 for v in values]
        bars = ax.bar(range(len(names)), heights, color=[colors[i % 10] for i in range(len(names))])
        for bar, value in zip(bars, values):
            ax.annotate(
                human(figure, value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_title(LABELS[figure])
        ax.set_xticks(
            range(len(names)),
            names,
            rotation=30 if len(names) > 3 else 0,
            ha="right" if len(names) > 3 else "center",
            fontsize=8,
        )
        ax.set_ylim(0, max([h for h in heights if h] or [1]) * 1.18)
        ax.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _pos, f=figure: human(f, v) if v else "0")
        )
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{result['device']} ({result['threads']} threads), torch {result['torch']}, patch {shape(result['patch'])}, "
        f"batch {result['batch_size']}, volume {shape(result['infer_shape'])}",
        fontsize=10,
    )
    fig.tight_layout()
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _with_options(config: Config, options: BenchmarkConfig, sets) -> Config:
    """``config`` with ``--batch-size``, then ``sets``, then ``--precision`` applied (so a ``--set train.batch_size``
    wins over the flag, and ``--precision`` over a ``--set train.precision``); checked."""
    if options.batch_size is not None:
        config.train.batch_size = options.batch_size
    for assignment in sets or ():
        config.set(assignment)
    if options.precision is not None:
        config.train.precision = options.precision
    return config.validate()


def _measure(options: BenchmarkConfig) -> dict:
    """The options :func:`benchmark_models` takes as keywords."""
    return dict(
        device=options.device,
        warmup=options.warmup,
        steps=options.steps,
        infer_shape=options.infer_shape,
        infer_repeats=options.infer_repeats,
        threads=options.threads,
    )


def run_benchmark(
    models,
    out_dir,
    data=None,
    *,
    options: BenchmarkConfig | None = None,
    config: Config | None = None,
    runs=None,
    sets=(),
    **fields,
) -> dict:
    """The ``unetzoo benchmark`` command: plan from ``data`` (a dataset folder) or ``options.shape`` (synthetic),
    or each trained run's own config and plan (``runs``); measure, write the outputs, print the table.

    ``options`` (:class:`unetzoo.config.BenchmarkConfig`, checked first) or its fields as keywords
    (``run_benchmark(["unet"], out, shape=[1, 32, 32, 32], steps=3)``, on top of ``options``). Its ``batch_size``
    and ``precision``, then ``sets`` (``section.field=value``), override the config of every model (of every run).
    With ``runs``, every run is measured with the configuration it was trained with, and a one-model
    ``benchmark.json`` is also written into the run folder (``unetzoo report`` shows it).
    """
    options = BenchmarkConfig.merged(options, **fields)
    shape, patch = options.shape, options.patch
    if runs:
        if models or data is not None or shape is not None or patch:
            raise UnetzooError(
                "--run takes the models, data plan and patch from the run folders: drop --models/--data/--shape/--patch"
            )
        return _benchmark_runs(runs, out_dir, options, sets)
    if (data is None) == (shape is None):
        raise UnetzooError("give exactly one of --data DIR or --shape C [D] H W")
    config = _with_options(config or Config(), options, sets)
    plan = data_plan(data, patch) if data is not None else synthetic_plan(list(shape), options.classes, patch)
    if models in ("all", ["all"]):
        from unetzoo.models import list_models, model_info

        models = [m for m in list_models() if plan.spatial_dims in model_info(m).spatial_dims]
    kwargs = _measure(options)
    if kwargs["infer_shape"] and len(kwargs["infer_shape"]) != plan.spatial_dims:
        raise UnetzooError(f"--infer-shape needs {plan.spatial_dims} sizes for {plan.spatial_dims}D data")
    if shape is not None and not kwargs["infer_shape"]:
        kwargs["infer_shape"] = list(shape)[1:]
    result = benchmark_models(list(models), plan, config=config, patch_given=bool(patch), **kwargs)
    write_outputs(result, out_dir)
    print(format_table(result))
    print(f"\nwritten: {Path(out_dir) / 'benchmark.json'}, benchmark.csv, benchmark.png")
    _raise_failures(result, out_dir)
    return result


def _raise_failures(result: dict, out_dir) -> None:
    """One line naming each failed model and phase, and the first failure's cause (e.g. a --shape too small for a
    model's downsampling, which only the model's own forward pass finds)."""
    failed = [(row["model"], row["errors"]) for row in result["models"] if row.get("errors")]
    if failed:
        model, errors = failed[0]
        phase, error = next(iter(errors.items()))
        listed = ", ".join(f"{m} ({', '.join(e)})" for m, e in failed)
        raise UnetzooError(
            f"benchmark failed for {listed}; {model} {phase}: {error.splitlines()[0][:200]} (every error and traceback "
            f"is in {Path(out_dir) / 'benchmark.json'})"
        )


def _fitting_run(run) -> RunFolder:
    """The run folder, its checkpoint (where it has one) checked to fit the model its ``config.json`` describes, so
    that the figures are the trained network's: a config edited after training is one line naming the checkpoint."""
    from unetzoo.inference.predictor import load_weights
    from unetzoo.methods import build_method

    folder = RunFolder(run).require()
    if folder.has_checkpoint():
        method, _ = build_method(Config.load(folder.config), Plan.load(folder.plan))
        load_weights(method.model, folder.checkpoint())
    return folder


def _benchmark_runs(runs, out_dir, options: BenchmarkConfig, sets=()) -> dict:
    results = []
    for folder in [_fitting_run(run) for run in runs]:  # every run checked before the first is measured
        run = folder.path
        config = _with_options(Config.load(folder.config), options, sets)
        plan = Plan.load(folder.plan)
        result = benchmark_models(
            [config.model], plan, config=config, configs={config.model: config}, **_measure(options)
        )
        result["models"][0]["run"] = str(run)
        write_text(folder.benchmark, json.dumps(result, indent=2) + "\n")
        results.append(result)
    combined = dict(results[0])
    combined["models"] = [r["models"][0] for r in results]
    for key in ("patch", "batch_size", "infer_shape", "channels", "num_classes"):
        if any(r[key] != results[0][key] for r in results):
            combined[key] = "per run"
    write_outputs(combined, out_dir)
    print(format_table(combined))
    print(
        f"\nwritten: {Path(out_dir) / 'benchmark.json'}, benchmark.csv, benchmark.png; and benchmark.json in each run folder"
    )
    _raise_failures(combined, out_dir)
    return combined
