"""Large 2D images on a CPU budget: the same time-boxed training at full and at the plan's low resolution.

Writes the ellipses phantom (``unetzoo phantom ellipses``: 540x800 ultrasound-like images, one ellipse among
same-texture distractors) as a training set and a separate test set, trains ``unet`` on every training case
(``--fold all``) for ``--minutes`` at ``data.resolution=full`` and at ``low`` (both runs at once, one thread each,
one width: ``--width``),
predicts the test images and evaluates them. Prints the table and writes it to ``--out`` (``results.md``,
``results.json``; the test summaries and ``examples.png``, four test images with both predictions, beside them)::

    python benchmarks/large_2d.py --work /tmp/large2d --out benchmarks/results/ellipses_20min --minutes 20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from unetzoo.data.phantoms import write_ellipses_phantom
from unetzoo.evaluation import evaluate_folder

RESOLUTIONS = ("full", "low")


def train_command(data: Path, run: Path, resolution: str, args) -> list[str]:
    return [
        *("unetzoo", "train", str(data), "--model", "unet", "--fold", "all", "--out", str(run)),
        *("--max-minutes", str(args.minutes), "--iters-per-epoch", "50", "--num-workers", "1", "--seed", "0"),
        *("--set", f"data.resolution={resolution}", "--set", f"model_args.base_features={args.width}"),
    ]


def run_facts(run: Path) -> dict:
    """What the run planned and did: its grid, patch, batch, width, parameters and steps."""
    plan = json.loads((run / "plan.json").read_text())
    config = json.loads((run / "config.json").read_text())
    checkpoint = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    return {
        "resolution": plan["resolution"],
        "low_factor": plan["low_factor"],
        "patch": plan["patch_size"],
        "batch": plan["batch_size"],
        "base_features": config["model_args"].get("base_features"),
        "parameters": sum(v.numel() for k, v in checkpoint["state_dict"].items() if k.startswith("model.")),
        "steps": checkpoint["global_step"],
        "precision": config["train"]["precision"],
    }


def test_scores(summary: dict) -> dict:
    dice = np.array([c["metrics"]["1"]["Dice"] for c in summary["metric_per_case"]], float)
    hd95 = np.array([c["metrics"]["1"]["HD95"] or np.nan for c in summary["metric_per_case"]], float)
    return {
        "mean_dice": float(dice.mean()),
        "median_dice": float(np.median(dice)),
        "worst_dice": float(dice.min()),
        "cases_below_0.8": int((dice < 0.8).sum()),
        "mean_hd95": float(np.nanmean(hd95)),
        "per_case_dice": dice.tolist(),
    }


def draw_examples(test: Path, predictions: dict[str, Path], dice: dict[str, list[float]], names: list[str], out: Path):
    """Test images, one per row: the smallest and the largest ellipse, a median one and low resolution's worst case;
    the reference outlined in each column, each resolution's prediction filled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unetzoo.io import read_array

    areas = [read_array(test / "labelsTr" / name, label=True)[0].sum() for name in names]
    order = [int(i) for i in np.argsort(areas)]
    rows = list(dict.fromkeys([order[0], order[len(order) // 2], int(np.argmin(dice["low"])), order[-1]]))
    figure, axes = plt.subplots(len(rows), 3, figsize=(12, 2.8 * len(rows)), squeeze=False)
    for row, index in zip(axes, rows):
        name = names[index]
        image = read_array(test / "imagesTr" / name.replace(".png", "_0000.png"))[0]
        reference = read_array(test / "labelsTr" / name, label=True)[0]
        panels = [("image", None), *((r, predictions[r] / name) for r in predictions)]
        for axis, (title, path) in zip(row, panels):
            axis.imshow(image, cmap="gray")
            if path is not None:
                mask = read_array(path, label=True)[0] > 0
                axis.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.45)
                title = f"{title}: Dice {dice[title][index]:.3f}"
            axis.contour(reference, levels=[0.5], colors="cyan", linewidths=1)
            axis.set_title(f"{name} ({int(areas[index]):,} px), {title}", fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(out, dpi=80)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data and the runs (emptied)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--train-cases", type=int, default=150)
    parser.add_argument("--test-cases", type=int, default=50)
    parser.add_argument(
        "--width",
        type=int,
        default=8,
        help="base_features of both runs: one width, so that only the grid differs (the budget's width rule, timing "
        "two runs that share the machine, can pick different ones for the same network)",
    )
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    train = write_ellipses_phantom(args.work / "train", args.train_cases, seed=0)
    test = write_ellipses_phantom(args.work / "test", args.test_cases, seed=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {r: args.work / f"run_{r}" for r in RESOLUTIONS}
    jobs = [subprocess.Popen(train_command(train, runs[r], r, args), env=env) for r in RESOLUTIONS]
    if any(job.wait() for job in jobs):
        sys.exit("a training run failed: see its log in --work")
    results, predictions = {}, {}
    for resolution, run in runs.items():
        predictions[resolution] = out = args.work / f"pred_{resolution}"
        subprocess.run(["unetzoo", "predict", str(run), str(test / "imagesTr"), str(out)], check=True, env=env)
        summary = evaluate_folder(out, test / "labelsTr", args.out / f"test_{resolution}", label_ids=[1])
        results[resolution] = {**run_facts(run), **test_scores(summary)}
    names = [Path(c["reference_file"]).name for c in summary["metric_per_case"]]
    dice = {r: results[r]["per_case_dice"] for r in results}
    draw_examples(test, predictions, dice, names, args.out / "examples.png")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [
        "| resolution | grid | patch x batch | width, parameters | steps | test Dice mean | median | worst | cases < 0.8 | HD95 mean (px) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for resolution, r in results.items():
        grid = f"{r['low_factor']:g}x coarser" if resolution == "low" else "the images' pixels"
        rows.append(
            f"| {resolution} | {grid} | {'x'.join(map(str, r['patch']))} x {r['batch']} | {r['base_features']}, "
            f"{r['parameters']:,} | {r['steps']:,} | {r['mean_dice']:.3f} | {r['median_dice']:.3f} | "
            f"{r['worst_dice']:.3f} | {r['cases_below_0.8']} / {args.test_cases} | {r['mean_hd95']:.1f} |"
        )
    command = " ".join(train_command(train, runs["low"], "low", args))
    text = "\n".join(
        [
            f"Ellipses phantom, {args.train_cases} training images (seed 0), {args.test_cases} test images (seed 1), "
            f"`unet` (base_features {args.width}), {args.minutes:g} minutes each, one thread each, both runs at once.",
            "",
            *rows,
            "",
            "Training command (low; full the same with data.resolution=full):",
            "",
            f"    OMP_NUM_THREADS=1 {command}",
        ]
    )
    (args.out / "results.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps({"results": results, "python": sys.version}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
