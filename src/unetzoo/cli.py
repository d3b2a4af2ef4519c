"""The ``unetzoo`` command: a thin shell over the library's functions.

A problem with the user's input (a bad file, a wrong option) ends the command with one line on stderr
naming the file and the problem, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from unetzoo.config import BenchmarkConfig, Config, PredictConfig, options, set_options
from unetzoo.errors import UnetzooError, exit_status
from unetzoo.runfolder import RunFolder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetzoo",
        description="U-Net variants for 2D/3D medical image segmentation: train, predict, evaluate, benchmark, report.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the registered models")

    p = sub.add_parser(
        "phantom",
        help="write a synthetic dataset (organs, nuclei, vessels, ellipses: nnU-Net layout; cardiac: MSD layout)",
    )
    p.add_argument(
        "kind",
        choices=["organs", "nuclei", "vessels", "cardiac", "ellipses"],
        help="organs: 3D NIfTI volumes; nuclei: 2D RGB PNG; vessels: sparse 3D vessel trees with distractors; cardiac: 3D+t beating hearts, 4D NIfTI; ellipses: large 2D ultrasound-like PNG, one ellipse among same-texture distractors",
    )
    p.add_argument("out", type=Path)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--frames", type=int, default=8, help="cardiac: time frames per case (one cardiac cycle)")
    p.add_argument(
        "--shape",
        type=int,
        nargs="+",
        metavar="N",
        help="image shape (D H W, or H W for nuclei and ellipses; cardiac: X Y Z, Z the long axis); default per kind",
    )
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("train", help="train a model on one cross-validation fold of a dataset folder")
    p.add_argument("data", type=Path, help="dataset folder (MSD or nnU-Net v2 layout)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    _add_options(p, OPTION_TREES["train"])
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override any config field, e.g. --set augment.elastic_p=0.2 --set 'model_args.strides=[1,2,[1,2,2]]'",
    )
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint_last.pt")

    p = sub.add_parser("predict", help="predict a folder or one file with a trained run, or an ensemble of runs")
    p.add_argument(
        "run",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="run folder(s); several (e.g. the five folds) average their probabilities",
    )
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    _add_options(p, OPTION_TREES["predict"], exclusive=("predict.keep_largest", "predict.no_postprocess"))

    p = sub.add_parser(
        "export", help="save a run's network as TorchScript or ONNX, with its plan, for runtimes without unetzoo"
    )
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path, help="output folder: the network, plan.json, config.json, export.json")
    p.add_argument(
        "--format",
        default="torchscript",
        choices=["torchscript", "onnx"],
        help="default torchscript; onnx needs pip install 'unetzoo[onnx]'",
    )
    p.add_argument(
        "--checkpoint",
        choices=["best", "last"],
        help="weights to export (default: the run's reported ones, its train.select; best falls back to last)",
    )

    p = sub.add_parser("evaluate", help="compare predictions with reference labels")
    p.add_argument("pred", type=Path)
    p.add_argument("labels", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--label-ids",
        "--labels-ids",
        type=int,
        nargs="+",
        metavar="ID",
        help="label ids to evaluate, all or some (default: every nonzero value found)",
    )
    p.add_argument("--nsd-tolerance", type=float, default=1.0, help="normalised surface Dice tolerance in mm")
    p.add_argument(
        "--ignore-label",
        type=int,
        metavar="ID",
        help="label id of unlabelled voxels, which count in no metric (default: the label named 'ignore' in the "
        "dataset.json beside the labels folder, if any)",
    )
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample a prediction on another grid than its reference onto the reference's grid "
        "(nearest neighbour) instead of refusing it (NIfTI)",
    )

    p = sub.add_parser("demo", help="the whole pipeline on a synthetic dataset: phantom, train, predict, evaluate")
    p.add_argument("out", type=Path)
    p.add_argument("--model", default="unet")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto (default): CUDA when present, else CPU"
    )

    p = sub.add_parser(
        "benchmark", help="parameters, MACs, training step time and memory, inference time and memory of models"
    )
    p.add_argument(
        "--models", help="comma-separated model names, or 'all' (every registered model for the data's dimensions)"
    )
    p.add_argument(
        "--run",
        type=Path,
        nargs="+",
        help="trained run folder(s): measure each with its own config and plan (instead of --models)",
    )
    p.add_argument(
        "--data", type=Path, help="dataset folder: plan (patch, channels, classes) and median shape from the data"
    )
    _add_options(p, OPTION_TREES["benchmark"])
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="config override for every model, e.g. --set model_args.n_stages=4",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for benchmark.json, benchmark.csv, benchmark.png")

    p = sub.add_parser(
        "compare", help="train several models on the same folds with equal budgets, then rank them by accuracy and cost"
    )
    p.add_argument("data", type=Path, help="dataset folder (MSD or nnU-Net v2 layout)")
    p.add_argument(
        "--models",
        required=True,
        help="comma-separated model names, or 'all' (every registered model for the data's dimensions); also "
        "nnunet and nnunet-2d, nnU-Net v2 itself (pip install -e '.[nnunet]')",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="experiment folder: compare.json, runs/, leaderboard.md|csv|json, pareto.png",
    )
    p.add_argument(
        "--folds", default="0", help="comma-separated cross-validation folds to train and hold out (default 0)"
    )
    p.add_argument(
        "--seeds",
        help="comma-separated training seeds, each (model, fold) trained once per seed on the same folds "
        "(default: the config's seed, --set seed=N, 0)",
    )
    p.add_argument(
        "--margin",
        type=float,
        help="Dice a cheaper model may lose to the most accurate one and still be chosen, judged by the one-sided "
        "95-percent bound of their paired difference (default 0.01)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget",
        type=int,
        metavar="STEPS",
        help="optimiser steps per run, the same batch for every model (default: train.epochs x train.iters_per_epoch)",
    )
    budget.add_argument(
        "--budget-minutes", type=float, metavar="M", help="wall-clock training minutes per run instead of a step budget"
    )
    p.add_argument(
        "--executor",
        default="local",
        choices=["local", "slurm"],
        help="local: child processes of this machine; slurm: one SLURM job per run through submitit",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="local executor: runs at once (one GPU each when training on CUDA, else the CPU threads divided between them)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="config override for every run (--set train.lr=1e-3), or a SLURM setting: --set compare.slurm.partition|account|time|gpus|cpus|mem=VALUE",
    )
    p.add_argument(
        "--test",
        type=Path,
        help="held-out test folder (a dataset folder, evaluated; or a folder of images) predicted by each model's fold ensemble",
    )
    p.add_argument(
        "--external",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another tool's predictions of the held-out cases of the compared folds (CASE + the dataset's file "
        "ending, in the reference's geometry), ranked beside the models with the same statistics",
    )

    p = sub.add_parser("report", help="one page comparing trained runs: metrics, training time, cost, curves, overlays")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md and its PNGs")
    p.add_argument(
        "--cases", nargs="+", help="validation cases to overlay (default: the first --n-cases common to all runs)"
    )
    p.add_argument("--n-cases", type=int, default=3)
    p.add_argument("--axis", type=int, choices=[0, 1, 2], help="slice axis of 3D images (default: largest spacing)")
    p.add_argument("--label", type=int, help="overlay one label id only (default: all foreground classes)")
    p.add_argument(
        "--benchmark",
        type=Path,
        help="a benchmark.json whose figures to show for runs without their own (matched by model name)",
    )
    p.add_argument(
        "--data", type=Path, help="dataset folder to find the validation images in (default: validation/cases.json)"
    )

    p = sub.add_parser(
        "overlay", help="image | ground truth | prediction | errors (TP white, FP red, FN blue) of one case"
    )
    p.add_argument(
        "image",
        type=Path,
        nargs="+",
        help="image file(s) of the case (one per channel), then the label, then the prediction",
    )
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--axis", type=int, choices=[0, 1, 2], help="slice axis of 3D images (default: largest spacing)")
    p.add_argument("--slice", type=int, help="slice index (default: the slice with most reference foreground)")
    p.add_argument("--label", type=int, help="one label id only (default: all foreground classes)")
    p.add_argument("--alpha", type=float, default=0.75, help="opacity of the error colours over the image")
    return parser


def _add_options(parser, tree: type, exclusive: tuple[str, ...] = ()) -> None:
    """Add the flags of ``tree`` (Config, PredictConfig or BenchmarkConfig) to ``parser``, each from its one
    declaration (:func:`unetzoo.config.options`): flag, help and metavar from its ``RULES`` entry, type and list-ness
    from its annotation; the options named in ``exclusive`` go into one mutually exclusive group. Every flag defaults
    to None (not given: the config's value) and parses leniently: a value of the wrong type or range reaches
    ``validate``, whose one-line error names the field and the flag."""
    group = parser.add_mutually_exclusive_group() if exclusive else None
    for option in options(tree):
        target = group if option.path in exclusive else parser
        kind = option.base
        if kind is bool:
            settings = {"action": "store_true"}
        else:
            element = typing.get_args(kind)[0] if typing.get_origin(kind) is list else kind
            choices = option.checked.choices if element is str else ()
            metavar = "{" + ",".join(choices) + "}" if choices else option.rule.flag[2:].upper().replace("-", "_")
            settings = {
                "type": PARSE_TYPES.get(option.path, _lenient(element)),
                "metavar": option.rule.metavar or metavar,
            }
            if element is not kind:
                settings["nargs"] = "+"
        target.add_argument(option.rule.flag, dest=option.path, default=None, help=option.rule.help or None, **settings)


def _fold(value: str) -> int | str:
    """``--fold``: a number (its range is ``validate``'s) or ``all``; any other text is refused while parsing."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fold number or 'all', got {value!r}") from None


PARSE_TYPES = {"fold": _fold}  # the flags whose text is read otherwise than by :func:`_lenient`


def _lenient(kind):
    """The argparse type of an annotation: the text as an int or float where it is one (``int | str``: an int, else
    the text), else the text itself, so that ``validate`` refuses it in one line naming the field."""
    numbers = [k for k in (typing.get_args(kind) or (kind,)) if k in (int, float)]

    def convert(text: str):
        for number in numbers:
            try:
                return number(text)
            except ValueError:
                pass
        return text

    return convert


def _config_from_args(args):
    saved = RunFolder(args.out).config
    config = Config.load(saved) if args.resume and saved.is_file() else Config()
    set_options(config, vars(args))
    for assignment in args.set:
        config.set(assignment)
    return config


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
        write_ellipses_phantom,
        write_nuclei_phantom,
        write_organs_phantom,
        write_vessels_phantom,
    )

    writer = {
        "organs": write_organs_phantom,
        "nuclei": write_nuclei_phantom,
        "vessels": write_vessels_phantom,
        "cardiac": write_cardiac_phantom,
        "ellipses": write_ellipses_phantom,
    }[args.kind]
    dims = 2 if args.kind in ("nuclei", "ellipses") else 3
    options = {"frames": args.frames} if args.kind == "cardiac" else {}
    if args.shape:
        if len(args.shape) != dims or min(args.shape) < 8:
            raise UnetzooError(f"--shape: {args.kind} takes {dims} sizes of at least 8, got {args.shape}")
        options["shape"] = tuple(args.shape)
    print(writer(args.out, cases=args.cases, seed=args.seed, **options))


def _demo(args) -> None:
    from unetzoo.data.phantoms import write_organs_phantom
    from unetzoo.evaluation import evaluate_folder
    from unetzoo.experiments.report import make_report
    from unetzoo.inference import predict
    from unetzoo.methods import method_class
    from unetzoo.training.run import train

    config = Config(model=args.model)
    config.data.folds = 5
    config.data.num_workers = 0
    config.train.epochs = args.epochs
    config.train.iters_per_epoch = 25
    config.train.lr = 1e-3
    config.train.device = args.device
    config.data.patch_size = [32, 32, 32]
    method_class(config.validate().model)  # a bad --epochs or --model before the data is written
    data = args.out / "data"
    if not (data / "dataset.json").is_file():  # a demo run again reuses its phantom
        write_organs_phantom(data, cases=10, seed=0)
    run = train(data, args.out / "run", config, resume=RunFolder(args.out / "run").checkpoint_file("last").is_file())
    predict(run, data / "imagesTr", args.out / "predictions", device=args.device)
    summary = evaluate_folder(args.out / "predictions", data / "labelsTr", args.out / "evaluation")
    page = make_report([run], args.out / "report")
    print(
        f"demo: mean Dice over all {len(summary['cases'])} cases (training cases included) {summary['foreground_mean']['Dice']:.3f}; "
        f"held-out fold: {RunFolder(run).summary}; report: {page}"
    )


def _compare(args) -> None:
    from unetzoo.experiments.compare import compare
    from unetzoo.experiments.executors import LocalExecutor, SubmititExecutor

    config, slurm = Config(), {}
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        if key.startswith("compare.slurm."):
            slurm[key[len("compare.slurm.") :]] = value
        else:
            config.set(assignment)
    try:
        folds = [int(f) for f in args.folds.split(",")]
    except ValueError:
        raise UnetzooError(f"--folds expects comma-separated fold numbers, got {args.folds!r}") from None
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise UnetzooError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    if args.executor == "slurm":
        executor = SubmititExecutor(slurm)
    else:
        if slurm:
            raise UnetzooError("--set compare.slurm.*: SLURM settings need --executor slurm")
        executor = LocalExecutor(args.jobs, gpus=_local_gpus(config))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    compare(
        args.data,
        models,
        args.out,
        folds=folds,
        config=config,
        steps=args.budget,
        minutes=args.budget_minutes,
        executor=executor,
        test=args.test,
        seeds=seeds,
        margin=args.margin,
        external=args.external,
    )


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

        written = predict(args.run, args.input, args.output, options=set_options(PredictConfig(), vars(args)))
        print(f"{len(written)} prediction(s) in {args.output}")
    elif args.command == "export":
        from unetzoo.inference.export import export_run

        print(export_run(args.run, args.out, fmt=args.format, checkpoint=args.checkpoint))
    elif args.command == "evaluate":
        from unetzoo.data.datasets import folder_ignore_label
        from unetzoo.evaluation import evaluate_folder

        ignore = args.ignore_label if args.ignore_label is not None else folder_ignore_label(args.labels)
        if ignore is not None:
            print(f"ignore label {ignore}: the voxels it marks in the references count in no metric")
        summary = evaluate_folder(
            args.pred,
            args.labels,
            args.out,
            label_ids=args.label_ids,
            nsd_tolerance_mm=args.nsd_tolerance,
            resample=args.resample,
            ignore_label=ignore,
        )
        for label, metrics in summary["mean"].items():
            print(
                f"label {label}: "
                + "  ".join(f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in metrics.items())
            )
        print(f"summary: {args.out / 'summary.json'}")
    elif args.command == "demo":
        _demo(args)
    elif args.command == "benchmark":
        from unetzoo.experiments.benchmark import run_benchmark

        if (args.models is None) == (args.run is None):
            raise UnetzooError("give --models A,B,... or --run RUN [RUN ...]")
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        run_benchmark(
            models,
            args.out,
            args.data,
            options=set_options(BenchmarkConfig(), vars(args)),
            runs=args.run,
            sets=args.set,
        )
    elif args.command == "compare":
        _compare(args)
    elif args.command == "report":
        from unetzoo.experiments.report import make_report

        page = make_report(
            args.runs,
            args.out,
            cases=args.cases,
            n_cases=args.n_cases,
            axis=args.axis,
            benchmark=args.benchmark,
            data=args.data,
            label_id=args.label,
        )
        print(f"report: {page}")
    elif args.command == "overlay":
        from unetzoo.experiments.report import write_overlay

        if len(args.image) < 3:
            raise UnetzooError("overlay expects IMAGE [IMAGE ...] LABEL PRED")
        *images, label, pred = args.image
        print(
            write_overlay(
                images, label, pred, args.out, axis=args.axis, index=args.slice, label_id=args.label, alpha=args.alpha
            )
        )


OPTION_TREES = {"train": Config, "predict": PredictConfig, "benchmark": BenchmarkConfig}  # flags from config fields
REFERENCE_WIDTH = 100  # usage lines of docs/cli.md: wrapped here, whatever the terminal
REGENERATE = "python3 -c \"import unetzoo.cli as c; c.write_reference('docs/cli.md')\""


def reference_markdown() -> str:
    """The command-line reference (``docs/cli.md``): every subcommand's usage and arguments (flag, help, default,
    accepted values), rendered from the parser itself, so the same on every machine and terminal."""
    parser = _parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {a.dest: a.help for a in sub._choices_actions}
    lines = [
        "# Command-line reference",
        "",
        "Generated from the parser of `unetzoo` (`src/unetzoo/cli.py`) by `unetzoo.cli.reference_markdown()`; do not "
        f"edit by hand, regenerate with `{REGENERATE}` (`tests/test_cli_reference.py` checks that this page is "
        "current).",
        "",
        f"{parser.description} Every command takes `-h`/`--help`. A bad value is one line on stderr "
        "(`unetzoo: error: ...`) and exit status 2. The flags of config fields are declared once, with their range, in "
        "`RULES` (`src/unetzoo/config.py`); a default written `section.field` is that field of the run's (predict) "
        "or model's (benchmark) config.",
    ]
    for name, command in sub.choices.items():
        lines += ["", f"## unetzoo {name}", "", _cell(summaries[name]), "", "```text", *_usage(command), "```"]
        actions = [a for a in command._actions if not isinstance(a, argparse._HelpAction)]
        generated = {o.path: o for o in options(OPTION_TREES[name])} if name in OPTION_TREES else {}
        if actions:
            lines += ["", "| argument | help | default | accepts |", "| --- | --- | --- | --- |"]
            for action in actions:
                default, accepts = _default_and_values(action, generated.get(action.dest))
                cells = [_cell(f"`{_spec(action)}`"), _cell(action.help or ""), _cell(default), _cell(accepts)]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reference(path: str | Path) -> Path:
    """Write :func:`reference_markdown` to ``path`` (``docs/cli.md``)."""
    path = Path(path)
    path.write_text(reference_markdown(), encoding="utf-8")
    return path


def _metavar(action) -> str:
    if action.metavar:
        return action.metavar
    if action.choices:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _spec(action) -> str:
    """``--patch N [N ...]``, ``--overwrite``, ``RUN [RUN ...]``: an argument as usage writes it (no brackets)."""
    metavar = _metavar(action)
    values = {None: metavar, "+": f"{metavar} [{metavar} ...]", "*": f"[{metavar} ...]", "?": f"[{metavar}]"}
    if action.nargs == 0:
        value = ""
    else:
        value = values[action.nargs] if action.nargs in values else " ".join([metavar] * action.nargs)
    return " ".join(filter(None, [action.option_strings[0] if action.option_strings else "", value]))


def _usage(parser) -> list[str]:
    """The usage of a subcommand wrapped at :data:`REFERENCE_WIDTH`: options first, then positionals, as argparse."""
    groups = {a: g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    parts, done = [], set()
    ordered = [a for a in parser._actions if a.option_strings] + [a for a in parser._actions if not a.option_strings]
    for action in ordered:
        if action in done:
            continue
        group = groups.get(action)
        members = group._group_actions if group else [action]
        done.update(members)
        text = " | ".join(_spec(a) for a in members)
        optional = action.option_strings and not (group.required if group else action.required)
        parts.append(f"[{text}]" if optional else f"({text})" if group else text)
    lines, line = [], f"usage: {parser.prog}"
    indent = " " * len(line)
    for part in parts:
        if len(line) + 1 + len(part) > REFERENCE_WIDTH and line.strip() != f"usage: {parser.prog}":
            lines.append(line)
            line = indent
        line += " " + part
    return [*lines, line]


def _default_and_values(action, option) -> tuple[str, str]:
    """The default and the accepted values of an argument: a config field's from its declaration, others from
    argparse."""
    if option is not None:
        accepts = "" if option.accepts() == "a string" else option.accepts()  # any text: the help says what
        if option.rule.overrides:
            return f"`{option.rule.overrides}`", accepts
        default = option.default
        if isinstance(default, list):
            default = " ".join(map(str, default))
        return ("" if default is None or default is False or default == "" else str(default)), accepts
    default = action.default
    if default is None or default is False or default == [] or default == argparse.SUPPRESS or action.nargs == 0:
        default = ""
    accepts = "one of " + ", ".join(repr(c) for c in action.choices) if action.choices else ""
    if not accepts and action.type in (int, float) and action.nargs != 0:
        plural = action.nargs in ("+", "*")
        accepts = {int: ("an integer", "integers"), float: ("a number", "numbers")}[action.type][plural]
    return str(default), accepts


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


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
