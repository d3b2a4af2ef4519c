"""Bad input: each gives one line naming the file and the problem, or a warning naming the file
where accepting it is right; never a traceback or a silently wrong result."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
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
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in method.model.state_dict().items()}}, run_dir / "checkpoint_last.pt"
    )
    return run_dir


# ---- 1. dataset.json of the wrong shape -------------------------------------------------------------------------


def _msd(root: Path, cases: list, labels: dict) -> Path:
    """An MSD-layout dataset of ``(image, label)`` arrays (identity affines)."""
    training = []
    for i, (image, label) in enumerate(cases):
        name = "a.nii.gz" if i == 0 else f"case{i}.nii.gz"
        write_array(image.astype(np.float32), root / "imagesTr" / name)
        write_array(label.astype(np.uint8), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": labels, "training": training}))
    return root


def _msd_json(root: Path, **changes) -> Path:
    _msd(root, [(np.ones((4, 4, 4)), np.zeros((4, 4, 4)))], {"0": "background", "1": "x"})
    meta = {**json.loads((root / "dataset.json").read_text()), **changes}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"training": [{"image": "./imagesTr/a.nii.gz"}]}, "training entry 0 must have an 'image' and a 'label'"),
        ({"labels": ["background", "x"]}, "'labels' must be an object"),
        ({"training": "imagesTr"}, "'training' must be a list"),
        ({"modality": ["MRI"]}, "'modality' must map channel indices to names"),
    ],
)
def test_malformed_msd_dataset_json(tmp_path, changes, expected):
    root = _msd_json(tmp_path / "msd", **changes)
    with pytest.raises(UnetzooError, match=expected) as error:
        load_dataset(root)
    assert str(error.value).startswith(str(root / "dataset.json"))


# ---- 2, 3. prediction inputs that do not match the run ----------------------------------------------------------


def test_one_channel_file_of_a_two_channel_case(tmp_path):
    folder = tmp_path / "in"
    write_array(np.ones((4, 4, 4), np.float32), folder / "c_0000.nii.gz")
    with pytest.raises(
        UnetzooError, match=r"c_0000.nii.gz: case 'c' has 1 channel file\(s\) in .*, the model expects 2"
    ):
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
        "msd2": untrained_run(
            root / "msd2", dataclasses.replace(Plan.synthetic([16, 16, 16], channels=2), n_channel_files=1)
        ),
        "rgb": untrained_run(root / "rgb", rgb),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "run, files, expected",
    [
        ("rgb", [("x.nii.gz", (16, 16, 16))], "x.nii.gz: a 3D NIfTI image, but the run was trained on 2D PNG images"),
        ("3d", [("x.png", (16, 16, 3))], "x.png: a 2D PNG image, but the run was trained on 3D NIfTI images"),
        ("msd2", [("x.nii.gz", (16, 16, 16, 3))], r"x.nii.gz: has 3 channel\(s\), the model expects 2"),
        (
            "3d2",
            [("x_0000.nii.gz", (16, 16, 16))],
            r"x_0000.nii.gz: 1 channel file\(s\) for this case, the run expects 2",
        ),
        ("rgb", [("x.png", (16, 16))], r"x.png: has 1 channel\(s\), the model expects 3"),
    ],
)
def test_input_checked_against_the_run_before_inference(runs, tmp_path, run, files, expected):
    paths = []
    for name, shape in files:
        array = np.full(shape, 100, np.uint8 if name.endswith(".png") else np.float32)
        paths.append(write_array(array, tmp_path / name))
    predictor = Predictor(runs[run])
    with pytest.raises(UnetzooError, match=expected):
        predictor.predict_cases({"x": paths}, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_cli_predict_two_channel_run_on_one_channel_file(runs, tmp_path):
    write_array(np.ones((16, 16, 16), np.float32), tmp_path / "in" / "c_0000.nii.gz")
    result = run_cli("predict", runs["3d2"], tmp_path / "in" / "c_0000.nii.gz", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"unetzoo: error: {tmp_path / 'in' / 'c_0000.nii.gz'}: case 'c' has 1 channel file(s)")
    )


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
    monkeypatch.setattr(
        "builtins.open",
        lambda f, *a, **k: (
            (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(f)))
            if str(f) == str(image)
            else real_open(f, *a, **k)
        ),
    )
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


@pytest.mark.slow
def test_zero_spacing_in_the_affine_is_an_error_everywhere(runs, tmp_path):
    flat = np.diag([1.0, 0.0, 1.0, 1.0])
    path = _nifti_with_header(tmp_path / "z.nii", sform=flat)
    for read in (read_image, read_label):
        with pytest.raises(
            UnetzooError, match=r"z.nii: the affine \(sform/qform\) has zero or invalid voxel spacing \[1.0, 0.0, 1.0\]"
        ):
            read(path)
    with pytest.raises(UnetzooError, match=r"array: the affine \(sform/qform\) has zero or invalid voxel spacing"):
        Predictor(runs["3d"]).predict_array(np.ones((16, 16, 16)), flat)


@pytest.mark.parametrize(
    "pixdim, message", [((1.0, 0.0, 1.0), "should be non-zero"), ((1.0, -2.0, 1.0), "should be positive")]
)
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
    with pytest.raises(
        UnetzooError, match=r"labelsTr/a.nii.gz: label affine differs from the image's \(a.nii.gz\) by up to 2 mm"
    ):
        make_plan(dataset, dataset.cases)


# ---- 12. training draws cases at random -------------------------------------------------------------------------


def test_training_draws_cases_at_random_and_reproducibly():
    from unetzoo.training.module import PatchDataset

    dataset = PatchDataset(list(range(10)), lambda case: case, length=2)  # fewer draws per epoch than cases
    torch.manual_seed(3)
    draws = [dataset[i % 2] for i in range(40)]
    torch.manual_seed(3)
    assert [dataset[i % 2] for i in range(40)] == draws
    assert len(set(draws)) >= 8 and set(draws) <= set(range(10))


# ---- 6. label ids that are not consecutive ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ids_run(tmp_path_factory):
    """A tiny run on phantom organs labelled 0, 1, 3 (ids that are not consecutive), 2 folds: (data, run)."""
    from conftest import tiny_config
    from unetzoo.data.phantoms import write_organs_phantom
    from unetzoo.training.run import train

    root = tmp_path_factory.mktemp("ids")
    data = write_organs_phantom(root / "data", cases=4, seed=3, shape=(20, 20, 16), n_structures=2)
    for path in (data / "labelsTr").iterdir():
        label = nib.load(str(path))
        write_array(
            np.where(np.asarray(label.dataobj) == 2, 3, np.asarray(label.dataobj)).astype(np.uint8), path, label.affine
        )
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "organ1": 1, "organ3": 3}
    (data / "dataset.json").write_text(json.dumps(meta))
    config = tiny_config()
    config.data.folds = 2
    config.train.select = "best"  # validated per epoch: the history holds each class's pseudo Dice
    return data, train(data, root / "run", config)


@pytest.mark.slow
def test_non_consecutive_label_ids_train_classes_and_save_ids(ids_run):
    """Ids 0, 1, 3 are classes 0, 1, 2: the network has 3 outputs, validation is evaluated and saved as ids, and
    the history names each class's Dice by its id."""
    _, run = ids_run
    plan = Plan.load(run / "plan.json")
    assert plan.num_classes == 3 and plan.label_ids == [0, 1, 3]
    history = json.loads((run / "history.json").read_text())
    assert list(history[-1]["val_dice_per_class"]) == ["1", "3"]
    summary = json.loads((run / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "3"}
    for path in (run / "validation").glob("*.nii.gz"):
        assert set(np.unique(np.asarray(nib.load(str(path)).dataobj)).tolist()) <= {0, 1, 3}
    predictor = Predictor(run)
    probs = torch.zeros(3, 2, 1, 1)
    probs[2, 0], probs[1, 1] = 1, 1
    assert predictor.label_map(probs).ravel().tolist() == [3, 1]


def test_label_ids_become_classes_in_preprocessing(tmp_path):
    from unetzoo.data.plan import make_plan
    from unetzoo.data.transforms import preprocessing

    label = np.zeros((6, 6, 6))
    label[:2], label[4:] = 1, 5
    root = _msd(
        tmp_path / "msd",
        [(np.random.default_rng(0).random((6, 6, 6)) + 1, label)],
        {"0": "background", "1": "a", "5": "b"},
    )
    dataset = load_dataset(root)
    plan = make_plan(dataset, dataset.cases)
    classes = preprocessing(plan)(dataset.cases[0].as_dict())["label"]
    assert plan.num_classes == 3 and torch.equal(torch.unique(classes), torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(classes[0] == 2, torch.from_numpy(label == 5))


# ---- 11. the zero mask of z-scoring is the dataset's, not each image's --------------------------------------------


def test_nonzero_mask_decided_once_per_dataset(tmp_path, organs):
    from unetzoo.data.plan import make_plan
    from unetzoo.data.transforms import preprocessing

    rng = np.random.default_rng(0)
    cases = []
    for filled in (4, 4, 8):  # two cases of 8 have a zero background (nonzero fraction 0.5), one has none
        image = np.zeros((8, 8, 8))
        image[:filled] = rng.random((filled, 8, 8)) + 1
        cases.append((image, np.zeros((8, 8, 8))))
    dataset = load_dataset(_msd(tmp_path / "msd", cases, {"0": "background", "1": "x"}))
    plan = make_plan(dataset, dataset.cases)
    assert plan.nonzero_mask == [True]
    full = dataset.cases[2].as_dict()  # no zeros: normalised over its nonzero voxels like the others
    image = nib.load(full["label"].replace("labelsTr", "imagesTr")).get_fdata()
    normalised = preprocessing(plan)(full)["image"][0].numpy()
    assert normalised.mean() == pytest.approx(0.0, abs=1e-5)
    image[0, 0, 0] = 0  # one zero voxel in a 0.998-full image: stays zero under the dataset's mask
    write_array(image.astype(np.float32), tmp_path / "test.nii.gz")
    assert (
        float(preprocessing(plan, with_label=False)({"image": [str(tmp_path / "test.nii.gz")]})["image"][0, 0, 0, 0])
        == 0.0
    )
    organs_dataset = load_dataset(organs)
    assert make_plan(organs_dataset, organs_dataset.cases[:2]).nonzero_mask == [False]


# ---- 8. output path that is a file, or a folder that cannot be written ------------------------------------------


def _write_into(command: str, out: Path, runs, tmp_path) -> None:
    from conftest import tiny_config
    from unetzoo.evaluation import evaluate_folder
    from unetzoo.training.run import train

    labels = tmp_path / "labels"
    write_array(np.zeros((4, 4, 4), np.uint8), labels / "a.nii.gz")
    if command == "train":  # fold all: the one-case dataset has no folds, and the output is checked after them
        config = tiny_config()
        config.fold = "all"
        train(_msd_json(tmp_path / "msd"), out, config)
    elif command == "predict":
        Predictor(runs["3d"]).predict_cases(
            {"a": [write_array(np.ones((16, 16, 16), np.float32), tmp_path / "a_0000.nii.gz")]}, out
        )
    else:
        evaluate_folder(labels, labels, out)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_output_into_a_file_or_a_read_only_folder(runs, tmp_path, monkeypatch, command):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    with pytest.raises(UnetzooError, match=f"{taken}: exists and is not a folder"):
        _write_into(command, taken, runs, tmp_path)
    with pytest.raises(UnetzooError, match=f"{taken / 'sub'}: cannot create the output folder"):
        _write_into(command, taken / "sub", runs, tmp_path)
    assert taken.read_text() == "keep me"
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != read_only)  # chmod does not stop root
    with pytest.raises(UnetzooError, match=f"{read_only}: the output folder is not writable"):
        _write_into(command, read_only, runs, tmp_path)


@pytest.mark.slow
def test_cli_evaluate_into_a_file(organs, tmp_path):
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    result = run_cli("evaluate", organs / "labelsTr", organs / "labelsTr", "--out", taken)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"unetzoo: error: {taken}: exists and is not a folder: give a folder for the outputs"
    ]


