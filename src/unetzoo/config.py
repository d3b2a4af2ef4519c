"""One typed configuration tree: data, augmentation, training, inference, plus free model/method arguments.

Every hyperparameter is a field here, overridable from the command line (named flags for the common ones,
``--set section.field=value`` for any), and the resolved tree is saved as ``config.json`` in every run folder
so that a run records exactly what it used (unlike nnU-Net's one-subclass-per-hyperparameter trainers).

Every field is checked in one place, :meth:`Config.validate`: its type from the dataclass annotation, its range,
allowed names and list lengths from :data:`RULES`; ``train``, ``predict``, ``benchmark``, ``compare`` and a config
read from a file share the check, so a bad value is one line naming the field (and its flag) before any work.
The options of ``unetzoo predict`` and ``unetzoo benchmark`` are two more typed trees, :class:`PredictConfig` and
:class:`BenchmarkConfig` (not saved in a run), checked the same way.

A field's command-line flag is declared once, in its :data:`RULES` entry (flag, help, metavar, range, choices):
:func:`options` lists them, and ``unetzoo.cli`` builds its parsers from that list and reads them back with
:func:`set_options`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import math
import operator
import os
import types
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from unetzoo.device import DEVICES, INFERENCE_PRECISIONS, PRECISIONS
from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import SUPPORTED_ENDINGS
from unetzoo.runfolder import snapshot_name


@dataclass
class DataConfig:
    patch_size: list[int] | None = None  # None: planned from the median shape and the step budget (data/plan.py)
    target_spacing: list[float] | None = None  # None: the dataset's median spacing (computed once, saved)
    # Naval Marimont & Tarroni 2022 (arXiv:2206.15217): 1:2 positive:negative
    pos_neg_ratio: list[float] = field(default_factory=lambda: [1.0, 2.0])
    samples_per_case: int = 1  # patches cropped from one case per draw
    folds: int = 5
    splits_file: str = ""  # nnU-Net's splits_final.json to use as is ("" = make data.folds folds from the seed)
    group_by: str = ""  # regex: cases whose names share its match are one subject, never split (e.g. "patient\\d+")
    num_workers: int = 2
    cache_workers: int = 2
    cache_dir: str = ""  # preprocessed cases on disk (data/cache.py); "" = $UNETZOO_CACHE, else ~/.cache/unetzoo
    # the grid: "auto" the plan's coarse grid where it proposes one (data/plan.py: the patch sees too little of an
    # image), "full" the data's own resolution, "low" the coarse grid
    resolution: str = "auto"


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the augmentations the papers list (nnU-Net's values where they give none)."""

    rotation_p: float = 0.2
    rotation_degrees: float = 30.0
    scaling_p: float = 0.2
    scaling_range: list[float] = field(default_factory=lambda: [0.7, 1.4])
    elastic_p: float = 0.0  # off by default as in nnU-Net: costly on CPU; the papers that use it can turn it on
    flip_p: float = 0.5  # per axis
    noise_p: float = 0.1
    noise_std: float = 0.1
    contrast_p: float = 0.15
    contrast_gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])
    # Ding et al. 2021 (FLARE 2021), Table 3: train on I[k:k+128, i::s, j::s] (every s-th voxel of the two
    # in-plane axes, those other than the slice axis, from random offsets i, j < s); prediction then runs each of
    # the s^2 interleaved sub-images and interleaves them (1 = off)
    in_plane_stride: int = 1


