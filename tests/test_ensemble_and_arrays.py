"""Ensembles of runs (mean of probabilities, --checkpoint) and prediction of images held in memory."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import run_cli
from unetzoo.errors import UnetzooError
from unetzoo.inference import Ensemble, Predictor
from unetzoo.io import read_image


@pytest.fixture(scope="module")
def altered_run(trained_run, tmp_path_factory):
    """A copy of the trained run whose checkpoint_last.pt has different weights and whose checkpoint_best.pt holds
    the trained ones."""
    run = tmp_path_factory.mktemp("altered") / "run"
    shutil.copytree(trained_run, run)
    shutil.copy(run / "checkpoint_last.pt", run / "checkpoint_best.pt")
    checkpoint = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for key, value in checkpoint["state_dict"].items():
        if value.is_floating_point():
            checkpoint["state_dict"][key] = value + 0.2 * torch.randn(value.shape, generator=generator)
    torch.save(checkpoint, run / "checkpoint_last.pt")
    return run


@pytest.mark.slow
def test_ensemble_averages_the_runs_probabilities(trained_run, altered_run, organs, tmp_path):
    paths = [organs / "imagesTr" / "organs_002_0000.nii.gz"]
    best = Predictor(trained_run).predict_probabilities(paths)
    assert torch.equal(Predictor(altered_run, checkpoint="best").predict_probabilities(paths), best)
    last = Predictor(altered_run, checkpoint="last").predict_probabilities(paths)
    assert (last - best).abs().max() > 1e-3  # --checkpoint last takes the other weights
    mean = Ensemble([trained_run, altered_run], checkpoint="last").predict_probabilities(paths)
    other_last = Predictor(trained_run, checkpoint="last").predict_probabilities(paths)
    torch.testing.assert_close(mean, (other_last + last) / 2)

    result = run_cli(
        "predict",
        trained_run,
        altered_run,
        paths[0],
        tmp_path / "out",
        "--checkpoint",
        "last",
        "--save-probabilities",
        "--no-postprocess",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = np.load(tmp_path / "out" / "organs_002.npz")["probabilities"]
    np.testing.assert_allclose(saved, mean.numpy(), atol=1e-3)
    label = nib.load(str(tmp_path / "out" / "organs_002.nii.gz"))
    assert np.array_equal(np.asarray(label.dataobj), mean.argmax(0).numpy())
    assert np.array_equal(label.affine, nib.load(str(paths[0])).affine)


@pytest.mark.slow
def test_ensemble_refuses_runs_with_other_labels_or_channels(trained_run, organs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained_run, other, ignore=shutil.ignore_patterns("validation"))
    plan = json.loads((other / "plan.json").read_text())
    plan["labels"] = {**plan["labels"], "4": "extra"}
    (other / "plan.json").write_text(json.dumps(plan))
    result = run_cli("predict", trained_run, other, organs / "imagesTr", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        str(other / "plan.json") in result.stderr and "cannot ensemble" in result.stderr and "labels" in result.stderr
    )
    assert not (tmp_path / "out").exists()
    with pytest.raises(UnetzooError, match="--checkpoint must be one of best, last"):
        Predictor(trained_run, checkpoint="final")


@pytest.mark.slow
def test_predict_array_equals_the_file_prediction(trained_run, organs, tmp_path):
    predictor = Predictor(trained_run)
    path = organs / "imagesTr" / "organs_003_0000.nii.gz"
    written = predictor.predict_cases({"organs_003": [path]}, tmp_path / "pred")[0]
    image = read_image([path])
    labels = predictor.predict_array(image.array[0], image.affine)  # (X, Y, Z): one channel
    assert labels.dtype == np.uint8 and labels.shape == image.spatial_shape
    assert np.array_equal(labels, np.asarray(nib.load(str(written)).dataobj))
    with pytest.raises(UnetzooError, match=r"array of shape \(2, 24, 28, 20\): the run expects 1 channel"):
        predictor.predict_array(np.zeros((2, *image.spatial_shape)), image.affine)
    with pytest.raises(UnetzooError, match="NaN"):
        predictor.predict_array(np.full(image.spatial_shape, np.nan), image.affine)