# ---- 9, 10. resume: cases verified again, the network kept, config.json untouched by a failed resume, leftovers ---


@pytest.mark.slow
def test_resume_verifies_again_and_cleans_leftovers(ids_run):
    from conftest import tiny_config
    from unetzoo.training.run import train

    data, run = ids_run
    saved = (run / "config.json").read_bytes()
    label = data / "labelsTr" / "organs_001.nii.gz"
    original = label.read_bytes()
    array = np.asarray(nib.load(str(label)).dataobj).copy()
    array[0, 0, 0] = 2  # made bad after the plan: 2 is not a listed id
    write_array(array, label, nib.load(str(label)).affine)
    config = tiny_config(epochs=2)
    config.data.folds, config.train.select = 2, "best"  # the run's own
    with pytest.raises(UnetzooError, match=r"organs_001.nii.gz: label values \[2\] are not listed"):
        train(data, run, config, resume=True)
    label.write_bytes(original)
    other = tiny_config(epochs=2)
    other.data.folds, other.train.select = 2, "best"
    other.model_args = {"n_stages": 2}
    with pytest.raises(UnetzooError, match=r"config.json: --resume cannot change model_args.n_stages"):
        train(data, run, other, resume=True)
    assert (run / "config.json").read_bytes() == saved
    dead = _dead_pid()
    (run / f".tmp_{dead}_checkpoint_last.pt").write_bytes(b"half")
    train(data, run, config, resume=True)
    assert not list(run.glob(".tmp_*"))
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 2
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["epoch"] == 1  # every epoch, best or not
    log = max(run.glob("training_log_*.txt")).read_text()
    assert (
        f"removed .tmp_{dead}_checkpoint_last.pt" in log
        and "poly learning-rate schedule is recomputed over 2 epochs" in log
    )


