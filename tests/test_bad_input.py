"""Bad input (issue 12): each gives one line naming the file and the problem, or a warning naming the file
where accepting it is right; never a traceback or a silently wrong result."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import run_cli
from unetzoo.config import Config
from unetzoo.data.datasets import load_dataset, prediction_inputs
from unetzoo.data.plan import Plan
from unetzoo.errors import UnetzooError
from unetzoo.inference import Predictor
from unetzoo.io import read_image, read_label, write_array
from unetzoo.methods import build_method


def untrained_run(run_dir: Path, plan: Plan, model: str = "unet") -> Path:
    """A run folder (config, plan, checkpoint) of an untrained model for ``plan``: what predict reads."""
    run_dir.mkdir(parents=True)
    config = Config(model=model)
    config.data.patch_size = plan.patch_size
    method, config = build_method(config, plan)
    config.save(run_dir / "config.json")
    plan.save(run_dir / "plan.json")
    torch.save({"state_dict": {f"model.{k}": v for k, v in method.model.state_dict().items()}}, run_dir / "checkpoint_last.pt")
    return run_dir


# ---- 1. dataset.json of the wrong shape -------------------------------------------------------------------------


def _msd_json(root: Path, **changes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_array(np.ones((4, 4, 4), np.float32), root / "imagesTr" / "a.nii.gz")
    write_array(np.zeros((4, 4, 4), np.uint8), root / "labelsTr" / "a.nii.gz")
    meta = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "x"},
            "training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}], **changes}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("changes, expected", [
    ({"training": [{"image": "./imagesTr/a.nii.gz"}]}, "training entry 0 must have an 'image' and a 'label'"),
    ({"labels": ["background", "x"]}, "'labels' must be an object"),
    ({"training": "imagesTr"}, "'training' must be a list"),
    ({"modality": ["MRI"]}, "'modality' must map channel indices to names"),
])
def test_malformed_msd_dataset_json(tmp_path, changes, expected):
    root = _msd_json(tmp_path / "msd", **changes)
    with pytest.raises(UnetzooError, match=expected) as error:
        load_dataset(root)
    assert str(error.value).startswith(str(root / "dataset.json"))


# ---- 2, 3. prediction inputs that do not match the run ----------------------------------------------------------


def test_one_channel_file_of_a_two_channel_case(tmp_path):
    folder = tmp_path / "in"
    write_array(np.ones((4, 4, 4), np.float32), folder / "c_0000.nii.gz")
    with pytest.raises(UnetzooError, match=r"c_0000.nii.gz: case 'c' has 1 channel file\(s\) in .*, the model expects 2"):
        prediction_inputs(folder / "c_0000.nii.gz", 2)
    write_array(np.ones((4, 4, 4), np.float32), folder / "c_0001.nii.gz")
    assert [p.name for p in prediction_inputs(folder / "c_0000.nii.gz", 2)["c"]] == ["c_0000.nii.gz", "c_0001.nii.gz"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Untrained runs: 3D one-channel NIfTI, 3D two-channel NIfTI (nnU-Net files, MSD 4D file), 2D RGB PNG."""
    root = tmp_path_factory.mktemp("runs")
    rgb = dataclasses.replace(Plan.synthetic([16, 16], channels=3), channel_names=["R", "G", "B"], n_channel_files=1)
    return {
        "3d": untrained_run(root / "3d", Plan.synthetic([16, 16, 16])),
        "3d2": untrained_run(root / "3d2", Plan.synthetic([16, 16, 16], channels=2)),
        "msd2": untrained_run(root / "msd2", dataclasses.replace(Plan.synthetic([16, 16, 16], channels=2), n_channel_files=1)),
        "rgb": untrained_run(root / "rgb", rgb),
    }


