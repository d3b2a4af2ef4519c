"""NISF training and inference (Stolt-Ansó et al. 2023, arXiv:2309.08643, §3 "Prior Training", "Inference"; the
authors' released code, NILOIDE/Implicit_segmentation).

Training, per step: ``batch_size`` subjects (the paper: one), each a whole preprocessed frame; ``points`` random
voxels of it (0 = every voxel, the paper, which needs batch size 1 since frames differ in size; a CPU needs a
subset: 20,000 by default). Each subject's latent row and the MLP are optimised jointly on Eq. 3, as the
authors' code: ``rec_weight`` x BCE(image) + sum over classes of [binary CE + Dice] on the softmax + 1e-4 x mean
of the latent squared + 1e-4 x sum of the backbone weights squared (heads excluded). The L2 terms replace the
optimizer's weight decay (its groups have none, so AdamW is the paper's Adam); the learning rate is
``train.lr`` (1e-4, the paper). Intensities are min-max normalised to [0, 1] per frame and channel
(Stolt-Ansó et al. 2023, §4).

``rec_weight`` defaults to 10: the paper found "a weighting factor ... to the image reconstruction loss component
yielded inference-time improvements on both image reconstruction and segmentation metrics" (Stolt-Ansó et al.
2023, §3; its value is lost from our copy of the text), and 10 is the value of the authors' configs that weight
the term (config_slurm_rec_weight.yaml at 212511f, config_slurm_rec_weight_ftlr-5*.yaml, config_slurm_incoord.yaml;
one other version tried 100, one 0.1; the code's own default of 1 is the unweighted sum the paper improved on).

Coordinates (a departure, documented): the authors use i / N per axis, which makes the same coordinate mean
different anatomy at another resolution or for another field of view. Here a point's coordinate is its
physical offset from the centre of the preprocessed volume, divided by the dataset's half extent (half the
plan's median shape, in voxels of the plan's common spacing): every preprocessed volume has that spacing, so
the map is in millimetres, the same for any input resolution, and a point of another plane or a finer grid
(``predict(image, grid)``) lands on the same anatomy. Volumes span about [-1, 1]. The origin is the volume's
centre because scanner origins are arbitrary across subjects; a different field of view (a crop) moves it.
Points are voxel centres (the authors' 1e-4 coordinate noise is far below a voxel and left out). Time is a last
coordinate, ``frame_index / num_frames`` (the authors' t / T), 0 for single-frame data; ``predict(image)`` of a
lone frame (the per-epoch validation Dice) uses t = 0, ``predict_sequence`` and :meth:`calibrate` the frame's t.

Inference (Stolt-Ansó et al. 2023, Eq. 4): a new latent N(0, ``latent_std``), the MLP frozen (``tune_backbone``
also tunes the backbone and image head on a copy, as the authors' code does), Adam (``fit_lr`` 1e-4) on the
reconstruction loss (+ latent L2) alone for ``fit_steps`` steps on ``points`` random voxels per step; then the
segmentation head is sampled at every voxel of the image or at the points of ``grid``. ``fit_slices`` K fits on
every K-th slice along ``slice_axis`` only, and reads nothing else, its min-max included (Stolt-Ansó et al. 2023,
Fig. 5, held-out slices). :meth:`calibrate` chooses ``fit_steps`` after training as the step with the best mean
Dice (the paper's 672) and draws the Dice-vs-steps curve (Stolt-Ansó et al. 2023, Fig. 3) into the run folder.
The paper chose it on 50 validation subjects and reported 100 other test subjects; here the ``calibrate_cases``
subjects are drawn from the fold's training cases and kept out of the prior training
(:meth:`calibration_subjects`), so the fold's validation cases, which the run reports, play no part in the choice.

Preprocessing (a departure, documented): the images are the pipeline's, i.e. normalised by modality and, in 3D,
resampled to the plan's common spacing before the coordinates and intensities are read; the paper applies no
preprocessing but the [0, 1] rescaling (Stolt-Ansó et al. 2023, Sec. 4). The common spacing is what makes the
coordinate frame above the same in millimetres for every subject; the per-frame min-max rescaling to [0, 1]
follows it.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unetzoo.errors import UnetzooError
from unetzoo.methods.base import Method, labelled_voxels
from unetzoo.methods.grid import Grid
from unetzoo.models.implicit_unet import voxel_grid

CHUNK = 65536  # points per forward pass when sampling the segmentation
CALIBRATE_CASES = 5  # training subjects kept out of training to choose fit_steps on (the paper: 50 of 1,150)


def minmax(image: torch.Tensor) -> torch.Tensor:
    """Per channel min-max normalisation of (C, *S) or (C, N) to [0, 1] (a constant channel becomes 0)."""
    flat = image.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    scale = (high - low).clamp_min(1e-8)
    return (image - low.view(-1, *[1] * (image.dim() - 1))) / scale.view(-1, *[1] * (image.dim() - 1))


def coordinates(index: torch.Tensor, shape, half_extent: torch.Tensor, time: float = 0.0) -> torch.Tensor:
    """Network inputs (…, d + 1) of continuous voxel indices (…, d) of a volume of ``shape`` (module docstring):
    offset from the volume's centre / the dataset's half extent, then time."""
    centre = (torch.as_tensor([float(s) for s in shape]) - 1) / 2
    spatial = (index - centre.to(index)) / half_extent.to(index)
    return torch.cat([spatial, torch.full_like(spatial[..., :1], float(time))], dim=-1)


class FrameSampler:
    """The training transform: a cached, preprocessed case -> ``coords`` (N, d+1), ``intensity`` (N, C) in [0, 1],
    ``label`` (N,), ``case_index`` (module docstring). ``points`` 0 takes every voxel."""

    def __init__(self, points: int, half_extent: list[float]):
        self.points, self.half_extent = int(points), torch.tensor(half_extent, dtype=torch.float32)

    def __call__(self, case: dict, generator: torch.Generator | None = None) -> dict:
        image = torch.as_tensor(case["image"]).float()
        shape = image.shape[1:]
        total = math.prod(shape)
        pick = torch.randint(total, (self.points,), generator=generator) if self.points else torch.arange(total)
        index = voxel_grid(shape)[pick]
        time = float(case.get("frame_index", 0)) / float(case.get("num_frames", 1))
        return {
            "coords": coordinates(index, shape, self.half_extent, time),
            "intensity": minmax(image).flatten(1)[:, pick].T.contiguous(),
            "label": torch.as_tensor(case["label"]).flatten()[pick].long(),
            "case_index": torch.as_tensor(int(case["case_index"])),
        }


def mean_dice(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> float:
    """Mean Dice over the foreground classes present in prediction or label (NaN when none is), on the labelled
    voxels (label values from ``num_classes`` on, the ignore label, do not count)."""
    prediction, label = prediction[label < num_classes], label[label < num_classes]
    scores = []
    for c in range(1, num_classes):
        p, r = prediction == c, label == c
        total = int(p.sum() + r.sum())
        if total:
            scores.append(2 * int((p & r).sum()) / total)
    return float(np.mean(scores)) if scores else float("nan")


class NISFMethod(Method):
    """Auto-decoder training and latent-fitting inference (module docstring)."""

    whole_volumes = True
    continuous = True
    grad_at_inference = True
    max_validation_patches = 4

    def __init__(
        self,
        model,
        plan,
        config,
        points: int = 20000,
        rec_weight: float = 10.0,
        latent_reg: float = 1e-4,
        weight_reg: float = 1e-4,
        fit_steps: int = 672,
        fit_lr: float = 1e-4,
        tune_backbone: bool = False,
        fit_slices: int = 1,
        slice_axis: int = -1,
        calibrate_steps: int = 1000,
        calibrate_every: int = 50,
        calibrate_cases: int = CALIBRATE_CASES,
        calibrate_voxels: int = 0,
        val_fit_steps: int = 10,
        val_points: int = 2000,
    ):
        super().__init__(model, plan, config)
        if (
            points < 0
            or fit_steps < 0
            or val_fit_steps < 0
            or val_points < 0
            or calibrate_voxels < 0
            or fit_slices < 1
            or calibrate_steps < 1
            or calibrate_every < 1
            or calibrate_cases < 1
        ):
            raise UnetzooError(
                "method_args: points, fit_steps, val_fit_steps, val_points >= 0; fit_slices, calibrate_steps, calibrate_every, calibrate_cases >= 1"
            )
        if points == 0 and config.train.batch_size > 1:
            raise UnetzooError(
                "method_args.points=0 (every voxel, the paper) needs --batch-size 1: frames differ in size"
            )
        if not -plan.spatial_dims <= slice_axis < plan.spatial_dims:
            raise UnetzooError(f"method_args.slice_axis {slice_axis} is not an axis of {plan.spatial_dims}D data")
        self.points, self.rec_weight, self.latent_reg, self.weight_reg = (
            int(points),
            float(rec_weight),
            float(latent_reg),
            float(weight_reg),
        )
        self.fit_steps, self.fit_lr, self.tune_backbone = int(fit_steps), float(fit_lr), bool(tune_backbone)
        self.fit_slices, self.slice_axis = int(fit_slices), int(slice_axis) % plan.spatial_dims
        self.calibrate_steps, self.calibrate_every = (
            int(calibrate_steps),
            int(calibrate_every),
        )  # calibrate_cases: calibration_subjects
        self.calibrate_voxels, self.val_fit_steps, self.val_points = (
            int(calibrate_voxels),
            int(val_fit_steps),
            int(val_points),
        )
        self.half_extent = torch.tensor([float(s) / 2 for s in plan.median_shape])

    # ---- training -------------------------------------------------------------------------------------
    def train_transform(self):
        return FrameSampler(self.points, self.half_extent.tolist())

    def reconstruction_loss(self, image_logits: torch.Tensor, intensity: torch.Tensor) -> torch.Tensor:
        """``rec_weight`` x BCE of the sigmoid image head against intensities in [0, 1]."""
        return self.rec_weight * F.binary_cross_entropy_with_logits(image_logits.float(), intensity.float())

    def segmentation_loss(self, seg_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Sum over classes of binary CE + Dice (MONAI's smoothing 1e-5) on the softmax, per subject, averaged; over
        the labelled points only (not those of the ignore label)."""
        label, mask = labelled_voxels(label, seg_logits.shape[-1])  # (B, N)
        probs = torch.softmax(seg_logits.float(), dim=-1) * mask[..., None]  # (B, N, K)
        onehot = F.one_hot(label, probs.shape[-1]).float() * mask[..., None]
        # binary CE written out (F.binary_cross_entropy refuses CUDA autocast); the clamp keeps log and its
        # gradient finite where the softmax saturates (log(1 - p) at p = 1 gave NaN gradients)
        p = probs.clamp(1e-6, 1 - 1e-6)
        bce = -(onehot * p.log() + (1 - onehot) * (1 - p).log()) * mask[..., None]
        bce = bce.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        dice = 1 - (2 * (probs * onehot).sum(1) + 1e-5) / (probs.sum(1) + onehot.sum(1) + 1e-5)
        return (bce + dice).sum(-1).mean()

    def regularisation(self, latent: torch.Tensor, model=None) -> torch.Tensor:
        """``latent_reg`` x mean(h^2), plus ``weight_reg`` x sum of the squared backbone weights of ``model``."""
        total = self.latent_reg * latent.pow(2).mean()
        if model is not None:
            total = total + self.weight_reg * sum(p.pow(2).sum() for b in model.backbones() for p in b.parameters())
        return total

    def training_loss(self, batch: dict) -> torch.Tensor:
        latent = self.model.latents(torch.as_tensor(batch["case_index"]).long().view(-1))
        seg_logits, image_logits = self.model(batch["coords"].float(), latent)
        return (
            self.reconstruction_loss(image_logits, batch["intensity"])
            + self.segmentation_loss(seg_logits, batch["label"])
            + self.regularisation(latent, self.model)
        )

    def parameter_groups(self) -> list[dict]:
        """Every tensor (MLP and latent table), no weight decay: the loss holds the paper's L2 terms."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "weight_decay": 0.0}]

    def example_batch(self, generator: torch.Generator) -> dict:
        from unetzoo.data.phantoms import synthetic_case

        sampler = self.train_transform()
        items = []
        for i in range(self.config.train.batch_size):
            image, label = synthetic_case(self.train_patch_size(), self.plan.in_channels, self.num_classes, generator)
            items.append(
                sampler(
                    {"image": image, "label": label, "case_index": i % self.model.latents.num_embeddings}, generator
                )
            )
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    # ---- inference ------------------------------------------------------------------------------------
    def fit_index(self, shape) -> torch.Tensor:
        """Voxels (flat indices) the latent is fitted on: every voxel, or those of every ``fit_slices``-th slice."""
        index = voxel_grid(shape)
        keep = torch.remainder(index[:, self.slice_axis], self.fit_slices) == 0
        return keep.nonzero()[:, 0]

    def fit_latent(
        self,
        frames: list[torch.Tensor],
        steps: int,
        observe=None,
        every: int = 1,
        times: list[float] | None = None,
        points: int | None = None,
    ):
        """Fit one new latent to the ``frames`` (C, *S) of a subject (one for 3D data; frame f of T at time f / T
        unless ``times`` says otherwise) on the reconstruction loss for ``steps`` steps (Stolt-Ansó et al. 2023,
        Eq. 4) of ``points`` random voxels (default ``self.points``); returns
        ``(model, latent)``, the model a tuned copy when ``tune_backbone``. ``observe(step, model, latent)`` is
        called at step 0 and every ``every`` steps. Only the voxels of :meth:`fit_index` are read: with
        ``fit_slices`` the min-max normalisation too comes from the seen slices alone (the held-out slices must
        not inform the fit, Stolt-Ansó et al. 2023, Fig. 5)."""
        times = [t / len(frames) for t in range(len(frames))] if times is None else times
        model = copy.deepcopy(self.model) if self.tune_backbone else self.model
        model.eval()
        generator = torch.Generator().manual_seed(self.config.seed)  # the same image gives the same fit
        device = frames[0].device
        shape = frames[0].shape[1:]
        seen = self.fit_index(shape).to(device)  # the only voxels read, the min-max included
        intensity = torch.cat([minmax(f.float().flatten(1)[:, seen]).T for f in frames])
        coords = torch.cat([coordinates(voxel_grid(shape, device)[seen], shape, self.half_extent, t) for t in times])
        count = len(intensity)
        latent = (torch.randn(1, model.latent_size, generator=generator) * model.latent_std).to(device).requires_grad_()
        params = [latent] + (
            [p for m in (*model.backbones(), model.image_head) for p in m.parameters()] if self.tune_backbone else []
        )
        optimizer = torch.optim.Adam(params, lr=self.fit_lr)
        if observe is not None:
            observe(0, model, latent.detach())
        points = self.points if points is None else points
        with torch.enable_grad():
            for step in range(1, steps + 1):
                few = points and points < count
                pick = (
                    torch.randint(count, (points,), generator=generator).to(device)
                    if few
                    else torch.arange(count, device=device)
                )
                _, image_logits = model(coords[pick][None], latent)
                loss = self.reconstruction_loss(image_logits, intensity[pick][None])
                loss = loss + self.regularisation(latent, model if self.tune_backbone else None)
                for p, g in zip(params, torch.autograd.grad(loss, params)):  # gradients of these tensors only
                    p.grad = g
                optimizer.step()
                if observe is not None and step % every == 0:
                    observe(step, model, latent.detach())
        return model, latent.detach()

    @torch.no_grad()
    def segment(self, model, latent: torch.Tensor, index: torch.Tensor, shape, time: float = 0.0) -> torch.Tensor:
        """Class probabilities (K, *index.shape[:-1]) at continuous voxel indices ``index`` (…, d) of a volume of
        ``shape``, in chunks."""
        flat = index.reshape(-1, index.shape[-1])
        out = []
        for start in range(0, flat.shape[0], CHUNK):
            coords = coordinates(flat[start : start + CHUNK], shape, self.half_extent, time)
            out.append(torch.softmax(model(coords[None], latent)[0][0].float(), dim=-1))
        return torch.cat(out).T.reshape(-1, *index.shape[:-1])

    def predict_window(self, window: torch.Tensor) -> torch.Tensor:
        """The decoding part of :meth:`predict` (no fit): every voxel of a window with the initial latent 0 (what
        ``unetzoo benchmark`` counts as the MACs of one patch)."""
        shape = window.shape[2:]
        latent = window.new_zeros(1, self.model.latent_size)
        return torch.stack(
            [self.segment(self.model, latent, voxel_grid(shape).reshape(*shape, len(shape)), shape) for _ in window]
        )

    def predict(
        self, image: torch.Tensor, grid: Grid | None = None, steps: int | None = None, points: int | None = None
    ) -> torch.Tensor:
        """Fit a latent per image (``fit_steps`` steps of ``points`` voxels, or the given ones), then sample the
        segmentation on its voxels or at ``grid``'s points."""
        self.model.eval()
        out = []
        for x in image:
            shape = x.shape[1:]
            model, latent = self.fit_latent([x], self.fit_steps if steps is None else steps, points=points)
            index = voxel_grid(shape).reshape(*shape, len(shape)) if grid is None else grid.points()
            out.append(self.segment(model, latent, index.to(x.device), shape))
        return torch.stack(out)

    def validation_predict(self, image: torch.Tensor) -> torch.Tensor:
        """:meth:`predict` with ``val_fit_steps`` (10) latent-fitting steps of ``val_points`` (2,000) voxels, on at most
        :attr:`max_validation_patches` frames: the per-epoch pseudo Dice. The paper's 672 steps of 20,000 voxels on
        every validation frame after every epoch cost far more than the training itself (measured: a 2-step training
        on 4 phantom subjects had not finished its first validation after 15 minutes; one such step takes ~4 s on a
        loaded CPU thread)."""
        return self.predict(image, steps=self.val_fit_steps, points=self.val_points)

    def predict_sequence(self, frames: list[torch.Tensor], grid: Grid | None = None) -> list[torch.Tensor]:
        """The T frames (1, C, *S) of one 3D+t subject: ONE latent fitted over all of them (Stolt-Ansó et al. 2023,
        §3, t the 4th coordinate), then every frame's segmentation sampled at its time on its voxels or at
        ``grid``'s points."""
        self.model.eval()
        shape = frames[0].shape[2:]
        model, latent = self.fit_latent([f[0] for f in frames], self.fit_steps)
        index = (voxel_grid(shape).reshape(*shape, len(shape)) if grid is None else grid.points()).to(frames[0].device)
        return [self.segment(model, latent, index, shape, t / len(frames))[None] for t in range(len(frames))]

    @classmethod
    def calibration_subjects(cls, method_args: dict) -> int:
        """``calibrate_cases`` training subjects are kept out of the prior training for :meth:`calibrate`."""
        return int(method_args.get("calibrate_cases", CALIBRATE_CASES))

    def calibrate(self, cases: list[dict], log, out_dir: Path | None = None) -> dict:
        """``fit_steps`` = the step (0, every, 2 every ... ``calibrate_steps``) with the best mean foreground Dice
        over ``cases``, the frames of the subjects kept out of training (Stolt-Ansó et al. 2023, §4: "we chose this
        parameter based on the Dice score of the best validation run", 672 steps), on every voxel or on
        ``calibrate_voxels`` random ones; the curve and the cases' names are saved as ``fit_curve.png`` /
        ``fit_curve.json`` in ``out_dir`` (Stolt-Ansó et al. 2023, Fig. 3)."""
        self.model.eval()
        curves, steps = [], []
        for case in cases:
            image = torch.as_tensor(case["image"]).float()
            label = torch.as_tensor(case["label"])[0].long()
            time = float(case.get("frame_index", 0)) / float(case.get("num_frames", 1))  # a frame of a 3D+t case
            shape = image.shape[1:]
            index, label = voxel_grid(shape), label.flatten()
            if 0 < self.calibrate_voxels < len(label):  # a fixed random subset of voxels (a CPU's budget)
                keep = torch.randperm(len(label), generator=torch.Generator().manual_seed(self.config.seed))[
                    : self.calibrate_voxels
                ]
                index, label = index[keep], label[keep]
            curve, steps = [], []

            def observe(step, model, latent):
                steps.append(step)
                curve.append(
                    mean_dice(self.segment(model, latent, index, shape, time).argmax(0), label, self.num_classes)
                )

            self.fit_latent([image], self.calibrate_steps, observe, self.calibrate_every, times=[time])
            curves.append(curve)
        mean = np.nanmean(np.array(curves, dtype=np.float64), axis=0) if curves else np.zeros(1)
        mean = np.nan_to_num(mean, nan=-1.0)
        best = int(np.argmax(mean))
        log.info(
            f"nisf calibration: best mean Dice {mean[best]:.4f} after {steps[best]} latent-fitting steps ({len(curves)} cases)"
        )
        if out_dir is not None:
            save_curve(Path(out_dir), steps, curves, steps[best], [str(c.get("name", "")) for c in cases])
        return {"fit_steps": int(steps[best])}


def save_curve(out_dir: Path, steps: list[int], curves: list[list[float]], best: int, names: list[str]) -> None:
    """``fit_curve.json`` and ``fit_curve.png``: the calibration cases' Dice against latent-fitting steps
    (Stolt-Ansó et al. 2023, Fig. 3), with the cases' ``names``."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unetzoo.io import write_bytes, write_text

    write_text(
        out_dir / "fit_curve.json",
        json.dumps({"cases": names, "steps": steps, "dice_per_case": curves, "best_steps": best}, indent=1),
    )
    fig, ax = plt.subplots(figsize=(7, 4))
    for curve in curves:
        ax.plot(steps, curve, color="0.7", linewidth=0.8)
    ax.plot(
        steps,
        np.nanmean(np.array(curves, dtype=np.float64), axis=0),
        color="tab:green",
        linewidth=2,
        label="mean over the calibration cases",
    )
    ax.axvline(best, color="tab:red", linestyle="--", label=f"chosen: {best} steps")
    ax.set_xlabel("latent-fitting steps")
    ax.set_ylabel("mean foreground Dice")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    write_bytes(out_dir / "fit_curve.png", buffer.getvalue())