@dataclass
class TrainConfig:
    epochs: int = 100
    iters_per_epoch: int = 250
    batch_size: int | None = None  # None: the plan's (the step budget over the patch, data/plan.py)
    # "adamw" (Naval Marimont & Tarroni 2022, arXiv:2206.15217: AdamW 1e-4), "sgd" (nnU-Net: 1e-2, momentum 0.99,
    # nesterov) or "adam" (Angermann & Haltmeier 2019, arXiv:1910.10398: 1e-3)
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 3e-5
    momentum: float = 0.99
    # "poly" (lr * (1 - epoch/epochs)^0.9, nnU-Net), "constant" or "plateau" (halve after 3 epochs without a better
    # per-epoch validation Dice, Angermann & Haltmeier 2019)
    scheduler: str = "poly"
    # stop after this many epochs without a better per-epoch validation Dice (Angermann & Haltmeier 2019: 5); 0 = never
    # (plateau, early_stop and select=best validate per epoch on an inner split of the training cases: training/run.py)
    early_stop: int = 0
    deep_supervision: bool = True
    val_patches: int = (
        16  # fixed validation patches (data/val_patches.py) scored by the per-epoch pseudo Dice; 0 = whole cases
    )
    val_cases: int = 0  # validation cases (3D+t: subjects, all frames) the per-epoch validation uses; 0 = every one
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit), the poly schedule annealing over it (budget.py); the run still validates
    min_steps: int = 1000  # under max_minutes: halve model_args.base_features until the budget holds this many steps (training/width.py); 0 = keep the width
    precision: str = "auto"  # auto (fastest native: see device.py), 32-true, bf16-mixed, 16-mixed
    device: str = "auto"  # auto: CUDA when present, else CPU; cpu; cuda
    devices: int = 1
    grad_clip: float = 12.0  # nnU-Net's gradient-norm clip
    # the run's reported weights: "last" (the final ones, as nnU-Net reports) or "best" (highest per-epoch pseudo Dice
    # on an inner validation split of the training cases, never the held-out fold)
    select: str = "last"
    # fractions of the budget (steps, or time under max_minutes) at which the weights are also saved and, after
    # training, evaluated on the held-out fold (learning curves); e.g. [0.25, 0.5]
    snapshots: list[float] = field(default_factory=list)
    keep_probabilities: bool = False  # the held-out fold's class probabilities saved beside its predictions (CASE.npz)


@dataclass
class InferenceConfig:
    overlap: float = 0.3  # Naval Marimont & Tarroni 2022: sliding-window overlap 0.3 with Gaussian weighting
    gaussian: bool = True
    mirror: bool = False  # test-time mirroring over every spatial axis
    sw_batch_size: int = 2
    precision: str = "auto"  # auto (fp32 unless the run's bf16 check chose bf16 on a native-bf16 device: device.py), 32-true, bf16-mixed


