"""Prediction precision: fp32 by default; bf16 only where a one-off check after training found fp32's labels and a
speed-up, on a device that runs bf16 natively (this project's CPU does not: bf16 there is emulated and unmeasured)."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from unetzoo import device
from unetzoo.device import inference_precision
from unetzoo.errors import UnetzooError
from unetzoo.inference import Predictor
from unetzoo.inference.precision_check import check_inference_precision, decide, label_agreement
from unetzoo.runfolder import INFERENCE_PRECISION as CHECK_FILE

CPU = torch.device("cpu")


def test_label_agreement_counts_foreground_voxels_only():
    """Hand-computed: 4 voxels are foreground in either map, 3 carry the same label; background never counts."""
    a = np.array([0, 0, 0, 1, 1, 2, 2])
    b = np.array([0, 0, 0, 1, 2, 2, 2])
    assert label_agreement(a, b) == 0.75
    assert label_agreement(np.zeros(5), np.zeros(5)) == 1.0


def test_bf16_is_chosen_only_when_labels_agree_and_it_is_faster():
    assert decide(0.9995, 2.0, 1.0, 0.999)[0] == "bf16-mixed"
    assert decide(0.99, 2.0, 1.0, 0.999) == (
        "32-true",
        "bf16 labels agree with fp32 on 0.9900 of foreground voxels (worst case), "
        "2.00 s -> 1.00 s per case: below 0.999",
    )
    assert decide(1.0, 1.0, 1.5, 0.999)[1].endswith("not faster")


def test_inference_is_fp32_unless_the_run_chose_bf16_on_a_native_device(tmp_path, monkeypatch):
    assert inference_precision("auto", CPU, tmp_path) == (
        "32-true",
        "inference precision auto: 32-true (the run has no bf16 check)",
    )
    assert inference_precision("bf16-mixed", CPU, tmp_path)[0] == "bf16-mixed"  # asked for: as asked
    with pytest.raises(UnetzooError, match=r"unknown inference precision 'fp8' \(auto, 32-true, bf16-mixed\)"):
        inference_precision("fp8", CPU)
    (tmp_path / CHECK_FILE).write_text(json.dumps({"choice": "bf16-mixed", "reason": "agreed"}))
    monkeypatch.setattr(device, "cpu_native_bf16", lambda: False)
    assert inference_precision("auto", CPU, tmp_path)[0] == "32-true"  # chosen elsewhere, emulated here
    monkeypatch.setattr(device, "cpu_native_bf16", lambda: True)
    assert inference_precision("auto", CPU, tmp_path) == ("bf16-mixed", "inference precision auto: bf16-mixed (agreed)")
    assert inference_precision("32-true", CPU, tmp_path)[0] == "32-true"


@pytest.mark.slow
def test_training_records_the_check_and_predicts_in_fp32_on_this_cpu(trained_run):
    if device.cpu_native_bf16():
        pytest.skip("this CPU runs bf16 natively: the check measured it")
    record = json.loads((trained_run / CHECK_FILE).read_text())
    assert (
        record["choice"] == "32-true"
        and record["native_bf16"] is False
        and record["reason"] == "no native bf16 on this CPU: bf16 not measured"
    )
    assert Predictor(trained_run).precision == "32-true"


@pytest.mark.slow
def test_check_on_a_native_device_measures_agreement_and_speed(trained_run, organs, tmp_path, monkeypatch):
    """With native bf16 (faked: bf16 is emulated on this CPU, minutes per case) the check predicts the cases in both
    precisions and records their label agreement and seconds per case; here the bf16 prediction (faked too) loses
    one of the 4 foreground voxels, so the agreement is 0.75 and fp32 stays."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    monkeypatch.setattr(device, "cpu_native_bf16", lambda: True)

    def fake(self, files):
        probs = torch.zeros(4, 6, 6, 6)
        probs[0] = 1
        probs[:, :2, :2, :1] = torch.tensor([0.0, 1.0, 0.0, 0.0])[:, None, None, None]  # 4 voxels of class 1 in fp32
        if self.precision == "bf16-mixed":
            probs[:, 0, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        return probs

    monkeypatch.setattr(Predictor, "predict_probabilities", fake)
    cases = {"organs_000": [organs / "imagesTr" / "organs_000_0000.nii.gz"]}
    record = check_inference_precision(run, cases, "cpu", logging.getLogger("test"), max_cases=1)
    assert record["cases"] == {"organs_000": 0.75} and record["fp32_s_per_case"] > 0 and record["bf16_s_per_case"] > 0
    assert record["choice"] == "32-true" and "below 0.999" in record["reason"]
    assert json.loads((run / CHECK_FILE).read_text()) == record
    assert Predictor(run).precision == "32-true"
