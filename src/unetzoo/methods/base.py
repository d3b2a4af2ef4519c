"""The Method contract: how a family of models trains on a dataset and turns an image into probabilities.

A model is an ``nn.Module`` from the registry and holds every learnable tensor (weights, latent tables), so
checkpoints, resume and DDP need nothing from the method. A method is the procedure around it (dense patches,
sampled points, latent codes, projections). Training, inference and the benchmark talk to this interface only:
a new family is a subclass here plus one line in ``methods.METHODS``.

What a method declares (class attributes, read by training, inference and the benchmark):

* ``whole_volumes``: training samples and prediction inputs are whole preprocessed volumes (no patch crop, no
  sliding window); the plan then keeps the whole median shape as its patch instead of capping it.
* ``continuous``: ``predict(image, grid)`` samples the model's function at any grid's points itself; otherwise the
  base class predicts on the voxel grid and resamples the probabilities onto the grid.
* ``grad_at_inference``: ``predict`` needs autograd (fitting a latent code); inference then runs under
  ``torch.no_grad`` (which the method may lift) instead of ``torch.inference_mode`` (which it could not).
* ``max_validation_patches``: at most this many patches score the per-epoch pseudo Dice (None: ``train.val_patches``);
  a method whose prediction fits something bounds its per-epoch validation cost with it.
* ``exportable``: each sliding window's probabilities are the softmax of the network's output alone, so
  ``unetzoo export`` can save the network for other runtimes (TorchScript, ONNX).

What a method supplies: :meth:`train_transform`, :meth:`training_loss`, :meth:`parameter_groups`,
:meth:`example_batch`, :meth:`predict` and, optionally, :meth:`collate` (how training samples are batched),
:meth:`predict_sequence` (the frames of one 3D+t case together; by default frame by frame),
:meth:`validation_predict` (a cheaper prediction for the per-epoch pseudo Dice; by default :meth:`predict`) and
:meth:`calibrate` (settings chosen after training on training subjects that :meth:`calibration_subjects` kept out
of training, saved into the run's config; the validation fold, which the run reports, is never used to choose them).

Unlabelled voxels: a label map of class indices may hold values outside ``0 .. K - 1`` (the dataset's ignore label,
class index K = ``plan.num_classes``; the padding -1 of whole-volume batches). Every loss counts only the labelled
voxels (:func:`labelled_voxels`): the others add nothing to it, and their gradient is zero.

3D+t data: a 4D case is a sequence of 3D frames sharing one affine. Training and validation items are single
frames carrying ``case_index`` (the subject), ``frame_index`` and ``num_frames`` (0 and 1 for 3D data), so a method
that ignores time trains on frames unchanged.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.errors import UnetzooError
from unetzoo.methods.grid import Grid


def in_plane_axes(plan: Plan) -> tuple[int, int]:
    """The two spatial axes of the image plane, which the in-plane stride of Ding et al. 2021 (FLARE 2021)
    sub-samples (Table 3: ``I[k:k+128, i::4, j::4]`` of a ``C x 512 x 512`` CT, every 4th voxel of the 512 x 512
    slices): both axes of 2D data; for 3D the two other than the plan's through-plane axis (``plan.slice_axis``,
    the axis the 2D configuration slices along: :func:`unetzoo.data.plan.through_plane_axis`)."""
    if plan.spatial_dims == 2:
        return 0, 1
    first, second = (a for a in range(3) if a != plan.slice_axis)
    return first, second


def labelled_voxels(label: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, mask)`` of a label map of class indices (any shape): ``mask`` (float) is 1 where the value is a
    class (``0 .. num_classes - 1``) and 0 elsewhere (the ignore label, padding); ``target`` (long) is the label
    with those voxels set to 0, so that it one-hot encodes. A loss multiplies its per-voxel terms by ``mask``."""
    mask = (label >= 0) & (label < num_classes)
    return torch.where(mask, label, torch.zeros_like(label)).long(), mask.float()


