"""One typed configuration tree: data, augmentation, training, inference, plus free model/method arguments.

Every hyperparameter is a field here, overridable from the command line (named flags for the common ones,
``--set section.field=value`` for any), and the resolved tree is saved as ``config.json`` in every run folder
so that a run records exactly what it used (unlike nnU-Net's one-subclass-per-hyperparameter trainers).
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from unetzoo.errors import UnetzooError


@dataclass
class DataConfig:
    patch_size: list[int] | None = None  # None: the dataset's median shape after resampling, capped (see plan)
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
    # regularized-unet.md Table 3: train on I[:, i::s, j::s] (every s-th voxel of the last two axes from random
    # offsets i, j < s); prediction then runs each of the s^2 interleaved sub-images and interleaves them (1 = off)
    in_plane_stride: int = 1


@dataclass
class TrainConfig:
    epochs: int = 100
    iters_per_epoch: int = 250
    batch_size: int = 2
    optimizer: str = "adamw"  # "adamw" (implicit-unet.md: AdamW 1e-4), "sgd" (nnU-Net: 1e-2, momentum 0.99, nesterov) or "adam" (random-2.5d-unet.md: 1e-3)
    lr: float = 1e-4
    weight_decay: float = 3e-5
    momentum: float = 0.99
    scheduler: str = "poly"  # "poly" (lr * (1 - epoch/epochs)^0.9, nnU-Net), "constant" or "plateau" (halve after 3 epochs without a better validation Dice, random-2.5d-unet.md)
    early_stop: int = 0  # stop after this many epochs without a better validation Dice (random-2.5d-unet.md: 5); 0 = never
    deep_supervision: bool = True
    val_cases: int = 0  # cases (3D+t: subjects, all frames) used for the per-epoch validation Dice; 0 = every validation case
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit), the poly schedule annealing over it (budget.py); the run still validates
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
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key not in sections:
                raise UnetzooError(f"unknown config field {key!r}")
            section_cls = _SECTION_CLASSES.get(key)
            kwargs[key] = section_cls(**value) if section_cls else value
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        from unetzoo.io import write_text

        write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def set(self, assignment: str) -> None:
        """Apply one ``section.field=value`` override (value parsed as a Python literal when it is one)."""
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
        setattr(target, parts[-1], value)


_SECTION_CLASSES = {"data": DataConfig, "augment": AugmentConfig, "train": TrainConfig, "inference": InferenceConfig}


def _parse_value(raw: str):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False}.get(raw.lower(), raw)