@dataclass
class Config:
    model: str = "unet"
    fold: int | str = 0  # a cross-validation fold, or "all" (train on every case, as nnU-Net's fold all)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    model_args: dict = field(default_factory=dict)  # passed to create_model (e.g. n_stages, slice_axis)
    method_args: dict = field(default_factory=dict)  # passed to the model's method (e.g. points for implicit-unet)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """The config of a dictionary (``to_dict``'s, a ``config.json``); missing fields keep their defaults, the
        result is validated."""
        if not isinstance(data, dict):
            raise UnetzooError(f"a config must be a JSON object of sections, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key not in names:
                raise UnetzooError(f"unknown config field {key!r}")
            section_cls = _SECTION_CLASSES.get(key)
            if section_cls:
                if not isinstance(value, dict):
                    raise UnetzooError(f"config section {key!r} must be an object of fields, got {value!r}")
                unknown = sorted(set(value) - {f.name for f in dataclasses.fields(section_cls)})
                if unknown:
                    raise UnetzooError(f"unknown config field {key}.{unknown[0]}")
                value = section_cls(**value)
            kwargs[key] = value
        return cls(**kwargs).validate()

    def save(self, path: str | Path) -> None:
        from unetzoo.io import write_text

        write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read a ``config.json``: a file that cannot be read, is not JSON or holds a bad value is one line naming it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise file_error(path, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
        except ValueError as exc:  # JSONDecodeError, or bytes that are not text
            raise file_error(path, f"corrupt: not a JSON config ({exc})") from None
        try:
            return cls.from_dict(data)
        except UnetzooError as exc:
            raise file_error(path, str(exc)) from None

    def set(self, assignment: str) -> None:
        """Apply one ``section.field=value`` override (value parsed as a Python literal when it is one); checked with
        the rest by :meth:`validate`."""
        if "=" not in assignment:
            raise UnetzooError(f"--set expects section.field=value, got {assignment!r}")
        key, raw = assignment.split("=", 1)
        value = _parse_value(raw)
        parts = key.strip().split(".")
        if parts[0] in ("model_args", "method_args") and len(parts) == 2:
            getattr(self, parts[0])[parts[1]] = value
            return
        target = self
        for part in parts[:-1]:
            if not dataclasses.is_dataclass(target) or not hasattr(target, part):
                raise UnetzooError(f"unknown config section {part!r} in {key!r}")
            target = getattr(target, part)
        if not dataclasses.is_dataclass(target) or parts[-1] not in {f.name for f in dataclasses.fields(target)}:
            raise UnetzooError(f"unknown config field {key!r}")
        if dataclasses.is_dataclass(getattr(target, parts[-1])):
            raise UnetzooError(f"{key!r} is a section: set one of its fields ({key}.FIELD=VALUE)")
        setattr(target, parts[-1], value)

    def validate(self) -> Config:
        """Check every field against its annotated type and its :data:`RULES` entry; returns the config. The first bad
        field is a one-line error naming it, its command-line flag, what it accepts and what it got."""
        _check(self, "")
        if not any(self.data.pos_neg_ratio):  # patches are drawn around foreground or background in this ratio
            raise UnetzooError(
                f"data.pos_neg_ratio: expected a list of 2 numbers >= 0, not both 0, got {self.data.pos_neg_ratio!r}"
            )
        if len({snapshot_name(f) for f in self.train.snapshots}) < len(self.train.snapshots):  # one file each
            raise UnetzooError(
                f"train.snapshots: expected distinct fractions > 0 and < 1, got {self.train.snapshots!r}"
            )
        return self


class _Options:
    """A command's options outside the saved run config (:class:`PredictConfig`, :class:`BenchmarkConfig`): checked
    by the same :data:`RULES` (under ``predict.`` / ``benchmark.``); a field whose rule ``overrides`` a config field
    replaces that field's value for this command when it is not None (:meth:`override`)."""

    def validate(self):
        """Check every field as :meth:`Config.validate` does; an override is checked as the field it overrides (and
        named so); returns the options."""
        return _check(self, _PREFIXES[type(self)])

    @classmethod
    def merged(cls, options=None, **fields):
        """``options`` (default: the defaults) with ``fields`` replaced, checked: a bad value or an unknown field is
        one line naming it, before anything is loaded (the API's keywords, ``predict(run, images, out, device="cpu")``)."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            noun = _PREFIXES[cls].rstrip(".")
            raise UnetzooError(f"unknown {noun} option {unknown[0]!r} (known: {', '.join(known)})")
        return dataclasses.replace(options or cls(), **fields).validate()

    def override(self, config: Config) -> Config:
        """``config`` with the overrides that are set (not None) applied: e.g. ``--overlap`` on the run's
        ``inference.overlap``; not validated."""
        for name, value, _ in _fields(self, _PREFIXES[type(self)]):
            target = RULES.get(name, Rule()).overrides
            if target and value is not None:
                assign(config, target, value)
        return config


@dataclass
class PredictConfig(_Options):
    """The options of ``unetzoo predict`` (and of :class:`unetzoo.inference.Predictor`): which weights, on which
    device, where the outputs lie, their post-processing, and overrides of the run's ``inference`` section (None:
    the run's value)."""

    checkpoint: str | None = None  # None: the run's reported weights (its train.select)
    device: str = "auto"
    overwrite: bool = False
    save_probabilities: bool = False
    mirror: bool | None = None  # None: the run's inference.mirror
    overlap: float | None = None  # None: the run's inference.overlap
    upsample: int = 1
    grid: str | None = None  # a NIfTI image whose grid the outputs take
    precision: str | None = None  # None: the run's inference.precision
    fit_slices: int = 1
    keep_largest: str | None = None  # "K" or "CLASS:K,...", parsed against the run's classes; None: the run's choice
    no_postprocess: bool = False
    output_format: str | None = None  # an image ending (".nii.gz", ".mha" ...); None: the input's (DICOM: .nii.gz)

    def __post_init__(self):
        if isinstance(self.grid, os.PathLike):
            self.grid = os.fspath(self.grid)

    def validate(self) -> PredictConfig:
        super().validate()
        if self.keep_largest is not None and self.no_postprocess:
            raise UnetzooError("--keep-largest and --no-postprocess exclude each other")
        return self