@pytest.mark.parametrize("run, files, expected", [
    ("rgb", [("x.nii.gz", (16, 16, 16))], "x.nii.gz: a 3D NIfTI image, but the run was trained on 2D PNG images"),
    ("3d", [("x.png", (16, 16, 3))], "x.png: a 2D PNG image, but the run was trained on 3D NIfTI images"),
    ("msd2", [("x.nii.gz", (16, 16, 16, 3))], r"x.nii.gz: has 3 channel\(s\), the model expects 2"),
    ("3d2", [("x_0000.nii.gz", (16, 16, 16))], r"x_0000.nii.gz: 1 channel file\(s\) for this case, the run expects 2"),
    ("rgb", [("x.png", (16, 16))], r"x.png: has 1 channel\(s\), the model expects 3"),
])
def test_input_checked_against_the_run_before_inference(runs, tmp_path, run, files, expected):
    paths = []
    for name, shape in files:
        array = np.full(shape, 100, np.uint8 if name.endswith(".png") else np.float32)
        paths.append(write_array(array, tmp_path / name))
    predictor = Predictor(runs[run])
    with pytest.raises(UnetzooError, match=expected):
        predictor.predict_cases({"x": paths}, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_cli_predict_two_channel_run_on_one_channel_file(runs, tmp_path):
    write_array(np.ones((16, 16, 16), np.float32), tmp_path / "in" / "c_0000.nii.gz")
    result = run_cli("predict", runs["3d2"], tmp_path / "in" / "c_0000.nii.gz", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"unetzoo: error: {tmp_path / 'in' / 'c_0000.nii.gz'}: case 'c' has 1 channel file(s)")


# ---- 4. unreadable files ----------------------------------------------------------------------------------------


def test_unreadable_dataset_json_and_image(tmp_path, monkeypatch):
    root = _msd_json(tmp_path / "msd")
    real_read_text = Path.read_text

    def denied(self, *args, **kwargs):  # tests may run as root, for whom chmod 000 changes nothing
        if self.name == "dataset.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(UnetzooError, match=r"dataset.json: cannot read the file \(Permission denied\)"):
        load_dataset(root)
    monkeypatch.undo()
    real_open = open
    image = root / "imagesTr" / "a.nii.gz"
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(f)))
                        if str(f) == str(image) else real_open(f, *a, **k))
    with pytest.raises(UnetzooError, match=r"a.nii.gz: cannot open the file \(Permission denied\)$"):
        read_image(image)


# ---- 5. zero spacing, zero or negative pixdim -------------------------------------------------------------------


def _nifti_with_header(path: Path, pixdim=(1.0, 1.0, 1.0), sform=None) -> Path:
    """An uncompressed NIfTI file whose header fields are written as bytes (nibabel fixes or refuses such values)."""
    header = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.eye(4)).header
    header.set_qform(None, code=0)
    header.set_sform(np.eye(4), code=1 if sform is not None else 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), None, header=header), str(path))
    raw = bytearray(path.read_bytes())
    raw[80:92] = np.asarray(pixdim, "<f4").tobytes()  # pixdim[1:4]
    if sform is not None:
        raw[280:328] = np.asarray(sform[:3], "<f4").tobytes()  # srow_x, srow_y, srow_z
    path.write_bytes(bytes(raw))
    return path


def test_zero_spacing_in_the_affine_is_an_error_everywhere(tmp_path):
    flat = np.diag([1.0, 0.0, 1.0, 1.0])
    path = _nifti_with_header(tmp_path / "z.nii", sform=flat)
    for read in (read_image, read_label):
        with pytest.raises(UnetzooError, match=r"z.nii: the affine \(sform/qform\) has zero or invalid voxel spacing \[1.0, 0.0, 1.0\]"):
            read(path)


@pytest.mark.parametrize("pixdim, message", [((1.0, 0.0, 1.0), "should be non-zero"), ((1.0, -2.0, 1.0), "should be positive")])
def test_zero_or_negative_pixdim_warns_naming_the_file(tmp_path, caplog, pixdim, message):
    path = _nifti_with_header(tmp_path / "p.nii", pixdim=pixdim)
    with caplog.at_level(logging.WARNING, logger="unetzoo.io"):
        image = read_image(path)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "unetzoo.io"]
    assert warning.startswith(f"{path}: pixdim") and message in warning
    assert min(image.spacing) > 0


# ---- 7. label on another grid than its image --------------------------------------------------------------------


def test_label_with_another_affine_is_rejected(tmp_path):
    from unetzoo.data.plan import make_plan

    root = _msd_json(tmp_path / "msd")
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    write_array(np.zeros((4, 4, 4), np.uint8), root / "labelsTr" / "a.nii.gz", flipped)
    dataset = load_dataset(root)
    with pytest.raises(UnetzooError, match=r"labelsTr/a.nii.gz: label affine differs from the image's \(a.nii.gz\) by up to 2 mm"):
        make_plan(dataset, dataset.cases)


# ---- 12. training draws cases at random -------------------------------------------------------------------------


def test_training_draws_cases_at_random_and_reproducibly():
    from unetzoo.training import PatchDataset

    dataset = PatchDataset(list(range(10)), lambda case: case, length=2)  # fewer draws per epoch than cases
    torch.manual_seed(3)
    draws = [dataset[i % 2] for i in range(40)]
    torch.manual_seed(3)
    assert [dataset[i % 2] for i in range(40)] == draws
    assert len(set(draws)) >= 8 and set(draws) <= set(range(10))
