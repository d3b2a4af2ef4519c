"""nnU-Net v2 itself as a peer in ``compare``: the models ``nnunet`` (nnU-Net's ``3d_fullres`` on 3D data, ``2d`` on
2D data) and ``nnunet-2d`` (its ``2d`` configuration on 3D data), trained and predicted by the real ``nnunetv2``
package (Isensee et al., 2021, Nature Methods 18:203-211, arXiv:1904.08128), so that the leaderboard answers "is
any of these better than just running nnU-Net?" on the same folds, budget and statistics.

A run is an ordinary compare run folder (``runs/nnunet/seedS/foldK``) whose training is nnU-Net's:

* ``nnunet/raw/Dataset999_unetzoo``: the fold's **training** cases in nnU-Net's raw layout, as links to the user's
  files (``CASE_0000.ext``, ``CASE.ext``, its ``dataset.json``); ``nnUNet_raw``, ``nnUNet_preprocessed`` and
  ``nnUNet_results`` point into ``nnunet/`` for this run's process only, so the id cannot collide with the user's own
  datasets. The held-out cases are not in it: nnU-Net's fingerprint (its intensity statistics come from foreground
  voxels, hence from labels) never sees them, as unetzoo's plan does not. nnU-Net's own cross-validation would
  fingerprint every case; this is the one departure from running ``nnUNetv2_plan_and_preprocess`` on the whole
  dataset, and it is what makes the held-out figure unbiased.
* nnU-Net's fingerprinting, planning (its default ``ExperimentPlanner``) and preprocessing, then its trainer on fold
  ``all`` (every raw case, i.e. the compare fold's training cases; nnU-Net's per-epoch pseudo Dice then runs on
  them, as logging only) with compare's budget: a step budget as epochs x ``train.iters_per_epoch`` iterations
  under nnU-Net's own per-epoch poly schedule; a time budget by :class:`BudgetTrainer`, which stops at the
  wall-clock budget (or at ``train.epochs``, as every run) and runs the poly schedule over the time, per iteration
  (nnU-Net has no time budget). Everything
  else is nnU-Net's default: SGD with Nesterov, learning rate 1e-2, its batch and patch, augmentation, deep
  supervision, its 50 validation iterations per epoch (counted in the time). Its final weights are reported.
* nnU-Net's predictor (Gaussian sliding windows, step 0.5, mirroring) on the held-out cases and on the weights at
  1/4 and 1/2 of the budget, on the compare device; evaluated by unetzoo's ``evaluate_folder``, so every row has the
  same metrics. nnU-Net chooses its post-processing over a whole cross-validation (``find_best_configuration``),
  which compare does not run: none is applied (``postprocessing.json`` says so).
* What the leaderboard reads (``config.json``, ``history.json``, ``snapshots.json``, ``validation/``), and, from the
  benchmark job, ``benchmark.json``: parameters, MACs, the training step (nnU-Net's ``train_step`` on a batch of its
  plan) and the inference of its plan's median case at its spacing (its sliding-window predictor), timed and probed
  as :mod:`unetzoo.experiments.benchmark_worker` does for every other model. The model itself is saved as nnU-Net
  saves its own (``nnunet/results/Dataset999_unetzoo/nnUNetTrainer__nnUNetPlans__CONF/fold_all``, with its log), so
  ``nnUNetv2_predict -d 999 -c CONF -f all`` with ``nnUNet_results`` pointing there predicts with it.

nnU-Net cannot resume a run cut short before its first periodic checkpoint (every 50 epochs), so an unfinished peer
run starts again. Its held-out probabilities are not kept: the peers are not in the two-model ensembles, nor in
``--test`` (predict a test folder with ``nnUNetv2_predict`` as above).

The work runs in a child process (``python -m unetzoo.experiments.nnunet_peer train RUN``), since nnU-Net reads its
folders from the environment when it is imported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import die_with_parent, read_json, write_text
from unetzoo.runfolder import NNUNET_FOLDER, RunFolder, snapshot_name

PEERS = {"nnunet": None, "nnunet-2d": "2d"}  # name -> nnU-Net configuration (None: 3d_fullres on 3D, 2d on 2D)
DATASET_ID = 999
DATASET = f"Dataset{DATASET_ID:03d}_unetzoo"
INSTALL = 'pip install -e ".[nnunet]"'
REQUEST = "nnunet_request.json"  # what the child process trains: written by train_peer
TRAINED = "nnunet_training.json"  # steps, seconds and snapshots of nnU-Net's training
PLANS = "nnUNetPlans"
# the files nnU-Net reads as they are (TIFF needs its own spacing files, DICOM a conversion)
RAW_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".bmp")


def is_peer(model: str) -> bool:
    return model in PEERS


def configuration(model: str, spatial_dims: int) -> str:
    """The nnU-Net configuration a peer trains on data of ``spatial_dims``."""
    return PEERS[model] or ("3d_fullres" if spatial_dims == 3 else "2d")


def check_peer(model: str, spatial_dims: int) -> None:
    """One line when the peer cannot run: ``nnunet-2d`` on 2D data (``nnunet`` is nnU-Net's 2d there), or nnunetv2
    not installed."""
    if model == "nnunet-2d" and spatial_dims != 3:
        raise UnetzooError("--models: nnunet-2d is nnU-Net's 2d configuration on 3D data; on 2D data use nnunet")
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise UnetzooError(f"--models {model}: needs nnU-Net v2, an optional extra: {INSTALL}") from None


def nnunet_folders(run: RunFolder) -> dict[str, str]:
    """nnU-Net's three folders for this run (its environment variables)."""
    base = run.path / NNUNET_FOLDER
    return {
        "nnUNet_raw": str(base / "raw"),
        "nnUNet_preprocessed": str(base / "preprocessed"),
        "nnUNet_results": str(base / "results"),
    }


# ---- the parent side: the compare jobs ------------------------------------------------------------------
def train_peer(data: str, run: RunFolder, config, spatial_dims: int, train_cases: list[str], held_out: list[str]):
    """Train, predict and evaluate the peer ``config.model`` on one fold, in a child process with nnU-Net's folders
    set for it alone; a run that did not finish starts again (see the module)."""
    with run.locked():  # one process per run folder, as every run
        _clear(run)  # nnU-Net cannot resume before its first periodic checkpoint: a cut run starts again
        _request(data, run, config, spatial_dims, train_cases, held_out)
        _child(["train", str(run.path)], run)


def _clear(run: RunFolder) -> None:
    """Remove what an earlier, unfinished attempt left in the run folder (its lock stays)."""
    import shutil

    for path in run.path.iterdir():
        if path == run.lock_file:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:  # a file, or a link (to a file or a folder: the link goes, not what it points to)
            path.unlink()


def _request(data: str, run: RunFolder, config, spatial_dims: int, train_cases: list[str], held_out: list[str]):
    """What the child process trains (:data:`REQUEST`): the cases, the configuration, compare's budget and seed."""
    train = config.train
    request = {
        "data": str(data),
        "model": config.model,
        "configuration": configuration(config.model, spatial_dims),
        "dims": spatial_dims,
        "fold": config.fold,
        "seed": config.seed,
        "train_cases": train_cases,
        "held_out": held_out,
        "minutes": train.max_minutes or None,
        "epochs": train.epochs,
        "iters_per_epoch": train.iters_per_epoch,
        "snapshots": sorted(train.snapshots),
        "device": train.device,
        "config": config.to_dict(),
    }
    write_text(run.path / REQUEST, json.dumps(request, indent=1) + "\n")


def benchmark_peer(run: RunFolder, config) -> dict:
    """The peer's figures in the layout of ``unetzoo benchmark``'s result (one model), measured as it measures a
    model's: each phase in a fresh child process, with its warm-up and timed steps."""
    import tempfile

    import torch

    from unetzoo.config import BenchmarkConfig
    from unetzoo.device import resolve_device
    from unetzoo.experiments.benchmark import device_name, load_average

    options = BenchmarkConfig()
    load = load_average()  # before the phases, as for every model
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for phase in ("train", "infer"):
            out = Path(tmp) / f"{phase}.json"
            # nnU-Net's trainer writes a log where nnUNet_results says: the measurement's goes to the temporary folder
            args = [f"benchmark-{phase}", str(run.path), str(out), str(options.warmup), str(options.steps)]
            _child(args, run, nnUNet_results=tmp)
            figures.update(json.loads(out.read_text()))
    device = resolve_device(config.train.device).type
    return {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": "fp32" if device == "cpu" else "fp16 autocast (nnU-Net's)",
        **{key: figures[key] for key in ("infer_shape", "patch", "batch_size", "channels", "num_classes")},
        "warmup_steps": options.warmup,
        "timed_steps": options.steps,
        "memory_method": figures["memory_method"],
        "load_average": load,
        "cpu_count": os.cpu_count(),
        "models": [{"model": config.model, "run": str(run), **figures}],
    }


def _child(args: list[str], run: RunFolder, **overrides: str) -> None:
    env = {**os.environ, **nnunet_folders(run), **overrides}
    done = subprocess.run(
        [sys.executable, "-m", "unetzoo.experiments.nnunet_peer", *args], env=env, preexec_fn=die_with_parent
    )
    if done.returncode:
        raise UnetzooError(f"nnU-Net failed in {run.path} (exit status {done.returncode}; its output is above)")


# ---- the child side: nnU-Net's work ---------------------------------------------------------------------
def write_raw(dataset, cases: list[str], folder: Path) -> None:
    """The cases in nnU-Net's raw layout under ``folder``, as links: ``imagesTr/CASE_000C.ext``,
    ``labelsTr/CASE.ext`` and ``dataset.json``. Refused in one line where nnU-Net would need the images rewritten:
    several channels or time frames in one file, labels that are not 0..K, files of another ending or format
    (:data:`RAW_ENDINGS`)."""
    from unetzoo.io import file_ending

    labels = dataset.labels
    if sorted(labels) != list(range(len(labels))):
        raise file_error(dataset.root, f"nnU-Net needs the labels 0..K without gaps; this dataset has {sorted(labels)}")
    channels = len(dataset.channel_names)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ending = None
    for name in cases:
        case = dataset.case(name)
        if len(case.images) != channels:
            raise file_error(
                case.images[0],
                f"holds {channels} channels in one file; nnU-Net takes one file per channel (the nnU-Net layout)",
            )
        ending = ending or file_ending(case.label)
        for path in [case.label, *case.images]:
            if file_ending(path) != ending or ending not in RAW_ENDINGS or not Path(path).is_file():
                raise file_error(
                    path,
                    f"the nnunet peer links files of one ending among {', '.join(RAW_ENDINGS)} into nnU-Net's raw "
                    f"layout (this dataset's first label is {ending}); convert the dataset to NIfTI",
                )
        if ending in (".nii", ".nii.gz"):
            import nibabel as nib

            ndim = len(nib.load(str(case.images[0])).shape)
            if ndim != dataset.spatial_dims:
                raise file_error(
                    case.images[0], f"is {ndim}D; nnU-Net takes one {dataset.spatial_dims}D image per file"
                )
        for c, image in enumerate(case.images):
            (folder / "imagesTr" / f"{name}_{c:04d}{ending}").symlink_to(Path(image).resolve())
        (folder / "labelsTr" / f"{name}{ending}").symlink_to(Path(case.label).resolve())
    names = dict(labels)
    names[0] = "background"
    meta = {
        "channel_names": {str(c): n for c, n in enumerate(dataset.channel_names)},
        "labels": {names[k]: k for k in sorted(names)},
        "numTraining": len(cases),
        "file_ending": ending,
    }
    write_text(folder / "dataset.json", json.dumps(meta, indent=1) + "\n")


def image_order(shape: list[int], plans: dict, dims: int) -> list[int]:
    """A patch or shape of nnU-Net's (its axes: SimpleITK's z, y, x, permuted by the plan's ``transpose_forward``) in
    the image's axis order as unetzoo reads it (nibabel's x, y, z), so that the cost table compares like with like;
    a 2d configuration's patch on 3D data gets a 1 on its slice axis. 2D data keep nnU-Net's order."""
    if dims != 3:
        return list(shape)
    internal = [1] * (3 - len(shape)) + list(shape)
    simpleitk = [internal[axis] for axis in plans["transpose_backward"]]
    return simpleitk[::-1]


def _budget_trainer():
    """:class:`BudgetTrainer`, defined once nnunetv2 is importable (in the child process)."""
    import numpy as np
    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from torch.optim.lr_scheduler import LRScheduler

    class PolyLR(PolyLRScheduler):
        """nnU-Net's poly schedule, constructed as nnunetv2 2.6 constructs it: 2.5's constructor passes the
        ``verbose`` argument that torch's schedulers no longer take (the only change)."""

        def __init__(self, optimizer, initial_lr: float, max_steps: int, exponent: float = 0.9):
            self.optimizer, self.initial_lr, self.max_steps, self.exponent, self.ctr = (
                optimizer,
                initial_lr,
                max_steps,
                exponent,
                0,
            )
            LRScheduler.__init__(self, optimizer, -1)

    class BudgetTrainer(nnUNetTrainer):
        """nnU-Net's trainer under compare's budget: a time budget stops training at ``budget_s`` seconds of its
        loop (validation passes included) and sets the poly learning rate ``lr0 (1 - t / budget)^0.9`` before every
        iteration; a step budget keeps nnU-Net's per-epoch poly over its epochs. The weights at each fraction of
        ``snapshots`` are saved as ``checkpoint_at_N.pth``. Its constructor is nnU-Net's (its checkpoints record the
        constructor's arguments), so the budget is set as attributes."""

        budget_s: float | None = None
        snapshots: tuple = ()

        def progress(self) -> float:
            """The fraction of the budget spent: of the steps of ``num_epochs``, or of the time, whichever is ahead
            (a time budget also ends at the epochs, as unetzoo's ``train.max_minutes`` does)."""
            steps = self.steps / (self.num_epochs * self.num_iterations_per_epoch)
            return max(steps, (time.perf_counter() - self.started) / self.budget_s) if self.budget_s else steps

        def run_training(self):
            self.on_train_start()
            self.started, self.steps, self.taken = time.perf_counter(), 0, []
            for _ in range(self.current_epoch, self.num_epochs):
                self.on_epoch_start()
                self.on_train_epoch_start()
                outputs, cut = [], False
                for _ in range(self.num_iterations_per_epoch):
                    outputs.append(self.train_step(next(self.dataloader_train)))
                    self.steps += 1
                    elapsed, progress = time.perf_counter() - self.started, self.progress()
                    for fraction in self.snapshots:
                        if progress >= fraction and all(t["fraction"] != fraction for t in self.taken):
                            name = f"checkpoint_{snapshot_name(fraction)}.pth"
                            self.save_checkpoint(str(Path(self.output_folder) / name))
                            self.taken.append(
                                {"fraction": fraction, "checkpoint": name, "steps": self.steps, "seconds": elapsed}
                            )
                    if self.budget_s and elapsed >= self.budget_s:
                        cut = True
                        break
                self.on_train_epoch_end(outputs)
                if cut:  # the clock ended this epoch: its validation pass (pseudo Dice, logging only) is skipped
                    self.logger.log("epoch_end_timestamps", time.time(), self.current_epoch)
                    self.current_epoch += 1
                    break
                with torch.no_grad():
                    self.on_validation_epoch_start()
                    val = [
                        self.validation_step(next(self.dataloader_val))
                        for _ in range(self.num_val_iterations_per_epoch)
                    ]
                    self.on_validation_epoch_end(val)
                self.on_epoch_end()
                if self.budget_s and self.progress() >= 1:  # the clock ran out during the validation pass
                    break
            self.seconds = time.perf_counter() - self.started
            if self.budget_s:  # nnU-Net logs the per-epoch rate; the one used was set before every step
                self.print_to_log_file(
                    f"time budget of {self.budget_s:g} s spent after {self.steps} steps ({self.seconds:.0f} s): the "
                    f"learning rate followed {self.initial_lr:g} (1 - t / budget)^0.9 step by step"
                )
            self.on_train_end()

        def configure_optimizers(self):
            """nnU-Net's own: SGD, momentum 0.99, Nesterov, its weight decay, poly over its epochs."""
            optimizer = torch.optim.SGD(
                self.network.parameters(),
                self.initial_lr,
                weight_decay=self.weight_decay,
                momentum=0.99,
                nesterov=True,
            )
            return optimizer, PolyLR(optimizer, self.initial_lr, self.num_epochs)

        def train_step(self, batch: dict) -> dict:
            if self.budget_s:
                for group in self.optimizer.param_groups:
                    group["lr"] = self.initial_lr * (1 - min(self.progress(), 1.0)) ** 0.9
            return super().train_step(batch)

    # recorded as nnU-Net's own trainer (its network, loss and inference are unchanged): the results folder is then
    # nnUNetTrainer__nnUNetPlans__CONF and nnUNetv2_predict finds the model as it finds any nnU-Net model
    BudgetTrainer.__name__ = BudgetTrainer.__qualname__ = "nnUNetTrainer"
    np.seterr(all="ignore")
    return BudgetTrainer


def _child_train(run: RunFolder) -> None:
    """Everything nnU-Net does for one run, then the files the leaderboard reads."""
    import random

    import numpy as np
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    from unetzoo.data.datasets import load_dataset
    from unetzoo.device import resolve_device

    request = read_json(run.path / REQUEST)
    dataset = load_dataset(request["data"])
    folders = {k: Path(v) for k, v in nnunet_folders(run).items()}
    write_raw(dataset, request["train_cases"], folders["nnUNet_raw"] / DATASET)
    threads = max(1, torch.get_num_threads())  # the job's (OMP_NUM_THREADS)
    conf = request["configuration"]
    augmentation = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = augmentation or str(threads)  # the planner sets torch's threads to it
    extract_fingerprints([DATASET_ID], num_processes=threads, check_dataset_integrity=True, clean=True, verbose=False)
    plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], PLANS, configurations=(conf,), num_processes=(threads,))

    # data augmentation in the training process when the job has one thread (nnU-Net's default: 12 processes)
    os.environ["nnUNet_n_proc_DA"] = augmentation or str(threads - 1)
    seed = int(request["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = resolve_device(request["device"])
    plans = read_json(folders["nnUNet_preprocessed"] / DATASET / f"{PLANS}.json")
    dataset_json = read_json(folders["nnUNet_preprocessed"] / DATASET / "dataset.json")
    trainer = _budget_trainer()(plans, conf, "all", dataset_json, device=device)
    trainer.num_epochs = int(request["epochs"])
    if request["minutes"]:
        trainer.budget_s = float(request["minutes"]) * 60
    trainer.num_iterations_per_epoch = int(request["iters_per_epoch"])
    trainer.snapshots = tuple(request["snapshots"])
    trainer.run_training()
    logged = trainer.logger.my_fantastic_logging
    starts, ends = logged["epoch_start_timestamps"], logged["epoch_end_timestamps"]
    history = [
        {"epoch": e, "epoch_time_s": ends[e] - starts[e], "train_loss": float(logged["train_losses"][e])}
        for e in range(min(len(starts), len(ends), len(logged["train_losses"])))
    ]
    if history:
        history[-1]["steps"] = trainer.steps
    write_text(run.history, json.dumps(history, indent=1) + "\n")
    trained = {
        "steps": trainer.steps,
        "seconds": trainer.seconds,
        "snapshots": trainer.taken,
        "folder": trainer.output_folder,
    }
    write_text(run.path / TRAINED, json.dumps(trained, indent=1) + "\n")
    _write_config(run, request, trainer)
    _validate(run, request, dataset, trained, device)


def _write_config(run: RunFolder, request: dict, trainer) -> None:
    """``config.json`` as the leaderboard reads it: the compare run's config with nnU-Net's batch and patch, its
    final weights reported."""
    config = dict(request["config"])
    patch = image_order(list(trainer.configuration_manager.patch_size), trainer.plans_manager.plans, request["dims"])
    config["data"] = {**config["data"], "patch_size": patch}
    config["train"] = {**config["train"], "batch_size": trainer.batch_size, "select": "last"}
    config["model_args"] = {"configuration": request["configuration"], "nnunetv2": _version()}
    write_text(run.config, json.dumps(config, indent=1) + "\n")


def _version() -> str:
    from importlib.metadata import version

    return version("nnunetv2")


def _predictor(folder: Path, checkpoint: str, device):
    """nnU-Net's predictor with its defaults (Gaussian sliding windows, step 0.5, mirroring) on the weights of
    ``checkpoint`` in the trainer's output ``folder``."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base = folder.parent
    plans_manager = PlansManager(read_json(base / "plans.json"))
    dataset_json = read_json(base / "dataset.json")
    saved = torch.load(folder / checkpoint, map_location="cpu", weights_only=False)
    conf = saved["init_args"]["configuration"]
    manager = plans_manager.get_configuration(conf)
    network = _budget_trainer().build_network_architecture(
        manager.network_arch_class_name,
        manager.network_arch_init_kwargs,
        manager.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans_manager, manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    predictor = nnUNetPredictor(device=device, verbose=False, allow_tqdm=False)
    predictor.manual_initialization(
        network,
        plans_manager,
        manager,
        [saved["network_weights"]],
        dataset_json,
        saved["trainer_name"],
        saved["inference_allowed_mirroring_axes"],
    )
    return predictor


def _validate(run: RunFolder, request: dict, dataset, trained: dict, device) -> None:
    """The held-out cases predicted with the final weights and each snapshot (``trained``: what the training
    recorded), evaluated like every run's."""
    from unetzoo.evaluation import evaluate_folder, link_references

    held_out = {name: dataset.case(name) for name in request["held_out"]}
    inputs = [[str(p) for p in case.images] for case in held_out.values()]
    references = link_references({n: c.label for n, c in held_out.items()}, run.validation_labels)
    labels = sorted(k for k in dataset.class_labels if k)
    folder = Path(trained["folder"])
    entries = []
    points = [(t["fraction"], t["checkpoint"], t) for t in trained["snapshots"]]
    points.append((1.0, "checkpoint_final.pth", trained))
    for fraction, checkpoint, record in points:
        out = run.validation if fraction == 1.0 else run.snapshot_validation(fraction)
        predictor = _predictor(folder, checkpoint, device)
        predictor.predict_from_files_sequential(inputs, [str(out / n) for n in held_out], save_probabilities=False)
        summary = evaluate_folder(out, references, out, label_ids=labels, ignore_label=dataset.ignore_label)
        print(f"nnunet: held-out mean Dice {summary['foreground_mean']['Dice']:.4f} with {checkpoint}", flush=True)
        entries.append(
            {
                "fraction": fraction,
                "checkpoint": checkpoint,
                "steps": record["steps"],
                "seconds": record["seconds"],
                "summary": str((out / "summary.json").relative_to(run.path)),
            }
        )
    write_text(run.snapshots, json.dumps(entries, indent=1) + "\n")
    write_text(
        run.postprocessing,
        json.dumps(
            {
                "keep_largest": {},
                "why": "nnU-Net chooses its post-processing over a whole cross-validation "
                "(find_best_configuration), which compare does not run: none applied",
            },
            indent=1,
        )
        + "\n",
    )
    # none applied: the post-processed fold is the fold as predicted; its summary is the run's last file
    write_text(run.postprocessed_summary, run.summary.read_text())


def _child_benchmark(run: RunFolder, phase: str, out: Path, warmup: int, steps: int) -> None:
    """One phase of the benchmark, as the benchmark worker measures every model: ``train`` times nnU-Net's
    ``train_step`` on a random batch of its plan's batch and patch (deep-supervision targets included) after
    ``warmup`` steps, median of ``steps``; ``infer`` times its sliding-window predictor (mirroring included) on a
    random volume of the plan's median shape after one prediction of a patch. Memory: the
    :class:`~unetzoo.training.step_timer.MemoryProbe` every benchmark uses."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from unetzoo.device import resolve_device
    from unetzoo.training.step_timer import MemoryProbe, sync

    request = read_json(run.path / REQUEST)
    dims = request["dims"]
    device = resolve_device(request["device"])
    folder = Path(read_json(run.path / TRAINED)["folder"])
    plans = read_json(folder.parent / "plans.json")
    dataset_json = read_json(folder.parent / "dataset.json")
    conf = request["configuration"]
    trainer_class = _budget_trainer()  # nnunetv2 imported before the probe's baseline: imports never count
    probe = MemoryProbe(device)
    torch.manual_seed(0)
    if phase == "train":
        trainer = trainer_class(plans, conf, "all", dataset_json, device=device)
        trainer.initialize()
        patch = list(trainer.configuration_manager.patch_size)
        channels = trainer.num_input_channels
        classes = trainer.label_manager.num_segmentation_heads
        target = [
            torch.randint(0, classes, (trainer.batch_size, 1, *[max(1, round(p * s)) for p, s in zip(patch, scale)]))
            for scale in trainer._get_deep_supervision_scales()
        ]
        data = torch.randn(trainer.batch_size, channels, *patch)
        batch = {"data": data.to(device), "target": [t.to(device) for t in target]}  # on the device, as Lightning's
        patch_in_image_order = image_order(patch, plans, dims)
        trainer.network.train()
        for _ in range(warmup):
            trainer.train_step(batch)
        sync(torch, device)
        probe.reset_peak()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step(batch)
            sync(torch, device)
            times.append(time.perf_counter() - start)
        trainer.network.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:  # one window, as every model's MACs
            trainer.network(torch.zeros(1, channels, *patch, device=device))
        figures = {
            "params": sum(p.numel() for p in trainer.network.parameters() if p.requires_grad),
            "macs": int(counter.get_total_flops() // 2),
            "train_step_s": statistics.median(times),
            "train_peak_mem_mb": probe.peak_mb(),
            "batch_size": trainer.batch_size,
            "patch": patch_in_image_order,
            "channels": channels,
            "num_classes": len(trainer.label_manager.all_labels),
        }
    else:
        predictor = _predictor(folder, "checkpoint_final.pth", device)  # loads the weights when it predicts
        # the median case at nnU-Net's spacing, as a whole array (a 2d configuration predicts it slice by slice)
        configurations = plans["configurations"]
        median = configurations.get("3d_fullres", configurations[conf])["median_image_size_in_voxels"]
        shape = [1] * (3 - len(median)) + [int(s) for s in median]
        window = list(predictor.configuration_manager.patch_size)
        window = [1] * (3 - len(window)) + window
        channels = len(dataset_json["channel_names"])
        warm = torch.randn(channels, *[min(p, s) for p, s in zip(window, shape)])
        predictor.predict_logits_from_preprocessed_data(warm)
        sync(torch, device)
        probe.reset_peak()
        start = time.perf_counter()
        predictor.predict_logits_from_preprocessed_data(torch.randn(channels, *shape))
        sync(torch, device)
        figures = {
            "infer_s": time.perf_counter() - start,
            "infer_peak_mem_mb": probe.peak_mb(),
            "infer_shape": image_order(shape if dims == 3 else shape[1:], plans, dims),
        }
    figures["memory_method"] = probe.method
    out.write_text(json.dumps(figures))


def _main(argv: list[str]) -> int:
    from unetzoo.errors import exit_status

    kind, run = argv[0], RunFolder(argv[1])
    if kind == "train":
        return exit_status(lambda: _child_train(run))
    phase = kind.removeprefix("benchmark-")
    return exit_status(lambda: _child_benchmark(run, phase, Path(argv[2]), int(argv[3]), int(argv[4])))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