class Method:
    """Base class: dense training on patches, sliding-window prediction. Subclasses implement
    :meth:`training_loss` and :meth:`predict_window`, and override what their family does differently."""

    whole_volumes = False
    continuous = False
    grad_at_inference = False
    exportable = False
    max_validation_patches: int | None = None
    train_cases: int | None = None  # the run's number of training cases (set by ``build_method``; None: unknown)

    def __init__(self, model: nn.Module, plan: Plan, config: Config):
        self.model = model
        self.plan = plan
        self.config = config
        self.num_classes = plan.num_classes
        self.ignore_class = plan.num_classes if plan.ignore_label is not None else None  # its index in label maps
        self.patch_size = list(plan.patch_size)
        self.inference = config.inference
        self.stride = config.augment.in_plane_stride
        if not isinstance(self.stride, int) or self.stride < 1:
            raise UnetzooError(f"augment.in_plane_stride must be a positive integer, got {self.stride!r}")
        self.stride_axes = in_plane_axes(plan)

    # ---- training -------------------------------------------------------------------------------------
    def train_patch_size(self) -> list[int]:
        """The patch the data loader crops for one training sample."""
        return self.patch_size

    def samples_per_draw(self) -> int:
        """Samples cropped from one case per draw (a slice method crops several slices to match a volume patch)."""
        return self.config.data.samples_per_case

    def steps_per_epoch(self) -> int:
        """Training steps of one epoch (``train.iters_per_epoch``); validation, the plateau scheduler and early
        stopping run once per epoch."""
        return self.config.train.iters_per_epoch

    def start_epoch(self, epoch: int) -> None:
        """Called by the training at the start of every epoch (0-based), for losses with a schedule."""

    def train_transform(self):
        """The random transform from a cached, preprocessed case ``{"image", "label", "case_index", ...}`` to the
        training sample(s) of one draw: here nnU-Net's patch sampling and augmentation."""
        from unetzoo.data.transforms import augmentation

        cfg = self.config
        return augmentation(
            self.train_patch_size(),
            cfg.augment,
            cfg.data.pos_neg_ratio,
            self.samples_per_draw(),
            self.stride_axes,
            ignore_class=self.ignore_class,
        )

    @staticmethod
    def collate(samples: list) -> dict:
        """The training loader's batch of ``samples`` (draws, each a dict or a list of dicts): MONAI's collation,
        which stacks samples of one shape (a whole-volume method pads them to one)."""
        from monai.data import list_data_collate

        return list_data_collate(samples)

    def training_loss(self, batch: dict) -> torch.Tensor:
        """Loss of one collated batch of training samples."""
        raise NotImplementedError

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups (a family may give a latent table its own learning rate or no decay)."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def example_batch(self, generator: torch.Generator) -> dict:
        """A synthetic batch shaped like the training loader's (``unetzoo benchmark`` times steps on it)."""
        from unetzoo.data.phantoms import synthetic_case

        n = self.config.train.batch_size * self.samples_per_draw()
        cases = [
            synthetic_case(self.train_patch_size(), self.plan.in_channels, self.num_classes, generator)
            for _ in range(n)
        ]
        return {"image": torch.stack([c[0] for c in cases]), "label": torch.stack([c[1] for c in cases])}

    @classmethod
    def calibration_subjects(cls, method_args: dict) -> int:
        """How many of a fold's training subjects :meth:`calibrate` needs kept out of training (0: none; dense
        methods calibrate nothing). ``method_args``: the run's method arguments (defaults not filled in)."""
        return 0

    def calibrate(self, cases: list[dict], log, out_dir=None) -> dict:
        """Settings chosen after training (e.g. a step count) on the preprocessed ``cases`` of the subjects that
        :meth:`calibration_subjects` kept out of training (never the validation fold the run reports); the
        training writes them into the run's ``config.json`` ``method_args``; figures of the choice may go to
        ``out_dir`` (the run folder). Dense methods choose nothing."""
        return {}

    # ---- inference ------------------------------------------------------------------------------------
    def predict(self, image: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """Class probabilities of preprocessed images (B, C, *S): (B, K, *S) on the image's own voxel grid, or
        (B, K, *grid.shape) on ``grid`` (here: resampled linearly from the voxel grid)."""
        self.model.eval()
        probs = self.sliding_window(image)
        return probs if grid is None else grid.resample(probs)

    def validation_predict(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a preprocessed validation patch (or case) for the per-epoch pseudo Dice; here
        :meth:`predict`. A method whose prediction is costly (fitting at test time) bounds that cost here, so that
        the per-epoch validation stays a small share of the training."""
        return self.predict(image)

    def predict_sequence(self, frames: list[torch.Tensor], grid: Grid | None = None) -> list[torch.Tensor]:
        """Class probabilities of the T preprocessed frames (1, C, *S) of one 3D+t case, each as :meth:`predict`
        returns it; the frames share one geometry, so one ``grid`` fits all. Here: every frame on its own (a
        method with a subject-level state, e.g. one latent code per subject, fits it over all frames)."""
        return [self.predict(frame, grid) for frame in frames]

    def predict_window(self, window: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, K, *window) of one sliding-window patch."""
        raise NotImplementedError

    def sliding_window(self, image: torch.Tensor) -> torch.Tensor:
        """Gaussian-weighted sliding windows (MONAI) over the whole image, optionally averaged over mirrored copies
        (test-time augmentation). A model trained on in-plane strided sub-images (``augment.in_plane_stride`` s)
        predicts each of the s^2 interleaved sub-images (every s-th voxel from offsets i, j along the two in-plane
        axes, :func:`in_plane_axes`) and the results are interleaved back, so every voxel is predicted at the scale
        the model was trained on (the paper tests "as training")."""
        s = self.stride
        if s == 1:
            return self._windows(image)
        first, second = (2 + a for a in self.stride_axes)
        probs = None
        for i in range(min(s, image.shape[first])):
            for j in range(min(s, image.shape[second])):
                index = [slice(None)] * image.dim()
                index[first], index[second] = slice(i, None, s), slice(j, None, s)
                part = self._windows(image[tuple(index)])
                if probs is None:
                    probs = part.new_empty((*part.shape[:2], *image.shape[2:]))
                probs[tuple(index)] = part
        return probs

    def _windows(self, image: torch.Tensor) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        roi = [min(p, s) if p == 1 else p for p, s in zip(self.patch_size, image.shape[2:])]
        return sliding_window_inference(
            image,
            roi_size=roi,
            sw_batch_size=self.inference.sw_batch_size,
            predictor=self._mirrored if self.inference.mirror else self.predict_window,
            overlap=self.inference.overlap,
            mode="gaussian" if self.inference.gaussian else "constant",
        )

    def mirror_axes(self) -> list[int]:
        """Tensor dims that test-time mirroring flips."""
        return [2 + i for i in range(len(self.patch_size))]

    def _mirrored(self, window: torch.Tensor) -> torch.Tensor:
        axes = self.mirror_axes()
        flips = [combo for n in range(len(axes) + 1) for combo in itertools.combinations(axes, n)]
        total = 0
        for dims in flips:
            flipped = window.flip(dims) if dims else window
            probs = self.predict_window(flipped)
            total = total + (probs.flip(dims) if dims else probs)
        return total / len(flips)


def inference_context(method: Method):
    """The autograd context prediction runs in: ``inference_mode`` unless the method fits something at test time."""
    return torch.no_grad() if method.grad_at_inference else torch.inference_mode()
