"""implicit-unet vs unet on CPU: parameters, train-step time and peak memory, inference time (one window).

Each measurement runs in a fresh subprocess (peak memory on CPU = the process's peak resident set size minus
its size before the first step; torch keeps no CPU allocator statistics). A train step is
``method.training_loss(batch)`` + backward + AdamW step, as ``unetzoo benchmark`` does; time is the median of
``--repeats`` steps after one warm-up. Inference is ``method.predict`` of one (1, 1, *shape) volume.

    PYTHONPATH=src python3 benchmarks/implicit_profile.py --shape 96 96 64 --batch 2 [--out FILE] [--profile]

``--profile`` prints torch.profiler's top operators of one implicit-unet train step instead.
``--interleave VARIANTS`` times train steps of several variants in one process, alternating step by step, so
that every variant sees the same load (the fairest timing on a shared CPU); VARIANTS is JSON
``{"name": ["model", {model_args}, {method_args}], ...}``, the first one the reference of the ratios, e.g.

    python3 benchmarks/implicit_profile.py --threads 1 --repeats 3 --interleave \
      '{"unet": ["unet", {}, {}], "implicit": ["implicit-unet", {}, {}], "paper-density": ["implicit-unet", {}, {"points": 0.0122}]}'

The CPU of the development machine is shared: rerun before trusting a single figure (one thread is steadier).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _method(model: str, shape, unet_stages: int, method_args: dict):
    from unetzoo.config import Config
    from unetzoo.data.plan import Plan
    from unetzoo.methods import build_method

    config = Config(model=model)
    if model == "unet":
        config.model_args["n_stages"] = unet_stages
    config.method_args.update(method_args)
    return build_method(config, Plan.synthetic(list(shape), classes=3))[0]


def _batch(shape, batch: int):
    torch.manual_seed(0)
    image = torch.randn(batch, 1, *shape)
    label = torch.zeros(batch, 1, *shape)
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    r = sum(((g - s / 2) / (s / 4)) ** 2 for g, s in zip(grids, shape)).sqrt()
    label[:, 0][:, r < 1.0] = 1  # a ball of class 1 with a core of class 2: boundaries to sample
    label[:, 0][:, r < 0.5] = 2
    return {"image": image, "label": label}


def child(args) -> dict:
    torch.set_num_threads(args.threads)
    method = _method(args.model, args.shape, args.unet_stages, json.loads(args.method_args))
    model = method.model
    params = sum(p.numel() for p in model.parameters())
    if args.what == "params":
        return {"params": params}
    if args.what == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = _batch(args.shape, args.batch)
        base = _rss_mb()
        times = []
        for _ in range(1 + args.repeats):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = method.training_loss(batch)
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"params": params, "train_step_s": statistics.median(times[1:]), "train_peak_mem_mb": peak - base}
    model.eval()
    volume = _batch(args.shape, 1)["image"]
    method.predict(volume)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        method.predict(volume)
        times.append(time.perf_counter() - start)
    out = {"infer_s": statistics.median(times)}
    if hasattr(method, "last_fine_fraction"):
        out["fine_fraction"] = method.last_fine_fraction
    return out


def interleave(args) -> dict:
    from unetzoo.config import Config
    from unetzoo.data.plan import Plan
    from unetzoo.methods import build_method

    torch.set_num_threads(args.threads)
    plan = Plan.synthetic(list(args.shape), classes=3)
    methods, optimizers = {}, {}
    for name, (model, model_args, method_args) in json.loads(args.interleave).items():
        config = Config(model=model)
        config.model_args.update(model_args)
        config.method_args.update(method_args)
        methods[name] = build_method(config, plan)[0]
        methods[name].model.train()
        optimizers[name] = torch.optim.AdamW(methods[name].model.parameters(), lr=1e-4)
    batch = _batch(args.shape, args.batch)
    times = {name: [] for name in methods}
    for _ in range(1 + args.repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            method.training_loss(batch).backward()
            optimizers[name].step()
            times[name].append(time.perf_counter() - start)
        print({name: round(t[-1], 2) for name, t in times.items()}, flush=True)
    median = {name: statistics.median(t[1:]) for name, t in times.items()}
    first = next(iter(median))
    result = {"train_step_s": median, "ratios": {name: m / median[first] for name, m in median.items()}}
    print(json.dumps(result, indent=1))
    return result


def profile_step(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    method = _method("implicit-unet", args.shape, args.unet_stages, json.loads(args.method_args))
    method.model.train()
    batch = _batch(args.shape, args.batch)
    method.training_loss(batch).backward()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        method.training_loss(batch).backward()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[96, 96, 64])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--unet-stages", type=int, default=5, help="unet depth (nnU-Net's rule gives 5 for 96x96x64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method-args", default="{}", help='JSON for implicit-unet, e.g. {"points": 30000}')
    parser.add_argument("--models", default="unet,implicit-unet")
    parser.add_argument("--what", default="params,train,infer")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--interleave", help="JSON variants to time step by step in one process (see above)")
    parser.add_argument("--out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.profile:
        profile_step(args)
        return
    if args.interleave:
        result = interleave(args)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1)
        return
    results = {}
    for model in args.models.split(","):
        results[model] = {}
        for what in args.what.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--model",
                model,
                "--what",
                what,
                "--shape",
                *map(str, args.shape),
                "--batch",
                str(args.batch),
                "--unet-stages",
                str(args.unet_stages),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
                "--method-args",
                args.method_args,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[model].update(json.loads(out))
            print(model, what, results[model], flush=True)
    names = args.models.split(",")
    if len(names) == 2:
        a, b = results[names[1]], results[names[0]]
        ratios = {
            k: a[k] / b[k] for k in ("params", "train_step_s", "train_peak_mem_mb", "infer_s") if k in a and k in b
        }
        results["ratios"] = ratios
        print("ratios", names[1], "/", names[0], {k: round(v, 3) for k, v in ratios.items()})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
