"""Overlay colours on hand-made cases, slice choice, and the report page from two hand-made run folders."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli
from unetzoo.config import Config
from unetzoo.experiments.report import (
    _paired_table,
    best_slice,
    error_overlay,
    make_report,
    slice_axis,
    take_slice,
    write_overlay,
)
from unetzoo.experiments.statistics import paired_difference

WHITE, RED, BLUE = [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]


def hand_case():
    """Image 0 left, 1 right (grey 0 / 1 after normalisation); four pixels: TP, FP, FN, TN."""
    image = np.zeros((2, 4), np.float32)
    image[:, 2:] = 1.0
    ref = np.array([[1, 0, 1, 0], [2, 1, 0, 0]])
    pred = np.array([[1, 1, 0, 0], [1, 1, 2, 0]])
    return image, ref, pred


def test_overlay_colours_exact():
    image, ref, pred = hand_case()
    rgb = error_overlay(image, ref, pred, alpha=1.0)
    assert rgb.shape == (2, 4, 3)
    assert rgb[0, 0].tolist() == WHITE  # TP: both class 1
    assert rgb[0, 1].tolist() == RED  # FP: predicted 1 on background
    assert rgb[0, 2].tolist() == BLUE  # FN: class 1 predicted background
    assert rgb[0, 3].tolist() == [1.0, 1.0, 1.0] and rgb[1, 3].tolist() == [
        1.0,
        1.0,
        1.0,
    ]  # TN: the grey image (1 here)
    assert rgb[1, 0].tolist() == RED  # wrong class (ref 2, pred 1): a false positive
    assert rgb[1, 1].tolist() == WHITE
    assert rgb[1, 2].tolist() == RED  # predicted 2 on background
    # blended: (1 - alpha) * grey + alpha * colour
    half = error_overlay(image, ref, pred, alpha=0.5)
    assert half[0, 1].tolist() == [0.5, 0.0, 0.0]  # red over grey 0
    assert half[1, 2].tolist() == [1.0, 0.5, 0.5]  # red over grey 1
    assert half[0, 2].tolist() == [0.5, 0.5, 1.0]  # blue over grey 1


def test_overlay_one_label_only():
    image, ref, pred = hand_case()
    rgb = error_overlay(image, ref, pred, label=2, alpha=1.0)
    assert rgb[1, 0].tolist() == BLUE  # reference 2, predicted 1: a miss of class 2
    assert rgb[1, 2].tolist() == RED
    assert rgb[0, 0].tolist() == [0.0, 0.0, 0.0]  # class 1 agreement does not count: grey 0


def test_slice_choice():
    ref = np.zeros((4, 5, 6), np.int16)
    ref[1, 1:4, 1:5] = 1
    ref[:, 2, 3] = 1
    assert best_slice(ref, 0) == 1 and best_slice(ref, 2) in (3,)
    assert slice_axis((1.0, 1.0, 1.0)) == 2 and slice_axis((3.0, 1.0, 1.0)) == 0
    view = take_slice(ref, 0, 1)
    assert view.shape == (6, 5) and view.sum() == ref[1].sum()
    assert take_slice(np.zeros((2, 4, 5, 6)), 2, 0).shape == (2, 5, 4)  # channel axis kept


def _nifti(path, array, spacing=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([*spacing, 1.0])), str(path))
    return path


def _case(tmp_path, name, seed):
    rng = np.random.default_rng(seed)
    label = np.zeros((12, 14, 10), np.int16)
    label[3:9, 4:10, 2:8] = 1
    label[5:7, 6:8, 3:6] = 2
    image = label * 50.0 + rng.normal(0, 10, label.shape)
    return _nifti(tmp_path / "data" / f"{name}_0000.nii.gz", image.astype(np.float32)), _nifti(
        tmp_path / "data" / f"{name}.nii.gz", label
    )


def _fake_run(root, model, cases, shift, dice, benchmark=None):
    """A finished run folder as training leaves it (config, plan, history, validation/...), without training."""
    config = Config(model=model)
    config.model_args = {"n_stages": 2}
    root.mkdir(parents=True)
    config.save(root / "config.json")
    plan = {
        "spatial_dims": 3,
        "channel_names": ["MRI"],
        "labels": {"0": "background", "1": "anterior", "2": "posterior"},
        "num_classes": 3,
        "patch_size": [8, 8, 8],
        "target_spacing": [1, 1, 1],
        "ct_stats": {},
        "n_channel_files": 1,
        "file_ending": ".nii.gz",
        "median_shape": [12, 14, 10],
    }
    (root / "plan.json").write_text(json.dumps(plan))
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / (e + 1) + shift,
            "val_dice": dice * e / 3,
            "epoch_time_s": 10.0 + shift,
            "lr": 1e-3,
        }
        for e in range(4)
    ]
    (root / "history.json").write_text(json.dumps(history))
    validation = root / "validation"
    sources = {}
    summary_cases = []
    for name, (image, label) in cases.items():
        ref = nib.load(str(label)).get_fdata().astype(np.int16)
        pred = np.roll(ref, int(shift), axis=0)
        _nifti(validation / f"{name}.nii.gz", pred)
        (validation / "labels").mkdir(exist_ok=True)
        (validation / "labels" / f"{name}.nii.gz").symlink_to(label)
        sources[name] = {"image": [str(image)], "label": str(label)}
        summary_cases.append({"case": name, "metrics": {"1": {"Dice": dice}, "2": {"Dice": dice - 0.1}}})
    (validation / "cases.json").write_text(json.dumps(sources))
    metric = {
        "1": {"Dice": dice, "IoU": dice - 0.1, "NSD": dice + 0.05, "HD95": 3.0 - dice},
        "2": {"Dice": dice - 0.2, "IoU": 0.4, "NSD": 0.7, "HD95": 4.0},
    }
    summary = {
        "mean": metric,
        "std": {k: {m: 0.01 for m in v} for k, v in metric.items()},
        "foreground_mean": {"Dice": dice - 0.1, "IoU": 0.5, "NSD": 0.8, "HD95": 3.5},
        "cases": summary_cases,
    }
    (validation / "summary.json").write_text(json.dumps(summary))
    if benchmark:
        (root / "benchmark.json").write_text(json.dumps(benchmark))
    return root


@pytest.mark.slow
def test_report_from_two_runs(tmp_path):
    cases = {name: _case(tmp_path, name, i) for i, name in enumerate(["hippo_001", "hippo_002"])}
    bench = {
        "models": [
            {
                "model": "unet",
                "params": 1000,
                "macs": 2e9,
                "train_step_s": 0.5,
                "train_peak_mem_mb": 300.0,
                "infer_s": 1.5,
                "infer_peak_mem_mb": 120.0,
                "patch": [8, 8, 8],
                "batch_size": 2,
                "infer_shape": [12, 14, 10],
            }
        ],
        "device": "cpu",
        "threads": 2,
        "torch": "2.x",
        "patch": [8, 8, 8],
        "batch_size": 2,
        "infer_shape": [12, 14, 10],
    }
    run_a = _fake_run(tmp_path / "runs" / "unet", "unet", cases, shift=0, dice=0.9, benchmark=bench)
    run_b = _fake_run(tmp_path / "runs" / "slices", "unet2d-slices", cases, shift=1, dice=0.8)
    out = tmp_path / "report"
    proc = run_cli("report", run_a, run_b, "--out", out)
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.md").read_text()
    for text in (
        "### Dice",
        "### NSD",
        "### HD95 (mm)",
        "anterior (1)",
        "posterior (2)",
        "**0.900 ± 0.010**",
        "0.800 ± 0.010",
        "| unet | unet |",
        "unet2d-slices",
        "0:00:40",
        "300.0",
        "2.00G",
        "![training curves](curves.png)",
        "![overlays](overlays.png)",
    ):
        assert text in page, text
    assert "**2.100 ± 0.010**" in page  # HD95: lower is better
    assert (
        "### IoU (Jaccard)" in page and "**0.800 ± 0.010**" in page
    )  # IoU of run a's class 1 (Dice - 0.1) beats run b's
    # per case, run b's Dice is 0.1 below run a's in both classes: a constant paired difference, worse on both cases
    # (2 subjects: too few for BCa, the percentile interval)
    assert "| slices | 2 / 2 | -0.1000 [-0.1000, -0.1000] (percentile) | 0 / 2 | n/a | n/a |" in page
    for png in ("curves.png", "overlays.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_paired_differences_resample_subjects():
    """The report's interval is ``paired_difference``'s over the subjects of the first run's ``data.group_by``: the
    two frames of a patient, equal here, count once, as in the table of one case per patient."""
    dice = np.random.default_rng(0).uniform(0.6, 0.9, (2, 5))  # (runs, patients)

    def run(i, group_by):
        cases = [
            {"case": f"patient{p:03d}_frame{f:02d}", "metrics": {"1": {"Dice": dice[i, p]}}}
            for p in range(5)
            for f in (1, 12)
        ]
        return {"config": {"data": {"group_by": group_by}}, "summary": {"cases": cases}}

    lines = _paired_table([run(0, r"patient\d+"), run(1, "")], ["a", "b"])
    caption, row = lines[2], lines[-2]
    assert r"`data.group_by`, `patient\d+`" in caption and "BCa bootstrap interval over subjects" in caption
    once = paired_difference(dice[1][:, None], dice[0][:, None], [f"patient{p:03d}" for p in range(5)])
    lo, hi = once["ci"]
    better, worse = int((dice[1] > dice[0]).sum()) * 2, int((dice[1] < dice[0]).sum()) * 2
    interval = f"{once['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    assert row == f"| b | 10 / 5 | {interval} | {better} / {worse} | n/a | n/a |" and once["ci_method"] == "BCa"


def test_report_without_common_cases_still_writes_the_page(tmp_path):
    run_a = _fake_run(tmp_path / "a", "unet", {"c1": _case(tmp_path, "c1", 0)}, 0, 0.9)
    run_b = _fake_run(tmp_path / "b", "unet", {"c2": _case(tmp_path, "c2", 1)}, 1, 0.8)
    page = make_report([run_a, run_b], tmp_path / "out").read_text()
    assert "no overlays" in page and "a" in page and not (tmp_path / "out" / "overlays.png").exists()


@pytest.mark.slow
def test_overlay_command(tmp_path):
    image, label = _case(tmp_path, "one", 0)
    ref = nib.load(str(label)).get_fdata().astype(np.int16)
    pred = _nifti(tmp_path / "pred.nii.gz", np.roll(ref, 1, axis=1))
    out = tmp_path / "overlay.png"
    proc = run_cli("overlay", image, label, pred, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    bad = _nifti(tmp_path / "bad.nii.gz", np.zeros((3, 3, 3), np.int16))
    proc = run_cli("overlay", image, label, bad, "--out", tmp_path / "x.png")
    assert proc.returncode == 2 and "bad.nii.gz" in proc.stderr and "Traceback" not in proc.stderr


def test_write_overlay_2d(tmp_path):
    from PIL import Image as PILImage

    ref = np.zeros((20, 24), np.uint8)
    ref[5:15, 6:18] = 1
    pred = np.roll(ref, 2, axis=1)
    rgb = np.stack([ref * 200, ref * 100, np.full_like(ref, 30)], axis=-1).astype(np.uint8)
    paths = []
    for name, arr in (("img.png", rgb), ("ref.png", ref), ("pred.png", pred)):
        PILImage.fromarray(arr).save(tmp_path / name)
        paths.append(tmp_path / name)
    written = write_overlay(paths[0], paths[1], paths[2], tmp_path / "o.png")
    assert written.read_bytes()[:4] == b"\x89PNG"


def test_alpha_zero_is_the_image():
    image, ref, pred = hand_case()
    rgb = error_overlay(image, ref, pred, alpha=0.0)
    assert np.array_equal(rgb, np.repeat(image[..., None], 3, axis=-1))