@pytest.mark.slow
def test_prediction_done_only_when_every_output_exists(runs, tmp_path):
    image = write_array(np.ones((16, 16, 16), np.float32), tmp_path / "in" / "a_0000.nii.gz")
    out = tmp_path / "out"
    predictor = Predictor(runs["3d"])
    predictor.predict_cases({"a": [image]}, out, save_probabilities=True)
    (out / "a.npz").unlink()  # killed between the mask and its probabilities
    (out / f".tmp_{_dead_pid()}_x_a.nii.gz").write_bytes(b"half")
    (out / f".tmp_{os.getpid()}_x_b.nii.gz").write_bytes(b"being written")  # another command writing here
    predictor.predict_cases({"a": [image]}, out, save_probabilities=True)
    expected = [f".tmp_{os.getpid()}_x_b.nii.gz", ".unetzoo-predictions.json", "a.nii.gz", "a.npz"]
    assert sorted(p.name for p in out.iterdir()) == expected  # the record of what predict wrote, and its outputs


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ---- evaluate compares on one grid: a flipped or shifted prediction is refused or resampled -----------------------


def _grid_pair(tmp_path: Path, pred_array: np.ndarray, pred_affine: np.ndarray) -> tuple[Path, Path]:
    """A reference ``ref/a.nii.gz`` (asymmetric labels 1 and 2, 1.5 x 1 x 2 mm, translated) and a prediction
    ``pred/a.nii.gz`` of the given array and affine."""
    write_array(_REFERENCE, tmp_path / "ref" / "a.nii.gz", _REF_AFFINE)
    write_array(pred_array, tmp_path / "pred" / "a.nii.gz", pred_affine)
    return tmp_path / "pred", tmp_path / "ref"


