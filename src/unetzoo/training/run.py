"""Training on Lightning's Trainer: one run folder per (dataset, model, fold), resumable, DDP-ready.

Run folder (nnU-Net's outputs, so its users find their way): ``config.json`` (resolved; ``train.select`` names the
reported weights), ``plan.json``, ``splits.json``, ``inner_split.json`` (the fold's training cases: those that
trained, the inner validation cases, the calibration cases), ``budget_width.json`` (under ``--max-minutes``: the width
the budget affords), ``checkpoint_last.pt``, ``checkpoint_best.pt`` (where the run validates per epoch) and
``checkpoint_at_N.pt`` (``train.snapshots``: the weights at N % of the budget), all written to a temporary name and
renamed, ``training_log_<timestamp>.txt``, ``progress.png``, ``history.json``, Lightning's ``logs/`` (CSV, and
TensorBoard when installed) and, after training, ``validation/`` with the held-out fold predicted by the full
inference procedure with the reported weights and ``summary.json`` (with ``train.keep_probabilities`` each case's
class probabilities, ``CASE.npz``), each snapshot's fold and ``summary.json`` in ``validation/at_N/`` and
``snapshots.json``, then ``postprocessing.json`` (nnU-Net's per-class keep-largest-component choice on that fold) and
``validation/postprocessed/`` (the fold with that choice applied, and its ``summary.json``).

No peeking: the held-out fold is read only after training. A per-epoch validation signal, where the run needs one
(``train.select=best``, ``train.early_stop``, the plateau schedule: :func:`validates_per_epoch`), comes from an inner
validation split of the fold's training cases, drawn by subjects as the folds are and kept out of training
(:func:`unetzoo.data.splits.inner_split`); otherwise nothing is validated during training, every training case
trains, and the reported weights are the final ones (nnU-Net's practice). The plan, too, is computed from the
fold's training cases only (:func:`unetzoo.training.planning.plan_for`; the held-out files are checked before any
work, as every input is, and what that reads is dropped).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from unetzoo.config import Config
from unetzoo.data.datasets import load_dataset
from unetzoo.data.plan import Plan, verify_against_plan
from unetzoo.data.splits import fold_split, inner_split, load_splits, splits_for
from unetzoo.device import device_line, resolve_device, resolve_precision
from unetzoo.errors import Stopped, UnetzooError, file_error
from unetzoo.inference.precision_check import check_inference_precision
from unetzoo.io import output_folder, read_json, remove_leftovers, write_text
from unetzoo.methods import Method, build_method, method_class
from unetzoo.models.registry import check_model_args
from unetzoo.runfolder import RunFolder
from unetzoo.training.budget import TimeBudget
from unetzoo.training.module import SegmentationModule
from unetzoo.training.planning import check_held_out, plan_for
from unetzoo.training.progress import close_run_logger, run_logger
from unetzoo.training.trainer import build_trainer, validates_per_epoch
from unetzoo.training.validation import validate_run
from unetzoo.training.width import budget_width

# What a resumed run may change: how long it trains and on what. Any other option is the run's own (its checkpoint,
# plan and splits hold it): see resumed_config.
RESUMABLE = (
    "train.epochs",
    "train.max_minutes",
    "train.device",
    "train.devices",
    "train.precision",
    "data.num_workers",
    "data.cache_workers",
    "data.cache_dir",
)
INNER_FRACTION = 0.2  # of the fold's training subjects kept out as the inner validation split (at least one)


def train(data_dir: str | Path, run_dir: str | Path, config: Config, resume: bool = False) -> Path:
    """Train ``config.model`` on fold ``config.fold`` of the dataset in ``data_dir``; returns the run folder.

    ``fold="all"`` trains on every case (nnU-Net's final-model fold): no ``splits.json``, no held-out validation.
    Otherwise the folds are ``data.splits_file`` (nnU-Net's ``splits_final.json``) or made over the subjects of
    ``data.group_by`` (:mod:`unetzoo.data.splits`), and saved as ``splits.json``.

    With ``resume`` the run continues from ``checkpoint_last.pt`` (weights, optimizer, scheduler, epoch) with its own
    options (:func:`resumed_config`), ``splits.json`` and ``plan.json``, never recomputed. A new run makes its plan and
    splits anew, also over those that a run killed before its first checkpoint left. The options, the splits and the
    run's files are checked before anything is written. One process at a time trains into a folder
    (:meth:`RunFolder.locked`). A run that fails before its first checkpoint removes what it wrote
    (:func:`_after_failure`); SIGTERM stops it as a failure does and raises :class:`Stopped` (the command exits 143),
    resumable once it has a checkpoint. ``config.json`` records the device and the precision the run resolved
    (``auto`` picks one, see :mod:`unetzoo.device`).
    """
    config.validate()
    check_model_args(config.model, config.model_args)  # widths of the network, before the data is read
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    last = run.checkpoint_file("last")
    if resume and not last.is_file():
        raise UnetzooError(f"{last}: no checkpoint to resume from")
    if not resume and last.is_file():
        raise UnetzooError(
            f"{run_dir}: already holds a trained run; pass --resume to continue it or choose another --out"
        )
    saved = None
    if resume:
        saved = Config.load(run.require().config)
        config = resumed_config(saved, config, run.config)
    first = rank_zero_only.rank == 0  # under DDP the other processes read the files the first one wrote
    reuse = resume or not first
    dataset = load_dataset(data_dir)
    split, new_splits = _fold(run, dataset, config, reuse)
    before = set(run_dir.iterdir()) if run_dir.is_dir() else None
    with _stop_on_sigterm(), run.locked() if first else nullcontext():
        try:
            return _train(dataset, run, config, split, new_splits, saved, reuse)
        except BaseException as exc:
            if first:
                _after_failure(run_dir, before, exc)
            if isinstance(exc, Stopped):
                kept = "resume it with --resume" if run.has_checkpoint() else "it had no checkpoint: nothing was kept"
                exc.message = f"{run_dir}: training stopped ({exc}); {kept}"
            raise


def resumed_config(saved: Config, config: Config, path: Path) -> Config:
    """The config a resumed run continues with: its own, ``saved`` (its ``config.json``), with what may change on a
    resume, how long and on what it trains (:data:`RESUMABLE`), taken from ``config`` and recorded when the run
    restarts. Any other option of ``config`` that differs is refused, each named ``field: old -> new`` in one line
    naming ``path``: the checkpoint, plan and splits hold the old one. An option ``config`` leaves to the data (None,
    a model or method argument it does not set) keeps the run's value."""
    old, new = _flat(saved.to_dict()), _flat(config.to_dict())
    unset = object()
    changed = [
        f"{name}: {'(unset)' if old.get(name, unset) is unset else old[name]!r} -> {value!r}"
        for name, value in new.items()
        if name not in RESUMABLE and value is not None and old.get(name, unset) != value
    ]
    if changed:
        raise file_error(
            path,
            f"--resume cannot change {'; '.join(changed)} (the run trained with the former); resume with the run's "
            "options or train into a new --out",
        )
    merged = saved.to_dict()
    for name in RESUMABLE:
        section, field = name.split(".")
        merged[section][field] = getattr(getattr(config, section), field)
    return Config.from_dict(merged)


def _flat(tree: dict, prefix: str = "") -> dict:
    """A config as JSON holds it, by dotted name (``train.lr``, ``model_args.n_stages``)."""
    flat = {}
    for key, value in json.loads(json.dumps(tree)).items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _fold(run: RunFolder, dataset, config: Config, reuse: bool) -> tuple[dict, list | None]:
    """The fold's training and validation cases, and the splits to save (None: nothing to save). With ``reuse`` from
    the run's ``splits.json``, checked against the dataset as a ``--splits`` file is; otherwise made anew
    (``data.splits_file``, or folds over the subjects). Fold ``all``: every case, no splits."""
    names = [c.name for c in dataset.cases]
    if config.fold == "all":  # nnU-Net's fold "all": every case trains; pseudo Dice is on training cases
        return {"train": sorted(names), "val": sorted(names)}, None
    if reuse:
        return fold_split(load_splits(run.splits, names, config.data.group_by), config.fold, str(run.splits)), None
    splits = splits_for(names, config.data, config.seed)
    return fold_split(splits, config.fold, config.data.splits_file or "the splits"), splits


@contextmanager
def _stop_on_sigterm():
    """SIGTERM (``kill``, a SLURM time limit, a container stop) raises :class:`Stopped` in this process, once, wherever
    the run is (Lightning alone would end ``fit`` quietly, with exit status 0). Forked data-loading workers ignore it:
    their parent stops them. Only the main thread can take signals; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid, received = os.getpid(), []

    def stop(signum, frame):
        if os.getpid() == pid and not received:
            received.append(signum)
            raise Stopped(signum, f"received {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _after_failure(run_dir: Path, before: set[Path] | None, exc: BaseException) -> None:
    """A run that failed before its first checkpoint leaves nothing a later ``--resume`` or ``report`` would take for
    a run: what it made is removed (the folder too, if it made it). One with a checkpoint stays, resumable, and its
    log says why it stopped."""
    if not run_dir.is_dir():
        return
    if RunFolder(run_dir).has_checkpoint():
        reason = str(exc) if isinstance(exc, UnetzooError | Stopped) else f"{type(exc).__name__} {exc}".strip()
        run_logger(run_dir).error(f"training stopped: {reason}; `--resume` continues from the last checkpoint")
        return
    close_run_logger(run_dir)
    for path in [run_dir] if before is None else set(run_dir.iterdir()) - before:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _train(dataset, run: RunFolder, config: Config, split: dict, new_splits, saved: Config | None, reuse: bool) -> Path:
    """The run itself, once its options and splits are checked: ``new_splits`` (to save) and the plan and width are
    made anew unless ``reuse`` (a resumed run, or a DDP process after the first), ``saved`` is a resumed run's config."""
    run_dir, resume = run.path, saved is not None
    last = run.checkpoint_file("last")
    output_folder(run_dir)
    log = run_logger(run_dir)
    if rank_zero_only.rank == 0:
        for leftover in remove_leftovers(run_dir):
            log.info(f"removed {leftover.name}, left by an interrupted write")
    if not reuse:  # a run killed before its first checkpoint left these; this one makes its own
        for path in (run.plan, run.splits, run.budget_width):
            if path.is_file():
                path.unlink()
                log.info(f"removed {path.name}, left by a run stopped before its first checkpoint")
    if new_splits is not None:
        write_text(run.splits, json.dumps(new_splits, indent=2))
    names = [c.name for c in dataset.cases]
    train_names, calibration_names = (
        _calibration_split(split["train"], config) if config.fold != "all" else (split["train"], [])
    )
    log.info(
        f"dataset {dataset.root} ({dataset.layout} layout): {len(names)} cases; fold {config.fold}: {len(split['train'])} training, {len(split['val'])} validation"
    )
    if calibration_names:
        log.info(
            f"{len(calibration_names)} of the training cases kept out of training to calibrate {config.model}'s inference settings: {', '.join(calibration_names)}"
        )
    train_names, inner_names = _inner_split(train_names, config, log)
    if rank_zero_only.rank == 0:
        write_text(
            run.inner_split,
            json.dumps({"train": train_names, "inner_val": inner_names, "calibration": calibration_names}, indent=1),
        )
    plan_path = run.plan
    if reuse:
        plan = Plan.load(plan_path)
        verify_against_plan(dataset, plan, plan_path, [dataset.case(n) for n in split["train"]])
        check_held_out(dataset, split["train"])
    else:
        plan = plan_for(dataset, config, split["train"])  # the held-out fold stays unread
        plan.save(plan_path)
    log.info(plan.describe())
    if not resume:  # a resumed run's width is the checkpoint's, in its config
        if reuse:  # rank 0 measured; the DDP processes Lightning starts later read its choice, as they read plan.json
            width = read_json(run.budget_width)
        else:
            width = budget_width(config, plan, len(train_names), log).model_args.get("base_features")
            write_text(run.budget_width, json.dumps(width, indent=2))
        if width is not None:
            config.model_args = {"base_features": width, **config.model_args}
    L.seed_everything(config.seed, workers=True, verbose=False)
    method, config = build_method(config, plan, train_cases=len(train_names))
    config.data.patch_size = plan.patch_size
    if resume and saved.train.epochs != config.train.epochs and config.train.scheduler == "poly":
        log.warning(
            f"resuming with {config.train.epochs} epochs instead of {saved.train.epochs}: the poly learning-rate schedule is "
            f"recomputed over {config.train.epochs} epochs, so the rate changes from the next epoch on"
        )
    if resume:  # weights that no longer fit the network (config.json edited): one line naming the checkpoint
        from unetzoo.inference.predictor import load_weights

        load_weights(method.model, last)
    n_params = sum(p.numel() for p in method.model.parameters() if p.requires_grad)
    log.info(
        f"model {config.model}: {n_params:,} parameters, patch {plan.patch_size}, spacing {plan.target_spacing}, args {config.model_args}"
    )
    train_items, val_items = dataset.frame_items(train_names), dataset.frame_items(inner_names)
    if len(train_items) + len(val_items) > len(train_names) + len(inner_names):
        log.info(f"3D+t cases: {len(train_items)} training and {len(val_items)} per-epoch validation frames")
    device = resolve_device(config.train.device)
    precision, precision_line = resolve_precision(config.train.precision, device)
    log.info(f"{device_line(config.train.device)}; {precision_line}")
    config.train.device, config.train.precision = device.type, precision  # config.json records what ran, not "auto"
    budget = TimeBudget(config.train.max_minutes) if config.train.max_minutes > 0 else None
    module = SegmentationModule(method, config, plan, train_items, val_items, run_dir, budget)
    trainer = build_trainer(config, run_dir, method, budget)
    trainer.fit(module, ckpt_path=str(last) if resume else None)
    if trainer.is_global_zero:
        if budget is not None and budget.spent >= 1:
            log.info(
                f"time budget of {config.train.max_minutes:g} min spent after {trainer.global_step} steps: "
                f"learning rate {trainer.optimizers[0].param_groups[0]['lr']:.2e}"
            )
        log.info("training done")
        if config.fold == "all":
            log.warning(
                "fold all: no held-out cases, so no validation/ folder and no post-processing chosen (predictions are "
                "the network's own; to use the choice a run of one fold made on its held-out cases, copy its "
                "postprocessing.json into this folder, or set one with predict --keep-largest)"
            )
        else:
            log.info(_reported(run, config, inner_names, module.history))
            _calibrate(module, dataset.frame_items(calibration_names), run_dir, log)
            validate_run(run_dir, dataset, split["val"], log)
            check_inference_precision(
                run_dir, {n: dataset.case(n).images for n in split["val"]}, config.train.device, log
            )
    return run_dir


def _calibration_split(names: list[str], config: Config) -> tuple[list[str], list[str]]:
    """The fold's training cases without those the method keeps out of training to calibrate its inference
    settings (:meth:`Method.calibration_subjects`), and those cases: drawn with ``config.seed``, so that a resumed
    run keeps out the same ones. The validation fold stays whole and untouched by the calibration."""
    count = method_class(config.model).calibration_subjects(config.method_args)
    if count <= 0:
        return list(names), []
    if count >= len(names):
        raise UnetzooError(
            f"{config.model}: {count} training cases kept out for calibration (method_args) leave none of fold {config.fold}'s {len(names)} to train on"
        )
    held = set(random.Random(config.seed).sample(sorted(names), count))
    return [n for n in names if n not in held], sorted(held)


def _inner_split(train_names: list[str], config: Config, log) -> tuple[list[str], list[str]]:
    """The cases that train and those the per-epoch validation scores (:func:`validates_per_epoch`; none without
    it): an inner split of the fold's training cases, kept out of training (:func:`inner_split`, drawn with the
    seed: a resumed run draws the same), so that the held-out fold stays unseen until :func:`validate_run`. Fold
    ``all`` has no held-out cases: its per-epoch validation scores the training cases, as nnU-Net's."""
    if not validates_per_epoch(config):
        log.info(
            f"no per-epoch validation (train.select=last, no early stopping, no plateau schedule): all "
            f"{len(train_names)} training cases train"
        )
        return list(train_names), []
    if config.fold == "all":
        log.info("per-epoch validation (pseudo Dice) on the training cases: fold all has no held-out cases")
        return list(train_names), list(train_names)
    train, inner = inner_split(train_names, config.data.group_by, config.seed, INNER_FRACTION)
    log.info(
        f"per-epoch validation (pseudo Dice) on {len(inner)} inner validation case(s) of the fold's training cases, "
        f"kept out of training (the held-out fold is read only after training): {', '.join(inner)}"
    )
    return train, inner


def _reported(run: RunFolder, config: Config, inner_names: list[str], history: list[dict]) -> str:
    """The run log's line on the weights the held-out fold's figures report, and how they were chosen."""
    if config.train.select == "last":
        return f"reported weights: {run.checkpoint_file('last').name} (final)"
    best = max((h for h in history if "val_dice" in h), key=lambda h: h["val_dice"], default=None)
    if best is None:  # RunFolder.checkpoint falls back to the last weights, with a warning
        return "reported weights: no epoch was validated, so no checkpoint_best.pt"
    return (
        f"reported weights: {run.checkpoint_file('best').name} (highest pseudo-Dice on {len(inner_names)} inner "
        f"validation cases: {', '.join(inner_names)}; epoch {best['epoch']}, {best['val_dice']:.4f})"
    )


def _calibrate(module: SegmentationModule, items: list[dict], run_dir: Path, log) -> None:
    """Let the method choose its inference settings, with the reported weights, on the calibration cases ``items``
    (kept out of training; see :func:`_calibration_split`), and record them in ``config.json`` (e.g. NISF's number
    of latent-fitting steps)."""
    from unetzoo.inference.predictor import load_weights

    if type(module.method).calibrate is Method.calibrate or not items:  # the method chooses nothing
        return
    run = RunFolder(run_dir)
    load_weights(module.method.model, run.checkpoint())
    cases = module._cached(items)
    updates = module.method.calibrate([cases[i] for i in range(len(cases))], log, run_dir)
    if updates:
        module.config.method_args.update(updates)
        module.config.save(run.config)
        log.info(f"calibrated on {len(cases)} held-out training frames/volumes: {updates}")
