"""The ``unetzoo`` command: a thin shell over the library's functions.

A problem with the user's input (a bad file, a wrong option) ends the command with one line on stderr
naming the file and the problem, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unetzoo.errors import UnetzooError, exit_status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unetzoo", description="U-Net variants for 2D/3D medical image segmentation: train, predict, evaluate, benchmark, report.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the registered models")

    p = sub.add_parser("phantom", help="write a synthetic dataset (organs, nuclei, vessels: nnU-Net layout; cardiac: MSD layout)")
    p.add_argument("kind", choices=["organs", "nuclei", "vessels", "cardiac"], help="organs: 3D NIfTI volumes; nuclei: 2D RGB PNG; vessels: sparse 3D vessel trees with distractors; cardiac: 3D+t beating hearts, 4D NIfTI")
    p.add_argument("out", type=Path)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--frames", type=int, default=8, help="cardiac: time frames per case (one cardiac cycle)")
    p.add_argument("--shape", type=int, nargs="+", metavar="N", help="image shape (D H W, or H W for nuclei; cardiac: X Y Z, Z the long axis); default per kind")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train a model on one cross-validation fold of a dataset folder")
    p.add_argument("data", type=Path, help="dataset folder (MSD or nnU-Net v2 layout)")
    p.add_argument("--model", help="model name (see `unetzoo models`); default unet")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--fold", type=_fold, help="cross-validation fold (default 0), or 'all' to train on every case (no held-out validation)")
    p.add_argument("--folds", type=int, help="number of cross-validation folds (default 5)")
    p.add_argument("--splits", metavar="FILE", help="the folds from this file (nnU-Net's splits_final.json: a list of {\"train\": [...], \"val\": [...]})")
    p.add_argument("--group-by", metavar="REGEX", help="cases whose names share this pattern's match are one subject, kept in one fold (e.g. 'patient\\d+')")
    p.add_argument("--epochs", type=int)
    p.add_argument("--iters-per-epoch", type=int)
    p.add_argument("--batch-size", type=int, help="training batch size (default: the plan's, from the step budget)")
    p.add_argument("--patch", type=int, nargs="+", metavar="N", help="patch size (D H W, or H W in 2D); default from the data")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adamw", "sgd", "adam"])
    p.add_argument("--max-minutes", type=float, help="train for this many minutes, the poly learning rate annealing to 0 over them (then validate); "
                   "the network's base_features halve until the minutes hold train.min_steps measured steps")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto (default): CUDA when present, else CPU")
    p.add_argument("--devices", type=int, help="number of devices (DDP through Lightning; CPU processes over gloo)")
    p.add_argument("--precision", help="auto (default: bf16-mixed where the device runs it natively, 16-mixed on older CUDA GPUs, else 32-true), 32-true, bf16-mixed or 16-mixed")
    p.add_argument("--num-workers", type=int, help="data-loading worker processes")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override any config field, e.g. --set augment.elastic_p=0.2 --set 'model_args.strides=[1,2,[1,2,2]]'")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint_last.pt")

    p = sub.add_parser("predict", help="predict a folder or one file with a trained run, or an ensemble of runs")
    p.add_argument("run", type=Path, nargs="+", metavar="RUN", help="run folder(s); several (e.g. the five folds) average their probabilities")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="weights of each run (default best; falls back to last)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto (default): CUDA when present, else CPU")
    p.add_argument("--overwrite", action="store_true", help="redo cases already predicted")
    p.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz with the class probabilities")
    p.add_argument("--mirror", action="store_true", default=None, help="test-time mirroring over every axis")
    p.add_argument("--overlap", type=float, help="sliding-window overlap (default from the run: 0.3)")
    p.add_argument("--upsample", type=int, default=1, metavar="F", help="write F-times finer outputs of the same extent (continuous models sample their function; others resample probabilities)")
    p.add_argument("--grid", type=Path, metavar="REF", help="write the segmentation on the grid of this NIfTI image (another plane or resolution) instead of the input's")
    p.add_argument("--precision", choices=["auto", "32-true", "bf16-mixed"], help="auto (default): fp32, or bf16 where the run's check after training found fp32's labels and a speed-up on a native-bf16 device (RUN/inference_precision.json)")
    p.add_argument("--fit-slices", type=int, default=1, metavar="K", help="models that fit at test time (nisf): fit on every K-th slice only, predict every slice")
    post = p.add_mutually_exclusive_group()
    post.add_argument("--keep-largest", metavar="K|C:K,...", help="keep the K largest connected components of every class, or per class (1:1,2:3) instead of the run's post-processing")
    post.add_argument("--no-postprocess", action="store_true", help="write the raw argmax (skip the run's postprocessing.json, chosen on the validation fold)")

    p = sub.add_parser("export", help="save a run's network as TorchScript or ONNX, with its plan, for runtimes without unetzoo")
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path, help="output folder: the network, plan.json, config.json, export.json")
    p.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"], help="default torchscript; onnx needs pip install 'unetzoo[onnx]'")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])

    p = sub.add_parser("evaluate", help="compare predictions with reference labels")
    p.add_argument("pred", type=Path)
    p.add_argument("labels", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels-ids", type=int, nargs="+", help="label ids to evaluate (default: every nonzero value found)")
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="normalised surface Dice tolerance in mm")
    p.add_argument("--resample", action="store_true", help="resample a prediction on another grid than its reference onto the reference's grid "
                                                           "(nearest neighbour) instead of refusing it (NIfTI)")

    p = sub.add_parser("demo", help="the whole pipeline on a synthetic dataset: phantom, train, predict, evaluate")
    p.add_argument("out", type=Path)
    p.add_argument("--model", default="unet")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto (default): CUDA when present, else CPU")

    p = sub.add_parser("benchmark", help="parameters, MACs, training step time and memory, inference time and memory of models")
    p.add_argument("--models", help="comma-separated model names, or 'all' (every registered model for the data's dimensions)")
    p.add_argument("--run", type=Path, nargs="+", help="trained run folder(s): measure each with its own config and plan (instead of --models)")
    p.add_argument("--data", type=Path, help="dataset folder: plan (patch, channels, classes) and median shape from the data")
    p.add_argument("--shape", type=int, nargs="+", metavar="N", help="synthetic input C D H W (3D) or C H W (2D)")
    p.add_argument("--classes", type=int, default=2, help="classes of the synthetic input, background included (default 2)")
    p.add_argument("--patch", type=int, nargs="+", metavar="N", help="patch size (default: from the data / the shape, capped)")
    p.add_argument("--infer-shape", type=int, nargs="+", metavar="N", help="spatial size of the predicted volume (default: --shape or the data's median shape)")
    p.add_argument("--batch-size", type=int, help="training batch size (default: the plan's, as training)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto (default): CUDA when present, else CPU")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    p.add_argument("--precision", help="training-step precision, as train's: auto (default), 32-true, bf16-mixed or 16-mixed; inference stays fp32")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps; their median is reported (default 5)")
    p.add_argument("--infer-repeats", type=int, default=1, help="timed whole-volume predictions; their median is reported (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override for every model, e.g. --set model_args.n_stages=4")
    p.add_argument("--out", type=Path, required=True, help="folder for benchmark.json, benchmark.csv, benchmark.png")

    p = sub.add_parser("compare", help="train several models on the same folds with equal budgets, then rank them by accuracy and cost")
    p.add_argument("data", type=Path, help="dataset folder (MSD or nnU-Net v2 layout)")
    p.add_argument("--models", required=True, help="comma-separated model names, or 'all' (every registered model for the data's dimensions)")
    p.add_argument("--out", type=Path, required=True, help="experiment folder: compare.json, runs/, leaderboard.md|csv|json, pareto.png")
    p.add_argument("--folds", default="0", help="comma-separated cross-validation folds to train and hold out (default 0)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=int, metavar="STEPS", help="optimiser steps per run, the same batch for every model (default: train.epochs x train.iters_per_epoch)")
    budget.add_argument("--budget-minutes", type=float, metavar="M", help="wall-clock training minutes per run instead of a step budget")
    p.add_argument("--executor", default="local", choices=["local", "slurm"], help="local: child processes of this machine; slurm: one SLURM job per run through submitit")
    p.add_argument("--jobs", type=int, default=1, help="local executor: runs at once (one GPU each when training on CUDA, else the CPU threads divided between them)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="config override for every run (--set train.lr=1e-3), or a SLURM setting: --set compare.slurm.partition|account|time|gpus|cpus|mem=VALUE")
    p.add_argument("--test", type=Path, help="held-out test folder (a dataset folder, evaluated; or a folder of images) predicted by each model's fold ensemble")

    p = sub.add_parser("report", help="one page comparing trained runs: metrics, training time, cost, curves, overlays")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md and its PNGs")
    p.add_argument("--cases", nargs="+", help="validation cases to overlay (default: the first --n-cases common to all runs)")
    p.add_argument("--n-cases", type=int, default=3)
    p.add_argument("--axis", type=int, choices=[0, 1, 2], help="slice axis of 3D images (default: largest spacing)")
    p.add_argument("--label", type=int, help="overlay one label id only (default: all foreground classes)")
    p.add_argument("--benchmark", type=Path, help="a benchmark.json whose figures to show for runs without their own (matched by model name)")
    p.add_argument("--data", type=Path, help="dataset folder to find the validation images in (default: validation/cases.json)")

    p = sub.add_parser("overlay", help="image | ground truth | prediction | errors (TP white, FP red, FN blue) of one case")
    p.add_argument("image", type=Path, nargs="+", help="image file(s) of the case (one per channel), then the label, then the prediction")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--axis", type=int, choices=[0, 1, 2], help="slice axis of 3D images (default: largest spacing)")
    p.add_argument("--slice", type=int, help="slice index (default: the slice with most reference foreground)")
    p.add_argument("--label", type=int, help="one label id only (default: all foreground classes)")
    p.add_argument("--alpha", type=float, default=0.75, help="opacity of the error colours over the image")
    return parser


def _fold(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fold number or 'all', got {value!r}") from None


def _config_from_args(args):
    from unetzoo.config import Config

    saved = args.out / "config.json"
    config = Config.load(saved) if args.resume and saved.is_file() else Config()
    flags = {
        "model": ("model",),
        "fold": ("fold",),
        "seed": ("seed",),
        "folds": ("data", "folds"),
        "splits": ("data", "splits_file"),
        "group_by": ("data", "group_by"),
        "patch": ("data", "patch_size"),
        "num_workers": ("data", "num_workers"),
        "epochs": ("train", "epochs"),
        "iters_per_epoch": ("train", "iters_per_epoch"),
        "batch_size": ("train", "batch_size"),
        "lr": ("train", "lr"),
        "optimizer": ("train", "optimizer"),
        "max_minutes": ("train", "max_minutes"),
        "device": ("train", "device"),
        "devices": ("train", "devices"),
        "precision": ("train", "precision"),
    }
    for flag, path in flags.items():
        value = getattr(args, flag)
        if value is not None:
            target = config
            for part in path[:-1]:
                target = getattr(target, part)
            setattr(target, path[-1], value)
    for assignment in args.set:
        config.set(assignment)
    return config


def _keep_largest(run_dir: Path, text: str | None) -> dict[int, int] | None:
    """``--keep-largest`` as rules for the run's classes; None (the run's own post-processing) without the flag."""
    if text is None:
        return None
    from unetzoo.data.plan import Plan
    from unetzoo.errors import file_error
    from unetzoo.inference.postprocessing import parse_rules

    if not (run_dir / "plan.json").is_file():
        raise file_error(run_dir / "plan.json", "missing: not a unetzoo run folder (train one with `unetzoo train`)")
    return parse_rules(text, Plan.load(run_dir / "plan.json").label_ids[1:])


def _models() -> None:
    from unetzoo.models import list_models, model_info

    rows = [(n, model_info(n)) for n in list_models()]
    width = max(len(n) for n, _ in rows)
    for name, entry in rows:
        dims = "/".join(f"{d}D" for d in entry.spatial_dims)
        print(f"{name:<{width}}  {dims:<5}  {entry.method:<8}  {entry.description}  [{entry.paper}]")


def _phantom(args) -> None:
    from unetzoo.data.phantoms import (
        write_cardiac_phantom,
        write_nuclei_phantom,
        write_organs_phantom,
        write_vessels_phantom,
    )

    writer = {"organs": write_organs_phantom, "nuclei": write_nuclei_phantom, "vessels": write_vessels_phantom, "cardiac": write_cardiac_phantom}[args.kind]
    dims = 2 if args.kind == "nuclei" else 3
    options = {"frames": args.frames} if args.kind == "cardiac" else {}
    if args.shape:
        if len(args.shape) != dims or min(args.shape) < 8:
            raise UnetzooError(f"--shape: {args.kind} takes {dims} sizes of at least 8, got {args.shape}")
        options["shape"] = tuple(args.shape)
    print(writer(args.out, cases=args.cases, seed=args.seed, **options))


def _demo(args) -> None:
    from unetzoo.config import Config
    from unetzoo.data.phantoms import write_organs_phantom
    from unetzoo.evaluation import evaluate_folder
    from unetzoo.experiments.report import make_report
    from unetzoo.inference import predict
    from unetzoo.training.run import train

    data = write_organs_phantom(args.out / "data", cases=10, seed=0)
    config = Config(model=args.model)
    config.data.folds = 5
    config.data.num_workers = 0
    config.train.epochs = args.epochs
    config.train.iters_per_epoch = 25
    config.train.lr = 1e-3
    config.train.device = args.device
    config.data.patch_size = [32, 32, 32]
    run = train(data, args.out / "run", config, resume=(args.out / "run" / "checkpoint_last.pt").is_file())
    predict(run, data / "imagesTr", args.out / "predictions", device=args.device)
    summary = evaluate_folder(args.out / "predictions", data / "labelsTr", args.out / "evaluation")
    page = make_report([run], args.out / "report")
    print(f"demo: mean Dice over all {len(summary['cases'])} cases (training cases included) {summary['foreground_mean']['Dice']:.3f}; "
          f"held-out fold: {run / 'validation' / 'summary.json'}; report: {page}")


def _compare(args) -> None:
    from unetzoo.config import Config
    from unetzoo.experiments.compare import compare
    from unetzoo.experiments.executors import LocalExecutor, SubmititExecutor

    config, slurm = Config(), {}
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        if key.startswith("compare.slurm."):
            slurm[key[len("compare.slurm."):]] = value
        else:
            config.set(assignment)
    try:
        folds = [int(f) for f in args.folds.split(",")]
    except ValueError:
        raise UnetzooError(f"--folds expects comma-separated fold numbers, got {args.folds!r}") from None
    if args.executor == "slurm":
        executor = SubmititExecutor(slurm)
    else:
        if slurm:
            raise UnetzooError("--set compare.slurm.*: SLURM settings need --executor slurm")
        executor = LocalExecutor(args.jobs, gpus=_local_gpus(config))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    compare(args.data, models, args.out, folds=folds, config=config, steps=args.budget, minutes=args.budget_minutes,
            executor=executor, test=args.test)


def _local_gpus(config) -> int:
    """GPUs for the local executor: every visible CUDA device when the runs train on CUDA, else none."""
    if config.train.device == "cpu":
        return 0
    import torch

    return torch.cuda.device_count()


def run(argv=None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "models":
        _models()
    elif args.command == "phantom":
        _phantom(args)
    elif args.command == "train":
        from unetzoo.training.run import train

        train(args.data, args.out, _config_from_args(args), resume=args.resume)
    elif args.command == "predict":
        from unetzoo.inference import predict

        written = predict(args.run, args.input, args.output, device=args.device, overwrite=args.overwrite,
                          save_probabilities=args.save_probabilities, mirror=args.mirror, overlap=args.overlap, upsample=args.upsample,
                          grid_reference=args.grid, checkpoint=args.checkpoint, fit_slices=args.fit_slices, precision=args.precision,
                          keep_largest={} if args.no_postprocess else _keep_largest(args.run[0], args.keep_largest))
        print(f"{len(written)} prediction(s) in {args.output}")
    elif args.command == "export":
        from unetzoo.inference.export import export_run

        print(export_run(args.run, args.out, fmt=args.format, checkpoint=args.checkpoint))
    elif args.command == "evaluate":
        from unetzoo.evaluation import evaluate_folder

        summary = evaluate_folder(args.pred, args.labels, args.out, label_ids=args.labels_ids, nsd_tolerance_mm=args.nsd_tolerance,
                                  resample=args.resample)
        for label, metrics in summary["mean"].items():
            print(f"label {label}: " + "  ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in metrics.items()))
        print(f"summary: {args.out / 'summary.json'}")
    elif args.command == "demo":
        _demo(args)
    elif args.command == "benchmark":
        from unetzoo.experiments.benchmark import run_benchmark

        if (args.models is None) == (args.run is None):
            raise UnetzooError("give --models A,B,... or --run RUN [RUN ...]")
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        sets = args.set + ([f"train.precision={args.precision}"] if args.precision else [])
        run_benchmark(models, args.out, data=args.data, shape=args.shape, patch=args.patch, classes=args.classes,
                      batch_size=args.batch_size, sets=sets, runs=args.run, device=args.device, warmup=args.warmup,
                      steps=args.steps, infer_shape=args.infer_shape, infer_repeats=args.infer_repeats, threads=args.threads)
    elif args.command == "compare":
        _compare(args)
    elif args.command == "report":
        from unetzoo.experiments.report import make_report

        page = make_report(args.runs, args.out, cases=args.cases, n_cases=args.n_cases, axis=args.axis, benchmark=args.benchmark,
                           data=args.data, label_id=args.label)
        print(f"report: {page}")
    elif args.command == "overlay":
        from unetzoo.experiments.report import write_overlay

        if len(args.image) < 3:
            raise UnetzooError("overlay expects IMAGE [IMAGE ...] LABEL PRED")
        *images, label, pred = args.image
        print(write_overlay(images, label, pred, args.out, axis=args.axis, index=args.slice, label_id=args.label, alpha=args.alpha))


def _quiet_library_warnings() -> None:
    """Hide the dependencies' deprecation chatter that says nothing about the user's run."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
    warnings.filterwarnings("ignore", message="Setting affine, but the applied meta contains an affine")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def main(argv=None) -> int:
    _quiet_library_warnings()
    try:
        return exit_status(lambda: run(argv))
    except KeyboardInterrupt:
        print("unetzoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
