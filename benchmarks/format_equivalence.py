"""A dataset in another file format gives the same plan and, for one seeded training, the same held-out Dice.

Converts an MSD-layout NIfTI dataset (``data/hippocampus`` by default) to ``.mha`` under ``--work`` (SimpleITK, each
case's geometry kept), plans both copies, trains ``unet`` on fold 0 of each for a fixed number of steps with one seed
and one thread, and evaluates the held-out fold; then times reading every case in each format (``.nii.gz``, ``.nii``,
``.mha``, ``.nrrd``, ``.mhd``). Prints the tables and writes them to ``--out`` (``results.md``, ``results.json``)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/format_equivalence.py ../shared/data/hippocampus \\
        --work /tmp/formats --out benchmarks/results/formats_hippocampus --epochs 2 --iters-per-epoch 25
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from unetzoo.data.datasets import load_dataset
from unetzoo.data.plan import make_plan
from unetzoo.io import read_image, read_label, write_array

FORMATS = (".nii.gz", ".nii", ".mha", ".nrrd", ".mhd")


def convert(source: Path, target: Path, ending: str) -> Path:
    """An MSD-layout copy of ``source`` with every image and label written as ``ending`` (geometry kept)."""
    meta = json.loads((source / "dataset.json").read_text())
    training = []
    for case in load_dataset(source).cases:
        image, label = read_image(case.images), read_label(case.label)
        name = case.name + ending
        write_array(image.array[0], target / "imagesTr" / name, image.affine)
        write_array(label.array.astype(np.uint8), target / "labelsTr" / name, label.affine)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta["training"] = training
    meta.pop("test", None)
    meta["numTest"] = 0
    (target / "dataset.json").write_text(json.dumps(meta, indent=2))
    return target


def _without_ending(plan: dict) -> dict:
    """A plan without ``file_ending``, the one field that names the format."""
    return {key: value for key, value in plan.items() if key != "file_ending"}


def train_and_score(data: Path, out: Path, args) -> dict:
    """Train ``unet`` fold 0 with a fixed seed and step count; the held-out summary's mean Dice."""
    command = [
        *("unetzoo", "train", str(data), "--model", "unet", "--fold", "0", "--seed", "0", "--out", str(out)),
        *("--epochs", str(args.epochs), "--iters-per-epoch", str(args.iters_per_epoch), "--num-workers", "0"),
    ]
    subprocess.run(command, check=True)
    summary = json.loads((out / "validation" / "summary.json").read_text())
    per_case = [row["metrics"] for row in summary["metric_per_case"]]
    return {"mean_dice": summary["foreground_mean"]["Dice"], "per_case": per_case, "command": " ".join(command)}


def reading_cost(dataset: Path) -> float:
    """Median seconds to read one case (image and label) of ``dataset``."""
    times = []
    for case in load_dataset(dataset).cases:
        start = time.perf_counter()
        read_image(case.images)
        read_label(case.label)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the converted copies and runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iters-per-epoch", type=int, default=25)
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)
    shutil.rmtree(args.work, ignore_errors=True)
    copies = {ending: convert(args.data, args.work / f"data{ending}", ending) for ending in FORMATS}

    plans = {}
    for ending, copy in copies.items():
        dataset = load_dataset(copy)
        plans[ending] = make_plan(dataset, dataset.cases).to_dict()
    same_plan = {ending: _without_ending(plan) == _without_ending(plans[".nii.gz"]) for ending, plan in plans.items()}
    costs = {ending: reading_cost(copy) for ending, copy in copies.items()}
    runs = {}
    if not args.skip_training:
        for ending in (".nii.gz", ".mha"):
            runs[ending] = train_and_score(copies[ending], args.work / f"run{ending}", args)

    lines = [
        f"Dataset `{args.data.name}` ({len(load_dataset(args.data).cases)} cases) converted to each format.",
        "",
        "| format | same plan as .nii.gz (but file_ending) | median read per case (image + label) | held-out mean Dice, fold 0 |",
        "|---|---|---|---|",
    ]
    for ending in FORMATS:
        dice = f"{runs[ending]['mean_dice']:.4f}" if ending in runs else "not trained"
        lines.append(f"| `{ending}` | {same_plan[ending]} | {costs[ending] * 1000:.1f} ms | {dice} |")
    if runs:
        gap = max(
            abs(a[label]["Dice"] - b[label]["Dice"])
            for a, b in zip(runs[".nii.gz"]["per_case"], runs[".mha"]["per_case"])
            for label in a
        )
        lines += [
            "",
            f"Largest per-case, per-class Dice difference between the `.nii.gz` and `.mha` runs: {gap:.2e}.",
            "",
            "Training command (per copy):",
            "",
            f"    {runs['.nii.gz']['command']}",
        ]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text + "\n")
    record = {"same_plan": same_plan, "read_seconds": costs, "runs": runs, "python": sys.version.split()[0]}
    (args.out / "results.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
