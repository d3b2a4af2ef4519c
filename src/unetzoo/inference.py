"""Predict images with a trained run: preprocess, the method's full inference procedure, back to the input's
exact geometry (MONAI ``Invertd`` undoes resampling and reorientation on the probabilities), argmax, save.

NIfTI predictions keep the input's shape, affine and header; PNG predictions the input's size. A case
already predicted is skipped unless ``overwrite``; files are written under a temporary name and renamed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from unetzoo.config import Config
from unetzoo.data.datasets import prediction_inputs
from unetzoo.data.transforms import preprocessing
from unetzoo.errors import UnetzooError, file_error
from unetzoo.io import NIFTI_ENDINGS, file_ending, write_array, write_bytes
from unetzoo.methods import build_method


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
    """A trained run ready to predict: ``Predictor(run_dir).predict_cases({name: [files]}, out_dir)``."""

    def __init__(self, run_dir: str | Path, device: str = "cpu", checkpoint: str = "best", overlap: float | None = None, mirror: bool | None = None, upsample: int = 1):
        run_dir = Path(run_dir)
        for name in ("config.json", "plan.json"):
            if not (run_dir / name).is_file():
                raise file_error(run_dir / name, "missing: not a unetzoo run folder (train one with `unetzoo train`)")
        self.config = Config.load(run_dir / "config.json")
        if overlap is not None:
            self.config.inference.overlap = overlap
        if mirror is not None:
            self.config.inference.mirror = mirror
        self.plan = json.loads((run_dir / "plan.json").read_text())
        self.device = resolve_device(device)
        self.method = build_method(self.config, self.plan)
        self.upsample = int(upsample)
        if self.upsample < 1:
            raise UnetzooError(f"--upsample must be a positive integer, got {upsample}")
        if self.upsample > 1 and not getattr(self.method, "continuous", False):
            raise UnetzooError(f"--upsample needs a model with a continuous decoder (implicit-unet); {self.config.model!r} predicts on its voxel grid only")
        path = run_dir / f"checkpoint_{checkpoint}.pt"
        if not path.is_file():
            path = run_dir / "checkpoint_last.pt"
        if not path.is_file():
            raise file_error(run_dir, "no checkpoint_best.pt or checkpoint_last.pt: the run has not finished an epoch")
        load_weights(self.method.model, path)
        self.method.model.to(self.device).eval()
        self.preprocess = preprocessing(self.plan, with_label=False)

    def predict_probabilities(self, paths: list[Path]) -> torch.Tensor:
        """Class probabilities (K, *spatial) of one case, in the input file's own voxel grid."""
        data = self.preprocess({"image": [str(p) for p in paths]})
        image = data["image"]
        if self.upsample > 1:  # see unetzoo.upsampling: fine preprocessed grid -> fine grid of the input file
            from unetzoo.upsampling import resample_to_grid, upsampled_affine

            probs = self.method.predict(image.as_tensor()[None].to(self.device), upsample=self.upsample)[0].float().cpu()
            if self.plan["spatial_dims"] == 3:
                reference = nib_geometry(paths[0])
                probs = resample_to_grid(probs, upsampled_affine(image.affine.numpy(), self.upsample),
                                         upsampled_affine(reference[0], self.upsample), [self.upsample * s for s in reference[1]])
            return probs
        probs = self.method.predict(image.as_tensor()[None].to(self.device))[0].float().cpu()
        if self.plan["spatial_dims"] == 3:
            pred = MetaTensor(probs, affine=image.affine, meta=dict(image.meta))
            pred.applied_operations = list(image.applied_operations)
            data["pred"] = pred
            data = Invertd("pred", transform=self.preprocess, orig_keys="image", nearest_interp=False)(data)
            probs = data["pred"].as_tensor()
        return probs

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
            save_prediction(probs.argmax(0).numpy(), paths[0], target, upsample=self.upsample)
            if save_probabilities:
                save_npz(out_dir / f"{name}.npz", probabilities=probs.numpy().astype(np.float16))
            written.append(target)
        return written


def nib_geometry(path: Path) -> tuple[np.ndarray, tuple[int, ...]]:
    """(affine, spatial shape) of a NIfTI file."""
    import nibabel as nib

    ref = nib.load(str(path))
    return np.asarray(ref.affine, dtype=np.float64), tuple(int(s) for s in ref.shape[:3])


def save_prediction(label: np.ndarray, reference_path: Path, target: Path, upsample: int = 1) -> Path:
    """Write ``label`` with the reference file's geometry: NIfTI shape/affine/header, or PNG size; with
    ``upsample`` F, the F-times finer grid of the same extent (:func:`unetzoo.upsampling.upsampled_affine`)."""
    if file_ending(reference_path) in NIFTI_ENDINGS:
        import nibabel as nib

        ref = nib.load(str(reference_path))
        shape = ref.shape[:3]
        affine, header = ref.affine, ref.header
    else:
        from PIL import Image as PILImage

        with PILImage.open(reference_path) as pil:
            shape = (pil.height, pil.width)
        affine, header = None, None
    if upsample > 1:
        from unetzoo.upsampling import upsampled_affine

        shape = tuple(upsample * s for s in shape)
        affine = upsampled_affine(affine, upsample) if affine is not None else None
    if tuple(label.shape) != tuple(shape):
        raise file_error(reference_path, f"internal error: prediction shape {label.shape} != input shape {shape}")
    return write_array(label.astype(np.uint8), target, affine, header)


def save_npz(path: Path, **arrays) -> Path:
    """``np.savez_compressed`` written atomically (temporary name in the same folder, then rename)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())


def predict(run_dir, input_path, output_dir, device="cpu", overwrite=False, save_probabilities=False, mirror=None, overlap=None, upsample=1) -> list[Path]:
    """Predict a folder (``CASE_0000.ext`` or MSD ``NAME.ext`` files) or one file into ``output_dir``; ``upsample``
    F > 1 (continuous-decoder models only) writes F-times finer outputs of the same world extent."""
    predictor = Predictor(run_dir, device=device, overlap=overlap, mirror=mirror, upsample=upsample)
    cases = prediction_inputs(input_path, predictor.plan["n_channel_files"])
    return predictor.predict_cases(cases, output_dir, overwrite=overwrite, save_probabilities=save_probabilities)
