"""Metric values checked against counts and distances computed by hand."""

from __future__ import annotations

import csv
import json
import logging
import math

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from unetzoo.errors import UnetzooError
from unetzoo.evaluation import case_metrics, class_means, evaluate_folder


def two_squares():
    """Ref rows/cols 2..5 (16 px), pred rows/cols 3..6 (16 px): overlap 3..5 x 3..5 = 9 px of 100."""
    ref = np.zeros((10, 10), np.int16)
    ref[2:6, 2:6] = 1
    pred = np.zeros((10, 10), np.int16)
    pred[3:7, 3:7] = 1
    return pred, ref


def test_dice_iou_and_counts_by_hand():
    pred, ref = two_squares()
    m = case_metrics(pred, ref, [1], (1.0, 1.0))[1]
    assert (m["TP"], m["FP"], m["FN"], m["TN"], m["n_pred"], m["n_ref"]) == (9, 7, 7, 77, 16, 16)
    assert m["Dice"] == pytest.approx(18 / 32)
    assert m["IoU"] == pytest.approx(9 / 23)


def test_ma_and_mean_iu_by_hand():
    pred, ref = two_squares()
    # background: ref has 84 px, 77 of them predicted background; the union of both backgrounds is 91 px
    got = class_means(pred, ref, [1])
    assert got["MA"] == pytest.approx((77 / 84 + 9 / 16) / 2)
    assert got["mean_IU"] == pytest.approx((77 / 91 + 9 / 23) / 2)


def test_ma_leaves_out_a_class_missing_from_the_reference():
    pred, ref = two_squares()
    pred[0, 0] = 2  # class 2 only predicted: no recall (left out), IoU 0 (counted)
    got = class_means(pred, ref, [1, 2])
    assert got["MA"] == pytest.approx((76 / 84 + 9 / 16) / 2)
    assert got["mean_IU"] == pytest.approx((76 / 91 + 9 / 23 + 0) / 3)


def planes(shift_axis: int, shift: int, shape=(20, 20, 20)):
    ref = np.zeros(shape, np.int16)
    pred = np.zeros(shape, np.int16)
    index = [slice(None)] * 3
    index[shift_axis] = 5
    ref[tuple(index)] = 1
    index[shift_axis] = 5 + shift
    pred[tuple(index)] = 1
    return pred, ref


@pytest.mark.parametrize("axis, expected_mm", [(0, 4.0), (1, 2.0), (2, 1.0)])
def test_hd95_of_parallel_planes_uses_spacing(axis, expected_mm):
    pred, ref = planes(axis, 2)
    m = case_metrics(pred, ref, [1], (2.0, 1.0, 0.5))[1]
    assert m["HD95"] == pytest.approx(expected_mm)


def test_hd95_of_shifted_cube():
    ref = np.zeros((20, 20, 20), np.int16)
    ref[5:15, 5:15, 5:15] = 1
    pred = np.zeros_like(ref)
    pred[7:17, 5:15, 5:15] = 1  # shifted by 2 voxels of 2 mm along axis 0
    m = case_metrics(pred, ref, [1], (2.0, 1.0, 0.5))[1]
    assert m["HD95"] == pytest.approx(4.0)


def test_nsd_against_tolerance():
    pred, ref = planes(0, 2)  # every surface voxel is 4 mm from the other surface
    spacing = (2.0, 1.0, 0.5)
    assert case_metrics(pred, ref, [1], spacing, nsd_tolerance_mm=5.0)[1]["NSD"] == pytest.approx(1.0)
    assert case_metrics(pred, ref, [1], spacing, nsd_tolerance_mm=3.0)[1]["NSD"] == pytest.approx(0.0)

    cube_ref = np.zeros((20, 20, 20), np.int16)
    cube_ref[5:15, 5:15, 5:15] = 1
    cube_pred = np.zeros_like(cube_ref)
    cube_pred[7:17, 5:15, 5:15] = 1
    partial = case_metrics(cube_pred, cube_ref, [1], spacing, nsd_tolerance_mm=3.0)[1]["NSD"]
    assert 0.5 < partial < 1.0  # only the faces across the shift are out of tolerance
    assert case_metrics(cube_pred, cube_ref, [1], spacing, nsd_tolerance_mm=4.5)[1]["NSD"] == pytest.approx(1.0)