@dataclass
class BenchmarkConfig(_Options):
    """The options of ``unetzoo benchmark`` (:func:`unetzoo.experiments.benchmark.run_benchmark`): the synthetic
    input, the measurement, and overrides of every measured model's ``train`` section (None: the config's)."""

    shape: list[int] | None = None  # synthetic input [C, *spatial]
    classes: int = 2
    patch: list[int] | None = None
    infer_shape: list[int] | None = None
    batch_size: int | None = None  # None: the config's train.batch_size
    device: str = "auto"
    threads: int | None = None  # None: torch's default
    precision: str | None = None  # None: the config's train.precision
    warmup: int = 2
    steps: int = 5
    infer_repeats: int = 1


_SECTION_CLASSES = {"data": DataConfig, "augment": AugmentConfig, "train": TrainConfig, "inference": InferenceConfig}
_PREFIXES = {Config: "", PredictConfig: "predict.", BenchmarkConfig: "benchmark."}  # where each tree's RULES lie


@dataclass(frozen=True)
class Rule:
    """What a config field accepts beyond its annotated type: bounds of a number (and of every number of a list),
    the names a string may take, the lengths a list may have; and the command-line flag that sets the field, with
    its help text and metavar: the one declaration the parsers are generated from (:func:`options`).

    ``overrides`` ("section.field" of :class:`Config`): this option replaces that config field for one command when
    it is not None; its values are checked, and named, as that field (its type, bounds and choices)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    lengths: tuple[int, ...] = ()
    flag: str = ""
    help: str = ""
    metavar: str = ""
    overrides: str = ""

    def bounds(self) -> list[str]:
        return [
            f"{op} {v}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if v is not None
        ]

    def within(self, x: float) -> bool:
        return (
            (self.ge is None or x >= self.ge)
            and (self.gt is None or x > self.gt)
            and (self.le is None or x <= self.le)
            and (self.lt is None or x < self.lt)
        )


PROBABILITY = Rule(ge=0, le=1)
DEVICE = Rule(choices=DEVICES, flag="--device", help="auto (default): CUDA when present, else CPU")
SIZES = Rule(ge=1, lengths=(2, 3), metavar="N")  # spatial sizes of a 2D or 3D image
SEED_MAX = 2**32 - 1  # the largest seed numpy (and so Lightning's seed_everything) takes

# One entry per field that accepts less than its type allows or has a command-line flag ("section.field"; top-level
# fields without a section; the options of a command under "predict." / "benchmark."). A field not listed here is
# still checked against its annotated type. The parsers of `unetzoo train|predict|benchmark` are generated from the
# entries with a flag: name, help, metavar; type and list-ness from the field's annotation (unetzoo.cli).
RULES: dict[str, Rule] = {
    "model": Rule(flag="--model", help="model name (see `unetzoo models`); default unet"),
    "fold": Rule(
        ge=0,
        choices=("all",),
        flag="--fold",
        help="cross-validation fold (default 0), or 'all' to train on every case (no held-out validation)",
    ),
    "seed": Rule(ge=0, le=SEED_MAX, flag="--seed", help="random seed (default 0)"),
    "data.patch_size": replace(SIZES, flag="--patch", help="patch size (D H W, or H W in 2D); default from the data"),
    "data.target_spacing": Rule(gt=0, lengths=(2, 3)),
    "data.pos_neg_ratio": Rule(ge=0, lengths=(2,)),
    "data.resolution": Rule(choices=("auto", "full", "low")),
    "data.samples_per_case": Rule(ge=1),
    "data.folds": Rule(ge=2, flag="--folds", help="number of cross-validation folds (default 5)"),
    "data.splits_file": Rule(
        flag="--splits",
        metavar="FILE",
        help='the folds from this file (nnU-Net\'s splits_final.json: a list of {"train": [...], "val": [...]})',
    ),
    "data.group_by": Rule(
        flag="--group-by",
        metavar="REGEX",
        help="cases whose names share this pattern's match are one subject, kept in one fold (e.g. 'patient\\d+')",
    ),
    "data.num_workers": Rule(ge=0, flag="--num-workers", help="data-loading worker processes"),
    "data.cache_workers": Rule(ge=0),
    "augment.rotation_p": PROBABILITY,
    "augment.rotation_degrees": Rule(ge=0, le=180),
    "augment.scaling_p": PROBABILITY,
    "augment.scaling_range": Rule(gt=0, lengths=(2,)),
    "augment.elastic_p": PROBABILITY,
    "augment.flip_p": PROBABILITY,
    "augment.noise_p": PROBABILITY,
    "augment.noise_std": Rule(ge=0),
    "augment.contrast_p": PROBABILITY,
    "augment.contrast_gamma": Rule(gt=0, lengths=(2,)),
    "augment.in_plane_stride": Rule(ge=1),
    "train.epochs": Rule(ge=1, flag="--epochs", help="training epochs (default 100)"),
    "train.iters_per_epoch": Rule(ge=1, flag="--iters-per-epoch", help="training steps per epoch (default 250)"),
    "train.batch_size": Rule(
        ge=1, flag="--batch-size", help="training batch size (default: the plan's, from the step budget)"
    ),
    "train.optimizer": Rule(choices=("adamw", "sgd", "adam"), flag="--optimizer", help="optimizer (default adamw)"),
    "train.lr": Rule(gt=0, flag="--lr", help="learning rate (default 1e-4)"),
    "train.weight_decay": Rule(ge=0),
    "train.momentum": Rule(ge=0, lt=1),
    "train.scheduler": Rule(choices=("poly", "constant", "plateau")),
    "train.early_stop": Rule(ge=0),
    "train.val_patches": Rule(ge=0),
    "train.val_cases": Rule(ge=0),
    "train.max_minutes": Rule(
        ge=0,
        flag="--max-minutes",
        help="train for this many minutes, the poly learning rate "
        "annealing to 0 over them (then validate); the network's base_features halve until the "
        "minutes hold train.min_steps measured steps",
    ),
    "train.min_steps": Rule(ge=0),
    "train.precision": Rule(
        choices=PRECISIONS,
        flag="--precision",
        help="auto (default: bf16-mixed where the device "
        "runs it natively, 16-mixed on older CUDA GPUs, else 32-true), 32-true, bf16-mixed or "
        "16-mixed",
    ),
    "train.device": DEVICE,
    "train.devices": Rule(
        ge=1, flag="--devices", help="number of devices (DDP through Lightning; CPU processes over gloo)"
    ),
    "train.grad_clip": Rule(ge=0),
    "train.select": Rule(
        choices=("last", "best"),
        flag="--select",
        help="the run's reported weights: last (default; the final ones, as nnU-Net) or best (highest per-epoch "
        "pseudo Dice on an inner validation split of the training cases, kept out of training)",
    ),
    "train.snapshots": Rule(gt=0, lt=1),
    "predict.checkpoint": Rule(
        flag="--checkpoint",
        metavar="{best,last,at_N}",  # checked by RunFolder.checkpoint_file
        help="weights of each run (default: the run's reported ones, its train.select; best falls back to last; "
        "at_N: the snapshot at N percent of the budget, train.snapshots)",
    ),
    "inference.overlap": Rule(ge=0, lt=1),
    "inference.sw_batch_size": Rule(ge=1),
    "inference.precision": Rule(choices=INFERENCE_PRECISIONS),
    "predict.device": DEVICE,
    "predict.overwrite": Rule(flag="--overwrite", help="redo cases already predicted"),
    "predict.save_probabilities": Rule(
        flag="--save-probabilities", help="also write CASE.npz with the class probabilities"
    ),
    "predict.mirror": Rule(overrides="inference.mirror", flag="--mirror", help="test-time mirroring over every axis"),
    "predict.overlap": Rule(
        overrides="inference.overlap", flag="--overlap", help="sliding-window overlap (default from the run: 0.3)"
    ),
    "predict.upsample": Rule(
        ge=1,
        flag="--upsample",
        metavar="F",
        help="write F-times finer outputs of the same "
        "extent (continuous models sample their function; others resample probabilities)",
    ),
    "predict.grid": Rule(
        flag="--grid",
        metavar="REF",
        help="write the segmentation on the grid of this NIfTI image "
        "(another plane or resolution) instead of the input's",
    ),
    "predict.precision": Rule(
        overrides="inference.precision",
        flag="--precision",
        help="auto (default): fp32, or "
        "bf16 where the run's check after training found fp32's labels and a speed-up on a "
        "native-bf16 device (RUN/inference_precision.json)",
    ),
    "predict.fit_slices": Rule(
        ge=1,
        flag="--fit-slices",
        metavar="K",
        help="models that fit at test time (nisf): fit on every K-th slice only, predict every slice",
    ),
    "predict.keep_largest": Rule(
        flag="--keep-largest",
        metavar="K|C:K,...",
        help="keep the K largest connected "
        "components of every class, or per class (1:1,2:3) instead of the run's "
        "post-processing",
    ),
    "predict.no_postprocess": Rule(
        flag="--no-postprocess",
        help="write the raw argmax (skip the run's postprocessing.json, chosen on the validation fold)",
    ),
    "predict.output_format": Rule(
        choices=SUPPORTED_ENDINGS,
        flag="--output-format",
        metavar="ENDING",
        help="write the predictions in this format, e.g. .nii.gz or .mha (default: the input's; NIfTI .nii.gz for a "
        "DICOM series)",
    ),
    "benchmark.shape": Rule(
        ge=1, lengths=(3, 4), flag="--shape", metavar="N", help="synthetic input C D H W (3D) or C H W (2D)"
    ),
    "benchmark.classes": Rule(
        ge=2, flag="--classes", help="classes of the synthetic input, background included (default 2)"
    ),
    "benchmark.patch": replace(SIZES, flag="--patch", help="patch size (default: from the data / the shape, capped)"),
    "benchmark.infer_shape": replace(
        SIZES,
        flag="--infer-shape",
        help="spatial size of the predicted volume (default: --shape or the data's median shape)",
    ),
    "benchmark.batch_size": Rule(
        overrides="train.batch_size", flag="--batch-size", help="training batch size (default: the plan's, as training)"
    ),
    "benchmark.device": DEVICE,
    "benchmark.threads": Rule(ge=1, flag="--threads", help="torch CPU threads (default: torch's default)"),
    "benchmark.precision": Rule(
        overrides="train.precision",
        flag="--precision",
        help="training-step precision, as "
        "train's: auto (default), 32-true, bf16-mixed or 16-mixed; inference stays fp32",
    ),
    "benchmark.warmup": Rule(ge=0, flag="--warmup", help="untimed warm-up steps (default 2)"),
    "benchmark.steps": Rule(ge=1, flag="--steps", help="timed training steps; their median is reported (default 5)"),
    "benchmark.infer_repeats": Rule(
        ge=1, flag="--infer-repeats", help="timed whole-volume predictions; their median is reported (default 1)"
    ),
}


@dataclass(frozen=True)
class Option:
    """The command-line option of one field: ``path`` its :data:`RULES` key ("train.lr", "predict.overlap"),
    ``kind`` its annotation, ``default`` its default value, ``rule`` its entry (flag, help, metavar)."""

    path: str
    kind: object
    default: object
    rule: Rule

    @property
    def checked(self) -> Rule:
        """The rule its values are checked against: its own, or the overridden field's."""
        return RULES.get(self.rule.overrides, Rule()) if self.rule.overrides else self.rule

    @property
    def base(self):
        """The type the flag takes: the annotation without None (``list[int] | None``: ``list[int]``)."""
        return _without_none(self.kind)

    def accepts(self) -> str:
        """What the flag takes, in the words of ``validate``'s errors ("a number >= 0 and < 1"); "" for a switch."""
        kind = _without_none(_config_kinds()[self.rule.overrides]) if self.rule.overrides else self.base
        return "" if kind is bool else _describe(kind, self.checked)