_REFERENCE = np.zeros((8, 6, 5), np.uint8)
_REFERENCE[1:4, 1:3, 1:4], _REFERENCE[5:7, 2:5, 0:2] = 1, 2
_REF_AFFINE = np.array([[1.5, 0, 0, -10], [0, 1, 0, 4], [0, 0, 2, 7], [0, 0, 0, 1]])


def test_evaluate_flipped_prediction_refused_or_resampled(tmp_path):
    """The same label map stored mirrored (array flipped along x, affine's x axis reversed) is the same world content:
    refused on its own grid, Dice 1.0 for every label once resampled onto the reference grid."""
    from unetzoo.evaluation import evaluate_folder

    flip = np.array([[-1, 0, 0, 7], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # voxel i -> 7 - i
    pred, ref = _grid_pair(tmp_path, _REFERENCE[::-1].copy(), _REF_AFFINE @ flip)
    with pytest.raises(
        UnetzooError,
        match=rf"^{pred / 'a.nii.gz'}: not on the grid of the reference {ref / 'a.nii.gz'}: affine differs .* pass --resample",
    ):
        evaluate_folder(pred, ref, tmp_path / "out")
    assert not (tmp_path / "out" / "summary.json").exists()
    summary = evaluate_folder(pred, ref, tmp_path / "out", resample=True)
    assert summary["mean"]["1"]["Dice"] == 1.0 and summary["mean"]["2"]["Dice"] == 1.0


def test_evaluate_shifted_prediction_is_not_scored_as_perfect(tmp_path):
    """The reference's own array with its affine moved 50 mm: refused; resampled, it lies outside the reference (Dice 0)."""
    from unetzoo.evaluation import evaluate_folder

    shifted = _REF_AFFINE.copy()
    shifted[0, 3] += 50
    pred, ref = _grid_pair(tmp_path, _REFERENCE, shifted)
    with pytest.raises(UnetzooError, match=r"not on the grid of the reference .*by up to 50 mm"):
        evaluate_folder(pred, ref, tmp_path / "out")
    assert evaluate_folder(pred, ref, tmp_path / "out", resample=True)["foreground_mean"]["Dice"] == 0.0
    write_array(_REFERENCE[:, :, :4].copy(), pred / "a.nii.gz", _REF_AFFINE)
    with pytest.raises(UnetzooError, match=r"shape \(8, 6, 4\) differs from the reference's \(8, 6, 5\)"):
        evaluate_folder(pred, ref, tmp_path / "out")


@pytest.mark.slow
def test_cli_evaluate_resample(tmp_path):
    flip = np.array([[-1, 0, 0, 7], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    pred, ref = _grid_pair(tmp_path, _REFERENCE[::-1].copy(), _REF_AFFINE @ flip)
    refused = run_cli("evaluate", pred, ref, "--out", tmp_path / "out")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].startswith(
        f"unetzoo: error: {pred / 'a.nii.gz'}: not on the grid"
    )
    resampled = run_cli("evaluate", pred, ref, "--out", tmp_path / "out", "--resample")
    assert resampled.returncode == 0, resampled.stderr
    assert "label 1: Dice 1.0000" in resampled.stdout and "label 2: Dice 1.0000" in resampled.stdout


# ---- predictions keep the input's header: qform and sform, codes included -----------------------------------------


@pytest.mark.slow
def test_prediction_keeps_distinct_qform_and_sform(runs, tmp_path):
    """An input whose qform (scanner, code 1) and sform (aligned, code 2) differ: the prediction's header holds both,
    with their codes, as the input's did (the sform, nibabel's best affine, is the grid it is predicted on)."""
    qform = np.array([[1.0, 0, 0, -8], [0, 1, 0, -8], [0, 0, 1, -8], [0, 0, 0, 1]])
    sform = np.array([[0, -1.0, 0, 20], [1.0, 0, 0, -3], [0, 0, 1.0, 5], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), None)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    (tmp_path / "in").mkdir()
    nib.save(image, str(tmp_path / "in" / "a_0000.nii.gz"))
    [written] = Predictor(runs["3d"]).predict_cases({"a": [tmp_path / "in" / "a_0000.nii.gz"]}, tmp_path / "out")
    header = nib.load(str(written)).header
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 2
    assert np.allclose(header.get_qform(), qform) and np.allclose(header.get_sform(), sform)


# ---- a label among CASE_0000 inputs is skipped; predicting into the input folder is refused -----------------------


def test_label_beside_channel_files_is_skipped_with_a_warning(tmp_path, caplog):
    """``a.nii.gz`` (a label left beside ``a_0000.nii.gz``) is not predicted as an image of a case ``a_0000``."""
    folder = tmp_path / "in"
    for name in ("a_0000.nii.gz", "a.nii.gz", "b_0000.nii.gz"):
        write_array(np.ones((4, 4, 4), np.float32), folder / name)
    with caplog.at_level(logging.WARNING, logger="unetzoo.data.datasets"):
        cases = prediction_inputs(folder, 1)
    assert cases == {"a": [folder / "a_0000.nii.gz"], "b": [folder / "b_0000.nii.gz"]}
    [warning] = [r.getMessage() for r in caplog.records if r.name == "unetzoo.data.datasets"]
    assert warning.startswith(f"{folder}: skipping 1 file(s) not named like the images") and warning.endswith(
        ": a.nii.gz"
    )


@pytest.mark.slow
def test_predicting_into_the_input_folder_is_refused(runs, tmp_path):
    from unetzoo.inference import predict

    folder = tmp_path / "in"
    write_array(np.ones((16, 16, 16), np.float32), folder / "a.nii.gz")  # MSD naming: the output would overwrite it
    before = (folder / "a.nii.gz").read_bytes()
    for output in (folder, tmp_path / "." / "in"):
        with pytest.raises(UnetzooError, match=rf"^{output}: is the input folder"):
            predict(runs["3d"], folder, output)
    assert [p.name for p in folder.iterdir()] == ["a.nii.gz"] and (folder / "a.nii.gz").read_bytes() == before


# ---- --checkpoint best without checkpoint_best.pt: a warning, and export.json names the file used -----------------


@pytest.mark.slow
def test_missing_best_checkpoint_warns_and_export_records_the_file(runs, tmp_path, caplog):
    run = runs["3d"]  # an untrained run: checkpoint_last.pt only
    with caplog.at_level(logging.WARNING, logger="unetzoo.runfolder"):
        predictor = Predictor(run, checkpoint="best")
    [warning] = [r.getMessage() for r in caplog.records if r.name == "unetzoo.runfolder"]
    assert (
        warning == f"{run / 'checkpoint_best.pt'}: missing (the run never validated?): using checkpoint_last.pt instead"
    )
    assert predictor.checkpoint_path == run / "checkpoint_last.pt"
    result = run_cli("export", run, tmp_path / "export", "--checkpoint", "best")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "checkpoint" in line] == [warning]
    assert json.loads((tmp_path / "export" / "export.json").read_text())["checkpoint"] == str(
        (run / "checkpoint_last.pt").resolve()
    )


# ---- warnings where the dataset is verified: duplicates, labels without an image, absent classes ------------------


def test_dataset_warnings_duplicates_orphan_labels_and_absent_classes(tmp_path, caplog):
    """A clean dataset gives no warning; then one line each, naming the files, for a case copied under another name,
    a label file without an image, and a label id of dataset.json that no label map holds."""
    import shutil

    from unetzoo.data.plan import make_plan, verify_against_plan

    rng = np.random.default_rng(0)
    label = np.zeros((6, 6, 6))
    label[1:3] = 1
    root = _msd(
        tmp_path / "msd",
        [(rng.random((6, 6, 6)) + 1, label) for _ in range(3)],
        {"0": "background", "1": "a", "2": "b"},
    )
    meta = json.loads((root / "dataset.json").read_text())
    with caplog.at_level(logging.WARNING, logger="unetzoo.data.plan"):
        meta["labels"] = {"0": "background", "1": "a"}
        (root / "dataset.json").write_text(json.dumps(meta))
        make_plan(load_dataset(root), load_dataset(root).cases)
        assert not [r for r in caplog.records if r.name == "unetzoo.data.plan"]
        meta["labels"]["2"] = "b"  # listed, in no label map
        shutil.copy(root / "imagesTr" / "case1.nii.gz", root / "imagesTr" / "copy.nii.gz")
        shutil.copy(root / "labelsTr" / "case1.nii.gz", root / "labelsTr" / "copy.nii.gz")
        meta["training"].append({"image": "./imagesTr/copy.nii.gz", "label": "./labelsTr/copy.nii.gz"})
        (root / "dataset.json").write_text(json.dumps(meta))
        write_array(label.astype(np.uint8), root / "labelsTr" / "orphan.nii.gz")
        dataset = load_dataset(root)
        plan = make_plan(dataset, dataset.cases)
    images, labels = root.resolve() / "imagesTr", root.resolve() / "labelsTr"
    assert [r.getMessage() for r in caplog.records if r.name == "unetzoo.data.plan"] == [
        f"{images / 'case1.nii.gz'} and {images / 'copy.nii.gz'}: identical image files under 2 case names (case1, copy): "
        "a duplicate that cross-validation may put on both sides of a split",
        f"{labels}: 1 label file(s) without an image (not trained on): orphan.nii.gz",
        f"{root / 'dataset.json'}: label id(s) 2 (b) appear in no training case's label map: the network gets no example of them",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unetzoo.data.plan"):
        verify_against_plan(dataset, plan, tmp_path / "plan.json")  # a resumed run warns again
    assert len([r for r in caplog.records if r.name == "unetzoo.data.plan"]) == 3
