"""Held-out slices (Stolt-Ansó et al. 2023, arXiv:2309.08643, section 4, Figure 5): predict every slice of a
volume from every K-th slice only.

For each validation case of each run: the image is cut down to slices 0, K, 2K ... along ``--axis`` (a NIfTI with
the same world geometry for the slices it keeps: affine column scaled by K), the run predicts that cut image, and
the segmentation is asked for on the full image's grid (``unetzoo predict --grid``). A voxel-grid model (``unet``)
thus segments the slices it sees, interpolated to its plan's spacing, and its probabilities are interpolated onto the
missing slices; a continuous model (``nisf``) fits its latent on the slices it sees and samples its function on the
missing ones. Dice per class is computed on the slices never seen (and, for reference, on the seen ones).

With ``--fit-slices`` a model that fits at test time (``nisf``) is given the whole image instead and fits its
latent on slices 0, K, 2K ... only (``unetzoo predict --fit-slices K``): the paper's experiment, where the seen
slices are the file's own (the cut image is resampled to the plan's spacing, which interpolates the missing
slices from the seen ones before the fit). The slice axis is mapped into the preprocessed (RAS) frame; the file's
slices are the preprocessed ones when its spacing along that axis is the plan's.

    python benchmarks/heldout_slices.py RUN [RUN ...] --data DATA --every 2 --axis 2 [--fit-slices] --out benchmarks/results/NAME

Writes ``NAME.md`` (the table) and ``NAME.json`` (per case), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def cut_slices(path: Path, every: int, axis: int, out: Path) -> Path:
    """Write slices 0, K, 2K ... of ``path`` along ``axis`` to ``out`` with the geometry they had."""
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    index = [slice(None)] * data.ndim
    index[axis] = slice(0, None, every)
    affine = image.affine.copy()
    affine[:, axis] *= every
    affine[3, 3] = 1.0
    nib.save(nib.Nifti1Image(data[tuple(index)], affine), str(out))
    return out


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict[int, float]:
    out = {}
    for c in labels:
        p, r = pred == c, ref == c
        total = p.sum() + r.sum()
        out[c] = float(2 * (p & r).sum() / total) if total else float("nan")
    return out


def run_case(predictor, case, every: int, axis: int, labels: list[int], tmp: Path) -> dict:
    from unetzoo.data.plan import ras_axes
    from unetzoo.io import read_label

    if getattr(predictor.method, "fit_slices", 1) > 1:  # fit on the seen slices of the whole image
        predictor.method.slice_axis = int(ras_axes(nib.load(str(case.images[0])).affine)[axis])
        source = case.images[0]
    else:
        source = cut_slices(case.images[0], every, axis, tmp / f"{case.name}_cut_0000.nii.gz")
        predictor.grid_reference = case.images[0]
    start = time.perf_counter()
    pred = predictor.predict_probabilities([source]).argmax(0).numpy()
    seconds = time.perf_counter() - start
    ref = read_label(case.label, 3).array
    seen = np.zeros(ref.shape[axis], bool)
    seen[::every] = True
    take = lambda a, mask: np.compress(mask, a, axis=axis)  # noqa: E731
    return {
        "case": case.name,
        "seconds": seconds,
        "unseen": dice_per_class(take(pred, ~seen), take(ref, ~seen), labels),
        "seen": dice_per_class(take(pred, seen), take(ref, seen), labels),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True, help="the dataset the runs were trained on")
    parser.add_argument("--every", type=int, default=2, help="keep every K-th slice (default 2)")
    parser.add_argument("--axis", type=int, default=2, help="slice axis of the NIfTI array (default 2)")
    parser.add_argument(
        "--fit-slices",
        action="store_true",
        help="models that fit at test time fit on the seen slices of the whole image",
    )
    parser.add_argument("--cases", type=int, default=0, help="first N validation cases only (default all)")
    parser.add_argument("--out", type=Path, required=True, help="output stem: writes OUT.md and OUT.json")
    args = parser.parse_args(argv)

    from unetzoo.config import Config
    from unetzoo.data.datasets import load_dataset
    from unetzoo.inference import Predictor
    from unetzoo.methods import method_class

    dataset = load_dataset(args.data)
    labels = sorted(k for k in dataset.labels if k)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in args.runs:
            fits = args.fit_slices and method_class(Config.load(run / "config.json").model).grad_at_inference
            predictor = Predictor(run, fit_slices=args.every if fits else 1)
            split = json.loads((run / "splits.json").read_text())[predictor.config.fold]
            names = split["val"][: args.cases or None]
            rows = [run_case(predictor, dataset.case(n), args.every, args.axis, labels, Path(tmp)) for n in names]
            results[str(run)] = {"model": predictor.config.model, "cases": rows}
            print(f"{run}: {len(rows)} cases done", flush=True)
    names = [dataset.labels[c] for c in labels]
    lines = [
        f"Held-out slices: 1 slice in {args.every} along axis {args.axis} seen, Dice on the others "
        f"(mean over cases; seen slices for reference). Command: `python benchmarks/heldout_slices.py "
        f"{' '.join(str(r) for r in args.runs)} --data {args.data} --every {args.every} --axis {args.axis}"
        f"{' --fit-slices' if args.fit_slices else ''}{f' --cases {args.cases}' if args.cases else ''}`",
        "",
        "| run | model | cases | "
        + " | ".join(f"{n} unseen" for n in names)
        + " | mean unseen | mean seen | s / case |",
        "|---|---|---|" + "---|" * (len(names) + 3),
    ]
    for run, result in results.items():
        rows = result["cases"]
        unseen = [np.nanmean([r["unseen"][c] for r in rows]) for c in labels]
        seen = np.nanmean([np.nanmean([r["seen"][c] for c in labels]) for r in rows])
        seconds = np.mean([r["seconds"] for r in rows])
        lines.append(
            f"| {run} | {result['model']} | {len(rows)} | "
            + " | ".join(f"{u:.3f}" for u in unseen)
            + f" | {np.mean(unseen):.3f} | {seen:.3f} | {seconds:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(table)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