def options(tree: type) -> list[Option]:
    """The command-line options of :class:`Config` (``unetzoo train``), :class:`PredictConfig` or
    :class:`BenchmarkConfig`: every field whose :data:`RULES` entry names a flag, in declaration order."""
    prefix = _PREFIXES[tree]
    return [
        Option(name, kind, value, RULES[name])
        for name, value, kind in _fields(tree(), prefix)
        if RULES.get(name, Rule()).flag
    ]


def set_options(node, values: dict):
    """Set the fields of ``node`` (a Config, PredictConfig or BenchmarkConfig) whose option has a value in
    ``values`` other than None (``values`` maps an option's path to its value, e.g. the parsed command line);
    returns ``node``, not validated."""
    prefix = _PREFIXES[type(node)]
    for option in options(type(node)):
        value = values.get(option.path)
        if value is not None:
            assign(node, option.path[len(prefix) :], value)
    return node


def assign(node, path: str, value) -> None:
    """Set the field ``path`` ("section.field", or a top-level "field") of a config tree, unchecked."""
    *sections, name = path.split(".")
    for section in sections:
        node = getattr(node, section)
    setattr(node, name, value)


def _check(node, prefix: str):
    """:meth:`Config.validate` of any tree whose :data:`RULES` lie under ``prefix``; returns ``node``."""
    for name, value, kind in _fields(node, prefix):
        rule = RULES.get(name, Rule())
        flag = rule.flag or _override_flags().get(name, "")
        if rule.overrides:  # None keeps the overridden field's value; anything else is checked, and named, as it
            if value is None:
                continue
            name, kind, rule = rule.overrides, _config_kinds()[rule.overrides], RULES.get(rule.overrides, Rule())
        if not _accepts(value, kind, rule):
            raise UnetzooError(f"{name}{f' ({flag})' if flag else ''}: expected {_describe(kind, rule)}, got {value!r}")
    return node


