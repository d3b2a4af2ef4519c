"""Training on Lightning's Trainer: one run folder per (dataset, model, fold), resumable, DDP-ready.

Run folder (nnU-Net's outputs, so its users find their way): ``config.json`` (resolved), ``plan.json``,
``splits.json``, ``budget_width.json`` (under ``--max-minutes``: the width the budget affords), ``checkpoint_best.pt``, ``checkpoint_last.pt`` (both written to a temporary name and
renamed), ``training_log_<timestamp>.txt``, ``progress.png``, ``history.json``, Lightning's ``logs/`` (CSV, and
TensorBoard when installed) and, after training,
``validation/`` with the held-out fold predicted by the full inference procedure and ``summary.json``, then
``postprocessing.json`` (nnU-Net's per-class keep-largest-component choice on that fold) and
``validation/postprocessed/`` (the fold with that choice applied, and its ``summary.json``).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from unetzoo.config import Config
from unetzoo.data.datasets import load_dataset
from unetzoo.data.plan import Plan, make_plan, verify_against_plan
from unetzoo.data.splits import fold_split, splits_for
from unetzoo.device import device_line, resolve_device, resolve_precision
from unetzoo.errors import UnetzooError, file_error
from unetzoo.inference.precision_check import check_inference_precision
from unetzoo.io import output_folder, read_json, remove_leftovers, write_text
from unetzoo.methods import Method, build_method, method_class
from unetzoo.runfolder import RunFolder
from unetzoo.training.budget import TimeBudget
from unetzoo.training.module import SegmentationModule
from unetzoo.training.progress import close_run_logger, run_logger
from unetzoo.training.trainer import build_trainer
from unetzoo.training.validation import validate_run
from unetzoo.training.width import budget_width


def _load_or_make(path: Path, make):
    if path.is_file():
        return read_json(path)
    value = make()
    write_text(path, json.dumps(value, indent=2))
    return value


def train(data_dir: str | Path, run_dir: str | Path, config: Config, resume: bool = False) -> Path:
    """Train ``config.model`` on fold ``config.fold`` of the dataset in ``data_dir``; returns the run folder.

    ``fold="all"`` trains on every case (nnU-Net's final-model fold): no ``splits.json``, no held-out validation.
    Otherwise the folds are ``data.splits_file`` (nnU-Net's ``splits_final.json``) or made over the subjects of
    ``data.group_by`` (:mod:`unetzoo.data.splits`), and saved as ``splits.json``.

    With ``resume`` the run continues from ``checkpoint_last.pt`` (weights, optimizer, scheduler, epoch);
    ``splits.json`` and ``plan.json`` of an existing run folder are reused, never recomputed. A run that fails before
    its first checkpoint removes what it wrote (:func:`_after_failure`). ``config.json`` records the device and the
    precision the run resolved (``auto`` picks one, see :mod:`unetzoo.device`).
    """
    config.validate()
    run_dir = Path(run_dir)
    last = RunFolder(run_dir).checkpoint_file("last")
    if resume and not last.is_file():
        raise UnetzooError(f"{last}: no checkpoint to resume from")
    if not resume and last.is_file():
        raise UnetzooError(
            f"{run_dir}: already holds a trained run; pass --resume to continue it or choose another --out"
        )
    before = set(run_dir.iterdir()) if run_dir.is_dir() else None
    try:
        return _train(data_dir, run_dir, config, resume)
    except BaseException as exc:
        if rank_zero_only.rank == 0:
            _after_failure(run_dir, before, exc)
        raise


def _after_failure(run_dir: Path, before: set[Path] | None, exc: BaseException) -> None:
    """A run that failed before its first checkpoint leaves nothing a later ``--resume`` or ``report`` would take for
    a run: what it made is removed (the folder too, if it made it). One with a checkpoint stays, resumable, and its
    log says why it stopped."""
    if not run_dir.is_dir():
        return
    if RunFolder(run_dir).has_checkpoint():
        reason = str(exc) if isinstance(exc, UnetzooError) else f"{type(exc).__name__} {exc}".strip()
        run_logger(run_dir).error(f"training stopped: {reason}; `--resume` continues from the last checkpoint")
        return
    close_run_logger(run_dir)
    for path in [run_dir] if before is None else set(run_dir.iterdir()) - before:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _train(data_dir, run_dir: Path, config: Config, resume: bool) -> Path:
    run = RunFolder(run_dir)
    last = run.checkpoint_file("last")
    output_folder(run_dir)
    log = run_logger(run_dir)
    if rank_zero_only.rank == 0:
        for leftover in remove_leftovers(run_dir):
            log.info(f"removed {leftover.name}, left by an interrupted write")
    dataset = load_dataset(data_dir)
    names = [c.name for c in dataset.cases]
    if config.fold == "all":  # nnU-Net's fold "all": every case trains; pseudo Dice is on training cases
        split = {"train": sorted(names), "val": sorted(names)}
    else:
        splits_path = run.splits
        source = splits_path if splits_path.is_file() else config.data.splits_file or "the splits"
        split = fold_split(
            _load_or_make(splits_path, lambda: splits_for(names, config.data, config.seed)), config.fold, str(source)
        )
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
    plan_path = run.plan
    if plan_path.is_file():
        plan = Plan.load(plan_path)
        verify_against_plan(dataset, plan, plan_path)
    else:
        whole = method_class(config.model).whole_volumes
        plan = make_plan(
            dataset,
            dataset.cases,
            config.data.patch_size,
            config.data.target_spacing,
            config.seed,
            cap_patch=not whole,
            device=resolve_device(config.train.device).type,
        )
        plan.save(plan_path)
    log.info(plan.describe())
    saved = Config.load(run.config) if resume and run.config.is_file() else None
    if (
        saved is None
    ):  # rank 0 measures; the DDP processes Lightning starts later read its choice, as they read plan.json
        width = _load_or_make(
            run.budget_width, lambda: budget_width(config, plan, len(train_names), log).model_args.get("base_features")
        )
    else:  # the width a time budget chose is the checkpoint's
        width = saved.model_args.get("base_features")
    if width is not None:
        config.model_args = {"base_features": width, **config.model_args}
    L.seed_everything(config.seed, workers=True, verbose=False)
    method, config = build_method(config, plan, train_cases=len(train_names))
    config.data.patch_size = plan.patch_size
    if saved is not None:
        _check_resume(saved, config, run.config, log)
    n_params = sum(p.numel() for p in method.model.parameters() if p.requires_grad)
    log.info(
        f"model {config.model}: {n_params:,} parameters, patch {plan.patch_size}, spacing {plan.target_spacing}, args {config.model_args}"
    )
    train_items, val_items = dataset.frame_items(train_names), dataset.frame_items(split["val"])
    if len(train_items) + len(val_items) > len(train_names) + len(split["val"]):
        log.info(f"3D+t cases: {len(train_items)} training and {len(val_items)} validation frames")
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
            log.info(
                "fold all: no held-out cases, so no validation/ folder (evaluate a separate test set with predict + evaluate)"
            )
        else:
            _calibrate(module, dataset.frame_items(calibration_names), run_dir, log)
            validate_run(run_dir, dataset, split["val"], log)
            check_inference_precision(
                run_dir, {n: dataset.case(n).images for n in split["val"]}, config.train.device, log
            )
    return run_dir


def _check_resume(saved: Config, config: Config, path: Path, log) -> None:
    """What a resumed run may change: not the network (the checkpoint would not fit) nor the fold; a new number of
    epochs is allowed, but the poly schedule is then recomputed over it, which the log says."""
    for name in ("model", "model_args", "fold"):
        if getattr(saved, name) != getattr(config, name):
            raise file_error(
                path,
                f"--resume cannot change {name} ({getattr(saved, name)!r} -> {getattr(config, name)!r}); train into a new run folder",
            )
    if saved.train.epochs != config.train.epochs and config.train.scheduler == "poly":
        log.warning(
            f"resuming with {config.train.epochs} epochs instead of {saved.train.epochs}: the poly learning-rate schedule is "
            f"recomputed over {config.train.epochs} epochs, so the rate changes from the next epoch on"
        )


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


def _calibrate(module: SegmentationModule, items: list[dict], run_dir: Path, log) -> None:
    """Let the method choose its inference settings, with the best weights, on the calibration cases ``items``
    (kept out of training; see :func:`_calibration_split`), and record them in ``config.json`` (e.g. NISF's number
    of latent-fitting steps)."""
    from unetzoo.inference.predictor import load_weights

    if type(module.method).calibrate is Method.calibrate or not items:  # the method chooses nothing
        return
    run = RunFolder(run_dir)
    load_weights(module.method.model, run.checkpoint("best"))
    cases = module._cached(items)
    updates = module.method.calibrate([cases[i] for i in range(len(cases))], log, run_dir)
    if updates:
        module.config.method_args.update(updates)
        module.config.save(run.config)
        log.info(f"calibrated on {len(cases)} held-out training frames/volumes: {updates}")
