"""Export a trained run's network for runtimes without unetzoo: TorchScript or ONNX, with the plan beside it.

The exported network maps one sliding window ``(N, C, *patch)`` of a preprocessed image to logits
``(N, K, *patch)``; a softmax over axis 1 gives the class probabilities. Everything around it is written as data
in the output folder: ``plan.json`` (labels, channels, target spacing, normalisation statistics, patch),
``config.json`` (the run's resolved configuration) and ``export.json`` (what to do before and after the network).
Only methods whose prediction is the network alone on each window (``Method.exportable``) can be exported;
the others (implicit decoders that sample points, fitted latent codes) refuse with the reason.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from unetzoo.errors import UnetzooError
from unetzoo.io import output_folder, write_bytes, write_text
from unetzoo.methods import Method

FORMATS = {"torchscript": "network.pt", "onnx": "network.onnx"}
ONNX_OPSET = 17


def export_run(
    run_dir: str | Path, out_dir: str | Path, fmt: str = "torchscript", checkpoint: str | None = None
) -> Path:
    """Export the network of ``run_dir`` (its ``checkpoint``: None the run's reported weights, its ``train.select``;
    "best" falls back to the last one with a warning; ``export.json`` names the file used) into ``out_dir``; returns
    the network file."""
    from unetzoo.config import PredictConfig
    from unetzoo.inference.predictor import Predictor

    predictor = Predictor(run_dir, options=PredictConfig(checkpoint=checkpoint))
    out_dir = Path(out_dir)
    path = export_method(predictor.method, out_dir, fmt, checkpoint=predictor.checkpoint_path)
    predictor.plan.save(out_dir / "plan.json")
    predictor.config.save(out_dir / "config.json")
    return path


def export_method(method: Method, out_dir: Path, fmt: str, checkpoint: Path | None = None) -> Path:
    """Write ``method``'s network in ``fmt`` and ``export.json`` into ``out_dir``; returns the network file.
    ``checkpoint``, the file the weights came from, is recorded in ``export.json`` (null for a method in memory)."""
    if fmt not in FORMATS:
        raise UnetzooError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    if not method.exportable:
        raise UnetzooError(
            f"model {method.config.model!r} cannot be exported: its {type(method).__name__} predicts with more than "
            "the network on each window (see its method's predict)"
        )
    model = method.model.cpu().eval()
    window = torch.zeros(1, method.plan.in_channels, *method.patch_size)
    buffer = io.BytesIO()
    with torch.no_grad():
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, window), buffer)
        else:
            try:
                import onnx  # noqa: F401  (the exporter writes ONNX protobufs)
            except ImportError:
                raise UnetzooError(
                    "--format onnx needs the onnx package: pip install 'unetzoo[onnx]' (or use --format torchscript)"
                ) from None
            torch.onnx.export(
                model,
                (window,),
                buffer,
                input_names=["image"],
                output_names=["logits"],
                opset_version=ONNX_OPSET,
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                dynamo=False,
            )
    out_dir = output_folder(out_dir)
    path = write_bytes(out_dir / FORMATS[fmt], buffer.getvalue())
    plan, inference = method.plan, method.config.inference
    description = {
        "model": method.config.model,
        "format": fmt,
        "network": path.name,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint is not None else None,
        "input": {"name": "image", "shape": [-1, plan.in_channels, *method.patch_size], "channels": plan.channel_names},
        "output": {
            "name": "logits",
            "shape": [-1, plan.num_classes, *method.patch_size],
            "labels": plan.labels,
            "probabilities": "softmax over axis 1",
        },
        "preprocessing": "read channel-first; normalise each channel by its modality (CT: clip to plan.json ct_stats "
        "p00_5..p99_5, subtract mean, divide by std; R/G/B: divide by 255; other: z-score over the image, "
        "over nonzero voxels when fewer than 90 % are nonzero); 3D: reorient to RAS and resample to target_spacing",
        "target_spacing": plan.target_spacing,
        "inference": {
            "sliding_window_overlap": inference.overlap,
            "gaussian_weighting": inference.gaussian,
            "mirror": inference.mirror,
        },
        "postprocessing": "average the windows' probabilities, undo the resampling and reorientation, argmax -> label ids of output.labels",
    }
    write_text(out_dir / "export.json", json.dumps(description, indent=2))
    return path
