"""The cost benchmark: figures scale as they must, the three files are written, every method plugs in."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import run_cli
from unetzoo.config import Config
from unetzoo.data.phantoms import synthetic_case
from unetzoo.data.topology import divisor
from unetzoo.errors import UnetzooError
from unetzoo.experiments.benchmark import FIGURES, benchmark_models, format_table, synthetic_plan
from unetzoo.experiments.benchmark_worker import measure_infer
from unetzoo.training.step_timer import measure_train


def tiny(model: str = "unet") -> Config:
    config = Config(model=model)
    config.model_args = {"n_stages": 3, "base_features": 8}
    return config


@pytest.mark.slow
def test_doubling_the_patch_grows_memory_and_macs_but_not_parameters():
    """Acceptance: patch 16^3 -> 32^3 (8x the voxels) in fresh subprocesses."""
    rows = {}
    for edge in (16, 32):
        plan = synthetic_plan([1, 32, 32, 32], patch=[edge] * 3)
        result = benchmark_models(
            ["unet"], plan, config=tiny(), warmup=1, steps=1, phases=("train",), log=lambda _m: None
        )
        rows[edge] = result["models"][0]
        assert "errors" not in rows[edge], rows[edge].get("errors")
    small, large = rows[16], rows[32]
    assert small["params"] == large["params"] > 0
    assert large["macs"] / small["macs"] == pytest.approx(8, rel=0.05)  # convolutions scale with the voxels
    assert large["train_peak_mem_mb"] > 1.5 * small["train_peak_mem_mb"] > 0
    assert large["train_patch"] == [32, 32, 32] and large["train_batch"] == 2


@pytest.mark.slow
def test_cli_writes_json_csv_png_with_positive_figures(tmp_path):
    out = tmp_path / "bench"
    proc = run_cli(
        "benchmark",
        "--models",
        "unet,unet2d-slices",
        "--shape",
        "1",
        "16",
        "16",
        "16",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--set",
        "model_args.n_stages=2",
        "--set",
        "model_args.base_features=8",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "benchmark.json").read_text())
    assert [m["model"] for m in result["models"]] == ["unet", "unet2d-slices"]
    for row in result["models"]:
        for figure in FIGURES:
            assert row[figure] > 0, (row["model"], figure)
    assert {"device", "torch", "threads"} <= set(result) and result["device"] == "cpu" and result["threads"] >= 1
    assert result["patch"] == [16, 16, 16] and result["batch_size"] == 2 and result["infer_shape"] == [16, 16, 16]
    # the slice method's step is its loader's batch: batch_size * 16 one-slice patches (a cube: sliced along Z, the last axis)
    slices = result["models"][1]
    assert slices["train_patch"] == [16, 16, 1] and slices["train_batch"] == 32
    with open(out / "benchmark.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table] == ["unet", "unet2d-slices"] and float(table[0]["params_ratio"]) == 1.0
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for text in ("device cpu", "threads", "torch", "patch 16x16x16", "batch 2", "(x1.00)", "unet2d-slices"):
        assert text in proc.stdout


def test_2d_shape_in_process():
    """A 2D synthetic plan (the SDN models are benchmarked at 96x96): both phases run, shapes as asked."""
    plan = synthetic_plan([3, 24, 24], classes=3)
    assert plan.spatial_dims == 2 and plan.patch_size == [24, 24] and plan.in_channels == 3
    spec = {
        "config": tiny("unet").to_dict(),
        "plan": plan.to_dict(),
        "device": "cpu",
        "warmup": 1,
        "steps": 1,
        "infer_shape": [24, 30],
    }
    train = measure_train(spec)
    assert train["params"] > 0 and train["macs"] > 0 and train["train_step_s"] > 0 and train["train_patch"] == [24, 24]
    infer = measure_infer(spec)
    assert infer["infer_s"] > 0 and infer["infer_shape"] == [24, 30]


def test_training_step_runs_in_the_configured_precision():
    """Same seed, weights and batch: the bf16-autocast loss is close to the fp32 loss but not equal to it."""
    plan = synthetic_plan([1, 16, 16, 16])
    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        config = tiny()
        config.train.precision = precision
        spec = {"config": config.to_dict(), "plan": plan.to_dict(), "device": "cpu", "warmup": 0, "steps": 1}
        losses[precision] = measure_train(spec)["train_loss"]
    assert losses["bf16-mixed"] == pytest.approx(losses["32-true"], rel=0.05)
    assert losses["bf16-mixed"] != losses["32-true"]
    config = tiny()
    config.train.precision = "64-true"
    with pytest.raises(UnetzooError, match="precision '64-true'"):
        benchmark_models(["unet"], plan, config=config)


def test_synthetic_labels_have_foreground_in_thin_patches():
    import torch

    generator = torch.Generator().manual_seed(0)
    for shape in ([1, 8, 8], [8, 8, 8], [6, 6]):
        image, label = synthetic_case(shape, 2, 3, generator)
        assert image.shape == (2, *shape) and label.shape == (1, *shape)
        assert set(label.unique().tolist()) <= {0, 1, 2} and (label > 0).any()


def test_plan_and_model_errors():
    with pytest.raises(UnetzooError, match="C H W"):
        synthetic_plan([1, 2, 3, 4, 5])
    with pytest.raises(UnetzooError, match="3 positive sizes"):
        synthetic_plan([1, 8, 8, 8], patch=[8, 8])
    with pytest.raises(UnetzooError, match="valid models"):
        benchmark_models(["no-such-model"], synthetic_plan([1, 8, 8, 8]))


def test_table_gives_ratios_to_the_first_model():
    base = {
        "params": 100,
        "macs": 1e9,
        "train_step_s": 2.0,
        "train_peak_mem_mb": 100.0,
        "infer_s": 1.0,
        "infer_peak_mem_mb": 50.0,
    }
    other = {k: v / 2 for k, v in base.items()}
    result = {
        "models": [{"model": "a", **base}, {"model": "b", **other, "errors": {}}],
        "device": "cpu",
        "device_name": "x",
        "threads": 2,
        "torch": "2",
        "precision": "fp32",
        "patch": [8, 8, 8],
        "batch_size": 2,
        "infer_shape": [8, 8, 8],
        "channels": 1,
        "num_classes": 2,
        "timed_steps": 5,
        "warmup_steps": 2,
        "memory_method": "m",
    }
    table = format_table(result)
    assert "2.000 (x1.00)" in table and "1.000 (x0.50)" in table and "1.00G (x1.00)" in table


def test_data_plan_takes_patch_and_median_shape_from_the_dataset(organs):
    from unetzoo.experiments.benchmark import data_plan

    plan = data_plan(organs, patch=[16, 16, 16])
    assert plan.patch_size == [16, 16, 16] and plan.spatial_dims == 3 and len(plan.median_shape) == 3
    default = data_plan(
        organs
    )  # from the data: the median shape (it fits the budget) rounded up to the strides' multiple
    assert all(
        p % m == 0 and p >= round(s) for p, m, s in zip(default.patch_size, divisor(default.strides), plan.median_shape)
    )