def test_both_empty_gives_nan():
    empty = np.zeros((8, 8, 8), np.int16)
    m = case_metrics(empty, empty, [1], (1.0, 1.0, 1.0))[1]
    for key in ("Dice", "IoU", "NSD", "HD95"):
        assert math.isnan(m[key])
    assert (m["TP"], m["FP"], m["FN"], m["TN"]) == (0, 0, 0, 512)


@pytest.mark.parametrize("pred_has_it", [True, False])
def test_one_empty_gives_zero_and_diagonal(pred_has_it):
    empty = np.zeros((8, 6, 4), np.int16)
    full = empty.copy()
    full[2:4, 2:4, 1:3] = 1
    pred, ref = (full, empty) if pred_has_it else (empty, full)
    m = case_metrics(pred, ref, [1], (2.0, 1.0, 3.0))[1]
    assert (m["Dice"], m["IoU"], m["NSD"]) == (0.0, 0.0, 0.0)
    assert m["HD95"] == pytest.approx(math.sqrt(16**2 + 6**2 + 12**2))


def test_perfect_prediction_2d():
    pred, ref = two_squares()
    m = case_metrics(ref, ref, [1], (1.0, 1.0))[1]
    assert (m["Dice"], m["IoU"], m["NSD"], m["HD95"]) == (1.0, 1.0, 1.0, 0.0)


