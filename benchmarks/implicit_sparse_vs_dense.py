"""implicit-unet: sparse (broad-then-fine) against dense inference on a trained run's validation cases.

For every validation case of the run's fold (``splits.json`` + ``config.json``), the run's full inference
procedure (preprocessing, sliding windows, smoothing, back to the input grid) is run twice: with the
broad-then-fine procedure (the default) and with every voxel decoded (``method_args.dense``). Reported per
case: Dice between the two label maps per foreground class and their mean, each mode's Dice against the
reference label, the time of ``method.predict`` in each mode, and the share of voxels the decoder visited;
then the means and the speed-up (total dense time / total sparse time).

    PYTHONPATH=src python3 benchmarks/implicit_sparse_vs_dense.py RUN DATA [--cases N] [--out FILE.md]

The acceptance bar is a mean Dice between the two of at least 0.99 on hippocampus validation cases.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = x.sum() + y.sum()
    return 1.0 if total == 0 else float(2 * (x & y).sum() / total)


def predict_timed(predictor, paths, dense: bool):
    """Labels in the input grid, seconds spent in ``method.predict``, and the decoder's visit counts."""
    method = predictor.method
    method.dense = dense
    method.decoded = {k: 0 for k in method.decoded}
    inner = method.predict
    elapsed = {}

    def timed(image, **kwargs):
        start = time.perf_counter()
        out = inner(image, **kwargs)
        elapsed["s"] = time.perf_counter() - start
        return out

    method.predict = timed
    try:
        probs = predictor.predict_probabilities(paths)
    finally:
        del method.predict  # back to the class's method
    return probs.argmax(0).numpy(), elapsed["s"], dict(method.decoded)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="trained implicit-unet run folder")
    parser.add_argument("data", type=Path, help="the dataset folder it was trained on")
    parser.add_argument("--cases", type=int, default=0, help="first N validation cases only (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, help="write the table (Markdown) here, and the numbers to the same name .json"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from unetzoo.data.datasets import load_dataset
    from unetzoo.errors import UnetzooError
    from unetzoo.inference import Predictor
    from unetzoo.io import read_label

    predictor = Predictor(args.run, device=args.device)
    if not hasattr(predictor.method, "dense_window"):
        raise UnetzooError(
            f"{args.run}: model {predictor.config.model!r} has no sparse/dense inference (implicit-unet only)"
        )
    split = json.loads((args.run / "splits.json").read_text())[predictor.config.fold]
    names = split["val"][: args.cases or None]
    dataset = load_dataset(args.data)
    labels = [int(k) for k in predictor.plan.labels if int(k) > 0]
    rows = []
    for name in names:
        case = dataset.case(name)
        sparse, t_sparse, n_sparse = predict_timed(predictor, case.images, dense=False)
        dense, t_dense, n_dense = predict_timed(predictor, case.images, dense=True)
        reference = read_label(case.label, dataset.spatial_dims).array
        row = {
            "case": name,
            "dice_sparse_vs_dense": {str(c): dice(sparse, dense, c) for c in labels},
            "dice_sparse_vs_reference": float(np.mean([dice(sparse, reference, c) for c in labels])),
            "dice_dense_vs_reference": float(np.mean([dice(dense, reference, c) for c in labels])),
            "voxels_differing": int((sparse != dense).sum()),
            "sparse_s": t_sparse,
            "dense_s": t_dense,
            "decoded_share_sparse": (n_sparse["broad"] + n_sparse["fine"]) / max(n_sparse["voxels"], 1),
        }
        row["dice_mean"] = float(np.mean(list(row["dice_sparse_vs_dense"].values())))
        rows.append(row)
        print(
            f"{name}: Dice sparse vs dense {row['dice_mean']:.4f} ({row['voxels_differing']} voxels differ), "
            f"sparse {t_sparse:.2f} s (decoded {row['decoded_share_sparse']:.1%} of voxels), dense {t_dense:.2f} s",
            flush=True,
        )
    summary = {
        "run": str(args.run),
        "model": predictor.config.model,
        "method_args": predictor.config.method_args,
        "fold": predictor.config.fold,
        "cases": len(rows),
        "threads": torch.get_num_threads(),
        "mean_dice_sparse_vs_dense": statistics.mean(r["dice_mean"] for r in rows),
        "min_dice_sparse_vs_dense": min(r["dice_mean"] for r in rows),
        "mean_dice_sparse_vs_reference": statistics.mean(r["dice_sparse_vs_reference"] for r in rows),
        "mean_dice_dense_vs_reference": statistics.mean(r["dice_dense_vs_reference"] for r in rows),
        "sparse_s_total": sum(r["sparse_s"] for r in rows),
        "dense_s_total": sum(r["dense_s"] for r in rows),
        "mean_decoded_share_sparse": statistics.mean(r["decoded_share_sparse"] for r in rows),
        "rows": rows,
    }
    summary["speedup"] = summary["dense_s_total"] / max(summary["sparse_s_total"], 1e-9)
    lines = [
        f"# implicit-unet: sparse vs dense inference ({summary['cases']} validation cases, fold {summary['fold']})",
        "",
        f"Run `{args.run}`, method_args {summary['method_args']}, {summary['threads']} CPU threads.",
        "",
        f"- Dice between sparse and dense predictions: mean {summary['mean_dice_sparse_vs_dense']:.4f}, min {summary['min_dice_sparse_vs_dense']:.4f}",
        f"- Dice against the reference: sparse {summary['mean_dice_sparse_vs_reference']:.4f}, dense {summary['mean_dice_dense_vs_reference']:.4f}",
        f"- Time in `method.predict`: sparse {summary['sparse_s_total']:.2f} s, dense {summary['dense_s_total']:.2f} s: speed-up x{summary['speedup']:.2f}",
        f"- Share of voxels the decoder visited in sparse mode (broad + fine): {summary['mean_decoded_share_sparse']:.1%}",
        "",
        "| case | Dice sparse vs dense | voxels differing | sparse s | dense s | decoded share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['case']} | {r['dice_mean']:.4f} | {r['voxels_differing']} | {r['sparse_s']:.2f} | {r['dense_s']:.2f} | {r['decoded_share_sparse']:.1%} |"
        for r in rows
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
