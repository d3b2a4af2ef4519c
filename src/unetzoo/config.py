"""One typed configuration tree: data, augmentation, training, inference, plus free model/method arguments.

Every hyperparameter is a field here, overridable from the command line (named flags for the common ones,
``--set section.field=value`` for any), and the resolved tree is saved as ``config.json`` in every run folder
so that a run records exactly what it used (unlike nnU-Net's one-subclass-per-hyperparameter trainers).

Every field is checked in one place, :meth:`Config.validate`: its type from the dataclass annotation, its range,
allowed names and list lengths from :data:`RULES`; ``train``, ``predict``, ``benchmark``, ``compare`` and a config
read from a file share the check, so a bad value is one line naming the field (and its flag) before any work.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unetzoo.device import INFERENCE_PRECISIONS, PRECISIONS
from unetzoo.errors import UnetzooError, file_error


@dataclass
class DataConfig:
    patch_size: list[int] | None = None  # None: planned from the median shape and the step budget (data/plan.py)
    target_spacing: list[float] | None = None  # None: the dataset's median spacing (computed once, saved)
    pos_neg_ratio: list[float] = field(default_factory=lambda: [1.0, 2.0])  # implicit-unet.md: 1:2 positive:negative
    samples_per_case: int = 1  # patches cropped from one case per draw
    folds: int = 5
    splits_file: str = ""  # nnU-Net's splits_final.json to use as is ("" = make data.folds folds from the seed)
    group_by: str = ""  # regex: cases whose names share its match are one subject, never split (e.g. "patient\\d+")
    num_workers: int = 2
    cache_workers: int = 2
    cache_dir: str = ""  # preprocessed cases on disk (data/cache.py); "" = $UNETZOO_CACHE, else ~/.cache/unetzoo


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
    # regularized-unet.md Table 3: train on I[k:k+128, i::s, j::s] (every s-th voxel of the two in-plane axes, those
    # other than the slice axis, from random offsets i, j < s); prediction then runs each of the s^2 interleaved
    # sub-images and interleaves them (1 = off)
    in_plane_stride: int = 1


@dataclass
class TrainConfig:
    epochs: int = 100
    iters_per_epoch: int = 250
    batch_size: int | None = None  # None: the plan's (the step budget over the patch, data/plan.py)
    optimizer: str = "adamw"  # "adamw" (implicit-unet.md: AdamW 1e-4), "sgd" (nnU-Net: 1e-2, momentum 0.99, nesterov) or "adam" (random-2.5d-unet.md: 1e-3)
    lr: float = 1e-4
    weight_decay: float = 3e-5
    momentum: float = 0.99
    scheduler: str = "poly"  # "poly" (lr * (1 - epoch/epochs)^0.9, nnU-Net), "constant" or "plateau" (halve after 3 epochs without a better validation Dice, random-2.5d-unet.md)
    early_stop: int = 0  # stop after this many epochs without a better validation Dice (random-2.5d-unet.md: 5); 0 = never
    deep_supervision: bool = True
    val_patches: int = 16  # fixed validation patches (data/val_patches.py) scored by the per-epoch pseudo Dice; 0 = whole cases
    val_cases: int = 0  # validation cases (3D+t: subjects, all frames) the per-epoch validation uses; 0 = every one
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit), the poly schedule annealing over it (budget.py); the run still validates
    min_steps: int = 1000  # under max_minutes: halve model_args.base_features until the budget holds this many steps (budget_width.py); 0 = keep the width
    precision: str = "auto"  # auto (fastest native: see precision.py), 32-true, bf16-mixed, 16-mixed
    device: str = "auto"  # auto: CUDA when present, else CPU; cpu; cuda
    devices: int = 1
    grad_clip: float = 12.0  # nnU-Net's gradient-norm clip


@dataclass
class InferenceConfig:
    overlap: float = 0.3  # implicit-unet.md: sliding-window overlap 0.3 with Gaussian weighting
    gaussian: bool = True
    mirror: bool = False  # test-time mirroring over every spatial axis
    sw_batch_size: int = 2
    precision: str = "auto"  # auto (fp32 unless the run's bf16 check chose bf16 on a native-bf16 device: precision.py), 32-true, bf16-mixed


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
    def from_dict(cls, data: dict) -> "Config":
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
    def load(cls, path: str | Path) -> "Config":
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

    def validate(self) -> "Config":
        """Check every field against its annotated type and its :data:`RULES` entry; returns the config. The first bad
        field is a one-line error naming it, its command-line flag, what it accepts and what it got."""
        for name, value, kind in _fields(self):
            rule = RULES.get(name, Rule())
            if not _accepts(value, kind, rule):
                flag = f" ({rule.flag})" if rule.flag else ""
                raise UnetzooError(f"{name}{flag}: expected {_describe(kind, rule)}, got {value!r}")
        return self


_SECTION_CLASSES = {"data": DataConfig, "augment": AugmentConfig, "train": TrainConfig, "inference": InferenceConfig}


@dataclass(frozen=True)
class Rule:
    """What a config field accepts beyond its annotated type: bounds of a number (and of every number of a list),
    the names a string may take, the lengths a list may have, and the command-line flag that sets the field."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    lengths: tuple[int, ...] = ()
    flag: str = ""

    def bounds(self) -> list[str]:
        return [f"{op} {v}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if v is not None]

    def within(self, x: float) -> bool:
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))