def _without_none(kind):
    """An annotation without its None (``int | None``: ``int``; ``int | str`` stays)."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) not in (types.UnionType, typing.Union) or len(args) == len(typing.get_args(kind)):
        return kind
    return args[0] if len(args) == 1 else functools.reduce(operator.or_, args)


@functools.cache
def _config_kinds() -> dict:
    """The annotated type of every field of :class:`Config` ("section.field")."""
    return {name: kind for name, _, kind in _fields(Config())}


@functools.cache
def _override_flags() -> dict:
    """The flag that overrides a config field for some command (``inference.overlap``: ``--overlap``)."""
    flags = {}
    for rule in RULES.values():
        if rule.overrides:
            flags.setdefault(rule.overrides, rule.flag)
    return flags


def _fields(node, prefix: str = ""):
    """``(section.field, value, annotated type)`` of every field of a config, sections flattened."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, hints[f.name]


def _accepts(value, kind, rule: Rule) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        return any(_accepts(value, arg, rule) for arg in args)
    if kind is type(None):
        return value is None
    if origin is list:
        return (
            isinstance(value, list)
            and (not rule.lengths or len(value) in rule.lengths)
            and all(_accepts(v, args[0], rule) for v in value)
        )
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):  # an int is a valid float; a bool is neither
        return (
            isinstance(value, (int, kind))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and rule.within(value)
        )
    if kind is str:
        return isinstance(value, str) and (not rule.choices or value in rule.choices)
    return isinstance(value, origin or kind)


def _describe(kind, rule: Rule, plural: bool = False) -> str:
    """What ``kind`` under ``rule`` accepts, in words: "a list of 2 or 3 integers >= 1 or None"."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(arg, rule, plural) for arg in sorted(args, key=lambda a: a is type(None)))
    if kind is type(None):
        return "None"
    if origin is list:
        count = " or ".join(map(str, rule.lengths)) + " " if rule.lengths else ""
        return f"a list of {count}{_describe(args[0], rule, plural=True)}"
    if kind is bool:
        return "true or false"
    if kind in (int, float):
        noun = {int: ("an integer", "integers"), float: ("a number", "numbers")}[kind][plural]
        return " ".join([noun, " and ".join(rule.bounds())]).strip()
    if kind is str:
        return "one of " + ", ".join(map(repr, rule.choices)) if rule.choices else ("strings" if plural else "a string")
    return f"a {kind.__name__}"


def _parse_value(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False}.get(raw.lower(), raw)
