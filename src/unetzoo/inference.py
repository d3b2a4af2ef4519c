"""Predict images with a trained run: preprocess, the method's full inference procedure, back to the input's
exact geometry (MONAI ``Invertd`` undoes resampling and reorientation on the probabilities), argmax, save.

NIfTI predictions keep the input's shape, affine and header; PNG predictions the input's size (or, on request,
another grid: ``--upsample``, ``--grid``; see :class:`unetzoo.methods.Grid`). A case already predicted is skipped
unless ``overwrite``; files are written under a temporary name and renamed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from unetzoo.config import Config
from unetzoo.data.datasets import prediction_inputs
from unetzoo.data.plan import Plan
from unetzoo.data.transforms import preprocessing
from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import NIFTI_ENDINGS, file_ending, write_array, write_bytes
from unetzoo.methods import Grid, build_method, inference_context
from unetzoo.methods.grid import refined_affine


def resolve_device(name: str) -> torch.device:
    if name in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise UnetzooError("--device cuda requested but no CUDA device is available")
        return torch.device("cuda")
    if name != "cpu":
        raise UnetzooError(f"unknown device {name!r} (cpu or cuda)")
    return torch.device("cpu")


def load_weights(model: torch.nn.Module, checkpoint_path: Path) -> dict:
    """Load the model weights of a Lightning checkpoint (keys ``model.*``); returns the checkpoint."""
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise file_error(checkpoint_path, f"cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return checkpoint


class Predictor:
    """A trained run ready to predict: ``Predictor(run_dir).predict_cases({name: [files]}, out_dir)``.

    Outputs lie on the input file's own grid, or on a target grid: ``upsample`` F > 1 refines the input's grid
    F times (same world extent), ``grid_reference`` (a NIfTI file) takes that image's grid (another plane, another
    resolution). Methods with a continuous function sample it there; the others' probabilities are resampled.
    """

    def __init__(self, run_dir: str | Path, device: str = "cpu", checkpoint: str = "best", overlap: float | None = None,
                 mirror: bool | None = None, upsample: int = 1, grid_reference: str | Path | None = None):
        run_dir = Path(run_dir)
        for name in ("config.json", "plan.json"):
            if not (run_dir / name).is_file():
                raise file_error(run_dir / name, "missing: not a unetzoo run folder (train one with `unetzoo train`)")
        config = Config.load(run_dir / "config.json")
        if overlap is not None:
            config.inference.overlap = overlap
        if mirror is not None:
            config.inference.mirror = mirror
        self.plan = Plan.load(run_dir / "plan.json")
        self.device = resolve_device(device)
        self.method, self.config = build_method(config, self.plan)
        self.upsample = int(upsample)
        if self.upsample < 1:
            raise UnetzooError(f"--upsample must be a positive integer, got {upsample}")
        self.grid_reference = Path(grid_reference) if grid_reference is not None else None
        if self.grid_reference is not None:
            if self.plan.spatial_dims != 3 or file_ending(self.grid_reference) not in NIFTI_ENDINGS:
                raise file_error(self.grid_reference, "--grid needs a NIfTI reference image and a run trained on 3D NIfTI data")
            if not self.grid_reference.is_file():
                raise file_error(self.grid_reference, "--grid reference image not found")
        path = run_dir / f"checkpoint_{checkpoint}.pt"
        if not path.is_file():
            path = run_dir / "checkpoint_last.pt"
        if not path.is_file():
            raise file_error(run_dir, "no checkpoint_best.pt or checkpoint_last.pt: the run has not finished an epoch")
        load_weights(self.method.model, path)
        self.method.model.to(self.device).eval()
        self.preprocess = preprocessing(self.plan, with_label=False)

    def target_geometry(self, paths: list[Path]) -> tuple[np.ndarray | None, tuple[int, ...], object]:
        """(affine, shape, header) of the output of a case: the --grid reference's, or the input's (refined F
        times with --upsample); PNG inputs have no affine or header."""
        affine, shape, header = file_geometry(self.grid_reference or paths[0])
        if self.upsample > 1:
            shape = tuple(self.upsample * s for s in shape)
            affine = refined_affine(affine, self.upsample) if affine is not None else None
        return affine, shape, header

    def predict_probabilities(self, paths: list[Path]) -> torch.Tensor:
        """Class probabilities (K, *spatial) of one case on its output grid (:meth:`target_geometry`)."""
        data = self.preprocess({"image": [str(p) for p in paths]})
        image = data["image"]
        x = image.as_tensor()[None].to(self.device)
        if self.upsample == 1 and self.grid_reference is None:
            with inference_context(self.method):
                probs = self.method.predict(x)[0].float().cpu()
            if self.plan.spatial_dims == 3:  # undo resampling and reorientation exactly (MONAI Invertd)
                pred = MetaTensor(probs, affine=image.affine, meta=dict(image.meta))
                pred.applied_operations = list(image.applied_operations)
                data["pred"] = pred
                data = Invertd("pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)(data)
                probs = data["pred"].as_tensor()
            return probs
        affine, shape, _ = self.target_geometry(paths)
        if self.plan.spatial_dims == 3:
            grid = Grid.between(image.affine.numpy(), affine, shape)
        else:  # a PNG is predicted in its own pixel frame: only refinement
            grid = Grid.refinement(image.shape[1:], self.upsample)
        with inference_context(self.method):
            return self.method.predict(x, grid)[0].float().cpu()

    def predict_cases(self, cases: dict[str, list[Path]], out_dir: str | Path, overwrite: bool = False, save_probabilities: bool = False) -> list[Path]:
        """Predict every case into ``out_dir/CASE.<input ending>``; returns the written (or kept) files."""
        from tqdm import tqdm

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name, paths in tqdm(sorted(cases.items()), desc="predicting", unit="case", disable=len(cases) < 2):
            target = out_dir / f"{name}{file_ending(paths[0])}"
            if target.exists() and not overwrite:
                written.append(target)
                continue
            probs = self.predict_probabilities(paths)
            affine, shape, header = self.target_geometry(paths)
            label = probs.argmax(0).numpy()
            if tuple(label.shape) != tuple(shape):
                raise file_error(paths[0], f"internal error: prediction shape {label.shape} != output shape {shape}")
            write_array(label.astype(np.uint8), target, affine, header)
            if save_probabilities:
                save_npz(out_dir / f"{name}.npz", probabilities=probs.numpy().astype(np.float16))
            written.append(target)
        return written


def file_geometry(path: Path) -> tuple[np.ndarray | None, tuple[int, ...], object]:
    """(affine, spatial shape, header) of a NIfTI file; (None, (H, W), None) of a PNG."""
    if file_ending(path) in NIFTI_ENDINGS:
        import nibabel as nib

        ref = nib.load(str(path))
        return np.asarray(ref.affine, dtype=np.float64), tuple(int(s) for s in ref.shape[:3]), ref.header
    from PIL import Image as PILImage

    with PILImage.open(path) as pil:
        return None, (pil.height, pil.width), None


def save_npz(path: Path, **arrays) -> Path:
    """``np.savez_compressed`` written atomically (temporary name in the same folder, then rename)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())


def predict(run_dir, input_path, output_dir, device="cpu", overwrite=False, save_probabilities=False, mirror=None, overlap=None,
            upsample=1, grid_reference=None) -> list[Path]:
    """Predict a folder (``CASE_0000.ext`` or MSD ``NAME.ext`` files) or one file into ``output_dir``; ``upsample``
    F > 1 writes F-times finer outputs of the same world extent, ``grid_reference`` outputs on that image's grid."""
    predictor = Predictor(run_dir, device=device, overlap=overlap, mirror=mirror, upsample=upsample, grid_reference=grid_reference)
    cases = prediction_inputs(input_path, predictor.plan.n_channel_files)
    return predictor.predict_cases(cases, output_dir, overwrite=overwrite, save_probabilities=save_probabilities)
