"""Precision ``auto``: the fastest precision the device runs natively (capability checks mocked); slow choices warn."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from unetzoo import cli, device
from unetzoo.device import resolve_precision
from unetzoo.errors import UnetzooError
from unetzoo.experiments.benchmark import synthetic_plan
from unetzoo.methods import build_method
from unetzoo.training.trainer import trainer_settings

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def cpu_bf16(monkeypatch):
    def set_native(native: bool):
        monkeypatch.setattr(device, "cpu_native_bf16", lambda: native)
        monkeypatch.setattr(device, "cpu_native_fp16", lambda: False)

    return set_native


def test_auto_is_fp32_on_a_cpu_without_native_bf16_and_bf16_where_it_is_native(cpu_bf16):
    cpu_bf16(False)
    assert resolve_precision("auto", CPU) == ("32-true", "precision auto: 32-true (this CPU has no native bf16)")
    cpu_bf16(True)
    assert resolve_precision("auto", CPU) == ("bf16-mixed", "precision auto: bf16-mixed (native bf16 on this CPU)")


def test_auto_on_cuda_is_bf16_where_supported_else_fp16_with_scaler(monkeypatch):
    monkeypatch.setattr(device, "cuda_bf16", lambda: True)
    assert resolve_precision("auto", CUDA)[0] == "bf16-mixed"
    monkeypatch.setattr(device, "cuda_bf16", lambda: False)
    assert resolve_precision("auto", CUDA) == (
        "16-mixed",
        "precision auto: 16-mixed (this CUDA GPU has no bf16; fp16 with a gradient scaler)",
    )


def test_explicit_choices_are_kept_and_only_emulated_ones_warn(cpu_bf16, monkeypatch):
    cpu_bf16(False)
    chosen, line = resolve_precision("bf16-mixed", CPU)
    assert (
        chosen == "bf16-mixed"
        and line.startswith("warning: precision bf16-mixed is emulated on this CPU")
        and "slower" in line
    )
    assert "\n" not in line
    assert resolve_precision("16-mixed", CPU)[1].startswith("warning: precision 16-mixed is emulated")
    assert resolve_precision("32-true", CPU) == ("32-true", "precision 32-true")
    cpu_bf16(True)
    assert resolve_precision("bf16-mixed", CPU) == ("bf16-mixed", "precision bf16-mixed")
    monkeypatch.setattr(device, "cuda_bf16", lambda: False)
    assert resolve_precision("16-mixed", CUDA) == ("16-mixed", "precision 16-mixed")
    assert resolve_precision("bf16-mixed", CUDA)[1].startswith(
        "warning: precision bf16-mixed is emulated on this CUDA GPU"
    )
    with pytest.raises(UnetzooError, match="unknown precision '64-true'"):
        resolve_precision("64-true", CPU)


def test_the_trainer_gets_the_resolved_precision(cpu_bf16):
    config = tiny_config()
    method, config = build_method(config, synthetic_plan([1, 16, 16, 16]))
    assert config.train.precision == "auto"  # the default
    cpu_bf16(False)
    assert trainer_settings(config, method)["precision"] == "32-true"
    cpu_bf16(True)
    assert trainer_settings(config, method)["precision"] == "bf16-mixed"


@pytest.mark.slow
def test_train_command_warns_in_one_line_for_emulated_bf16_and_logs_auto_choice(organs, tmp_path, cpu_bf16, capsys):
    cpu_bf16(False)
    args = [
        "train",
        str(organs),
        "--patch",
        "16",
        "16",
        "16",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "1",
        "--num-workers",
        "0",
        "--set",
        "train.val_cases=1",
        "--set",
        "model_args.n_stages=2",
        "--set",
        "model_args.base_features=4",
    ]

    def training(err: str) -> list[str]:  # the training-precision lines (not the inference-precision check's)
        return [line for line in err.splitlines() if "precision" in line and "inference precision" not in line]

    assert cli.main([*args, "--out", str(tmp_path / "slow"), "--precision", "bf16-mixed"]) == 0
    warnings = training(capsys.readouterr().err)
    assert len(warnings) == 1 and "warning: precision bf16-mixed is emulated on this CPU" in warnings[0]
    assert cli.main([*args, "--out", str(tmp_path / "auto")]) == 0
    err = capsys.readouterr().err
    lines = training(err)
    assert len(lines) == 1 and lines[0].endswith("precision auto: 32-true (this CPU has no native bf16)")
    assert "inference precision: 32-true (no native bf16 on this CPU: bf16 not measured)" in err