def write_nifti(path, array, spacing=(2.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


def nifti_folders(tmp_path):
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "labels"
    pred_dir.mkdir()
    label_dir.mkdir()
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[7:10, 7:10, 7:10] = 2
    write_nifti(label_dir / "case_a.nii.gz", ref)
    write_nifti(pred_dir / "case_a.nii.gz", ref)  # perfect
    ref_b = np.zeros((12, 12, 12), np.uint8)
    ref_b[2:6, 2:6, 2:6] = 1  # no label 2 in reference or prediction: NaN for label 2
    pred_b = np.zeros_like(ref_b)
    pred_b[3:7, 2:6, 2:6] = 1  # shifted by one 2 mm voxel along axis 0: TP 48, FP 16, FN 16
    write_nifti(label_dir / "case_b.nii.gz", ref_b)
    write_nifti(pred_dir / "case_b.nii.gz", pred_b)
    return pred_dir, label_dir


def test_evaluate_folder_nifti(tmp_path):
    pred_dir, label_dir = nifti_folders(tmp_path)
    evaluate_folder(pred_dir, label_dir, tmp_path / "out", nsd_tolerance_mm=1.0)

    def no_nan(name):
        raise AssertionError(f"invalid JSON constant {name}")

    summary = json.loads((tmp_path / "out" / "summary.json").read_text(), parse_constant=no_nan)
    assert set(summary) == {
        "mean",
        "std",
        "foreground_mean",
        "cases",
        "metric_per_case",
        "nsd_tolerance_mm",
        "label_ids",
    }
    # nnU-Net's per-case key: the same files and metrics as "cases"
    assert summary["metric_per_case"] == [
        {k: c[k] for k in ("prediction_file", "reference_file", "metrics")} for c in summary["cases"]
    ]
    assert summary["label_ids"] == [1, 2]
    assert set(summary["foreground_mean"]) == {"Dice", "IoU", "NSD", "HD95", "MA", "mean_IU"}
    case_b = next(c for c in summary["cases"] if c["case"] == "case_b")
    assert set(case_b) == {"case", "prediction_file", "reference_file", "metrics", "MA", "mean_IU"}
    b1 = case_b["metrics"]["1"]
    assert (b1["TP"], b1["FP"], b1["FN"]) == (48, 16, 16)
    assert b1["Dice"] == pytest.approx(96 / 128)
    assert b1["HD95"] == pytest.approx(2.0)
    assert case_b["metrics"]["2"]["Dice"] is None
    assert summary["mean"]["1"]["Dice"] == pytest.approx((1.0 + 0.75) / 2)
    assert summary["std"]["1"]["Dice"] == pytest.approx(0.125)
    assert summary["mean"]["2"]["Dice"] == pytest.approx(1.0)  # the NaN case is left out
    assert summary["foreground_mean"]["Dice"] == pytest.approx((0.875 + 1.0) / 2)

    with open(tmp_path / "out" / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case", "label", "Dice", "IoU", "NSD", "HD95", "TP", "FP", "FN", "n_pred", "n_ref"]
    assert [(r["case"], r["label"]) for r in rows] == [
        ("case_a", "1"),
        ("case_a", "2"),
        ("case_b", "1"),
        ("case_b", "2"),
    ]
    assert float(rows[2]["Dice"]) == pytest.approx(0.75)
    assert rows[3]["Dice"] == ""
    assert not list((tmp_path / "out").glob(".tmp_*"))


def test_evaluate_folder_png(tmp_path):
    pred, ref = two_squares()
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    PILImage.fromarray(ref.astype(np.uint8)).save(tmp_path / "ref" / "img1.png")
    PILImage.fromarray(pred.astype(np.uint8)).save(tmp_path / "pred" / "img1.png")
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "ref", tmp_path / "out")
    assert summary["label_ids"] == [1]
    assert summary["mean"]["1"]["Dice"] == pytest.approx(18 / 32)
    assert summary["cases"][0]["MA"] == pytest.approx((77 / 84 + 9 / 16) / 2)
    assert (tmp_path / "out" / "summary.json").is_file() and (tmp_path / "out" / "cases.csv").is_file()


def test_missing_prediction_names_the_file(tmp_path):
    pred_dir, label_dir = nifti_folders(tmp_path)
    (pred_dir / "case_b.nii.gz").unlink()
    with pytest.raises(UnetzooError, match="case_b.nii.gz"):
        evaluate_folder(pred_dir, label_dir, tmp_path / "out")


def test_prediction_without_reference_is_ignored_with_warning(tmp_path, caplog):
    pred_dir, label_dir = nifti_folders(tmp_path)
    write_nifti(pred_dir / "case_c.nii.gz", np.zeros((12, 12, 12), np.uint8))
    with caplog.at_level(logging.WARNING):
        summary = evaluate_folder(pred_dir, label_dir, tmp_path / "out")
    assert "case_c.nii.gz" in caplog.text
    assert [c["case"] for c in summary["cases"]] == ["case_a", "case_b"]


def test_shape_mismatch_names_the_file(tmp_path):
    pred_dir, label_dir = nifti_folders(tmp_path)
    write_nifti(pred_dir / "case_b.nii.gz", np.zeros((12, 12, 11), np.uint8))
    with pytest.raises(
        UnetzooError,
        match=r"case_b\.nii\.gz: not on the grid of the reference .*case_b\.nii\.gz: shape \(12, 12, 11\) differs from the reference's",
    ):
        evaluate_folder(pred_dir, label_dir, tmp_path / "out")


def test_label_ids_evaluate_those_ids_only(tmp_path):
    """Given label ids evaluate those only (a subset of the values is allowed): other values are left out."""
    pred_dir, label_dir = nifti_folders(tmp_path)
    other = np.asarray(nib.load(str(label_dir / "case_a.nii.gz")).dataobj)
    other[0, 0, 0] = 7
    write_nifti(pred_dir / "case_a.nii.gz", other)
    summary = evaluate_folder(pred_dir, label_dir, tmp_path / "out", label_ids=[1, 2])
    assert summary["label_ids"] == [1, 2] and summary["cases"][0]["metrics"]["2"]["Dice"] == 1.0
