"""unetzoo export: the exported network computes what the PyTorch network computes; what cannot be exported says why."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import run_cli
from unetzoo.config import Config
from unetzoo.data.plan import Plan
from unetzoo.errors import UnetzooError
from unetzoo.inference import Predictor
from unetzoo.inference.export import export_method, export_run
from unetzoo.methods import build_method
from unetzoo.models import list_models, model_info


def _window(predictor: Predictor) -> torch.Tensor:
    return torch.randn(
        2, predictor.plan.in_channels, *predictor.plan.patch_size, generator=torch.Generator().manual_seed(0)
    )


@pytest.mark.slow
def test_torchscript_export_equals_pytorch_and_carries_the_plan(trained_run, tmp_path):
    result = run_cli("export", trained_run, tmp_path / "ts", "--format", "torchscript")
    assert result.returncode == 0, result.stderr[-2000:]
    predictor = Predictor(trained_run)
    x = _window(predictor)
    with torch.no_grad():
        expected = predictor.method.model(x)
        exported = torch.jit.load(str(tmp_path / "ts" / "network.pt"))(x)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)
    assert Plan.load(tmp_path / "ts" / "plan.json") == predictor.plan
    description = json.loads((tmp_path / "ts" / "export.json").read_text())
    assert description["input"]["shape"] == [-1, 1, *predictor.plan.patch_size]
    assert (
        description["output"]["labels"] == predictor.plan.labels
        and description["target_spacing"] == predictor.plan.target_spacing
    )


@pytest.mark.slow
def test_onnx_export_equals_pytorch(trained_run, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnx export is an optional extra: pip install 'unetzoo[onnx]'")
    export_run(trained_run, tmp_path / "onnx", fmt="onnx")
    predictor = Predictor(trained_run)
    x = _window(predictor)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "network.onnx"))
    (logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, predictor.method.model(x).numpy(), atol=1e-4)


@pytest.mark.slow
def test_every_exportable_model_traces_and_the_others_refuse(tmp_path, monkeypatch):
    plan = Plan.synthetic([16, 16], channels=1, classes=3)
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    for name in list_models():
        if 2 not in model_info(name).spatial_dims:
            continue
        method, _ = build_method(Config(model=name), plan)
        if not method.exportable:
            with pytest.raises(UnetzooError, match=f"model '{name}' cannot be exported"):
                export_method(method, tmp_path / name, "torchscript")
            continue
        export_method(method, tmp_path / name, "torchscript")
        with torch.no_grad():
            torch.testing.assert_close(
                torch.jit.load(str(tmp_path / name / "network.pt"))(x), method.model.eval()(x), atol=1e-5, rtol=1e-5
            )
    assert not build_method(Config(model="implicit-unet"), plan)[0].exportable
    monkeypatch.setitem(sys.modules, "onnx", None)  # onnx not installed
    with pytest.raises(UnetzooError, match=r"--format onnx needs the onnx package: pip install 'unetzoo\[onnx\]'"):
        export_method(build_method(Config(model="unet"), plan)[0], tmp_path / "no_onnx", "onnx")