PROBABILITY = Rule(ge=0, le=1)

# One entry per field that accepts less than its type allows ("section.field"; top-level fields without a section).
# A field not listed here is still checked against its annotated type.
RULES: dict[str, Rule] = {
    "model": Rule(flag="--model"),
    "fold": Rule(ge=0, choices=("all",), flag="--fold"),
    "seed": Rule(ge=0, flag="--seed"),
    "data.patch_size": Rule(ge=1, lengths=(2, 3), flag="--patch"),
    "data.target_spacing": Rule(gt=0, lengths=(2, 3)),
    "data.pos_neg_ratio": Rule(ge=0, lengths=(2,)),
    "data.samples_per_case": Rule(ge=1),
    "data.folds": Rule(ge=2, flag="--folds"),
    "data.splits_file": Rule(flag="--splits"),
    "data.group_by": Rule(flag="--group-by"),
    "data.num_workers": Rule(ge=0, flag="--num-workers"),
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
    "train.epochs": Rule(ge=1, flag="--epochs"),
    "train.iters_per_epoch": Rule(ge=1, flag="--iters-per-epoch"),
    "train.batch_size": Rule(ge=1, flag="--batch-size"),
    "train.optimizer": Rule(choices=("adamw", "sgd", "adam"), flag="--optimizer"),
    "train.lr": Rule(gt=0, flag="--lr"),
    "train.weight_decay": Rule(ge=0),
    "train.momentum": Rule(ge=0, lt=1),
    "train.scheduler": Rule(choices=("poly", "constant", "plateau")),
    "train.early_stop": Rule(ge=0),
    "train.val_patches": Rule(ge=0),
    "train.val_cases": Rule(ge=0),
    "train.max_minutes": Rule(ge=0, flag="--max-minutes"),
    "train.min_steps": Rule(ge=0),
    "train.precision": Rule(choices=PRECISIONS, flag="--precision"),
    "train.device": Rule(choices=("auto", "cpu", "cuda"), flag="--device"),
    "train.devices": Rule(ge=1, flag="--devices"),
    "train.grad_clip": Rule(ge=0),
    "inference.overlap": Rule(ge=0, lt=1, flag="--overlap"),
    "inference.mirror": Rule(flag="--mirror"),
    "inference.sw_batch_size": Rule(ge=1),
    "inference.precision": Rule(choices=INFERENCE_PRECISIONS, flag="--precision"),
}


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
        return isinstance(value, list) and (not rule.lengths or len(value) in rule.lengths) and all(_accepts(v, args[0], rule) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind in (int, float):  # an int is a valid float; a bool is neither
        return isinstance(value, (int, kind)) and not isinstance(value, bool) and math.isfinite(value) and rule.within(value)
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
