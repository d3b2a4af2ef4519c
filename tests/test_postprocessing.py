"""Connected-component post-processing: keep-largest on hand-made masks, nnU-Net's decision, the run folder and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from conftest import run_cli
from unetzoo.errors import UnetzooError
from unetzoo.inference.postprocessing import decide, keep_largest, parse_rules
from unetzoo.io import read_label


def _mask() -> np.ndarray:
    """Class 1: components of 6, 3 and 1 pixels; class 2: components of 4 and 2 pixels (face connectivity)."""
    m = np.zeros((6, 8), dtype=np.uint8)
    m[0, 0:6] = 1  # 6
    m[2:5, 0] = 1  # 3 (row 1 separates it from the 6)
    m[5, 7] = 1  # 1
    m[3:5, 3:5] = 2  # 4
    m[0:2, 7] = 2  # 2
    return m


def test_keep_largest_by_hand():
    m = _mask()
    out = keep_largest(m, {1: 1})
    expected = m.copy()
    expected[2:5, 0] = 0
    expected[5, 7] = 0
    assert np.array_equal(out, expected)
    out = keep_largest(m, {1: 2, 2: 1})
    expected = m.copy()
    expected[5, 7] = 0  # class 1 keeps 6 and 3
    expected[0:2, 7] = 0  # class 2 keeps 4
    assert np.array_equal(out, expected)
    assert np.array_equal(keep_largest(m, {1: 3, 2: 2}), m)  # no more components than K: unchanged
    assert np.array_equal(m, _mask())  # the input is not modified


def test_keep_largest_3d_uses_face_connectivity():
    m = np.zeros((3, 3, 3), dtype=np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = 1  # corner-touching voxels are two components
    m[2, 2, 1:] = 1
    assert ndimage.label(m == 1)[1] == 3
    kept = keep_largest(m, {1: 1})
    assert kept.sum() == 2 and kept[2, 2, 1] == kept[2, 2, 2] == 1


def test_parse_rules():
    assert parse_rules("2", [1, 2]) == {1: 2, 2: 2}
    assert parse_rules("1:1,2:3", [1, 2, 3]) == {1: 1, 2: 3}
    for bad in ("0", "x", "1:0", "1-2", "1:1,2"):
        with pytest.raises(UnetzooError, match="--keep-largest"):
            parse_rules(bad, [1, 2])
    with pytest.raises(UnetzooError, match=r"class\(es\) \[4\]"):
        parse_rules("4:1", [1, 2])


def test_decision_on_a_synthetic_case():
    """Class 1's prediction has a stray blob (keeping the largest helps); class 2's reference has two real
    components (keeping the largest hurts): only class 1 is chosen, with the Dice values computed by hand."""
    ref = np.zeros((10, 10), dtype=np.uint8)
    ref[1:4, 1:4] = 1  # 9 px
    ref[6:8, 1:3] = 2  # 4 px
    ref[6:8, 6:8] = 2  # 4 px
    pred = ref.copy()
    pred[0, 8] = 1  # a stray pixel of class 1
    decision = decide([(pred, ref)], [1, 2])
    assert decision["keep_largest"] == {1: 1}
    assert decision["dice"][1]["without"] == pytest.approx(18 / 19) and decision["dice"][1]["with"] == 1.0
    assert decision["dice"][2]["without"] == 1.0 and decision["dice"][2]["with"] == pytest.approx(8 / 12)


@pytest.mark.slow
def test_training_records_the_decision_and_predict_applies_it(trained_run, organs, tmp_path):
    """The tiny run chose per class and evaluated the fold with the choice; predict applies it by default,
    ``--no-postprocess`` writes the raw argmax, ``--keep-largest 1`` keeps one component of every class."""
    from unetzoo.inference import predict

    record = json.loads((trained_run / "postprocessing.json").read_text())
    assert set(record["validation_dice"]) == {"1", "2", "3"} and record["cases"] >= 1
    assert set(record["keep_largest"]) <= {"1", "2", "3"}
    assert (trained_run / "validation" / "postprocessed" / "summary.json").is_file()

    image = sorted((organs / "imagesTr").iterdir())[0]
    raw = read_label(predict(trained_run, image, tmp_path / "raw", keep_largest={})[0]).array
    every = {1: 1, 2: 1, 3: 1}
    one = read_label(predict(trained_run, image, tmp_path / "one", keep_largest=every)[0]).array
    default = read_label(predict(trained_run, image, tmp_path / "default")[0]).array
    rules = {int(c): k for c, k in record["keep_largest"].items()}
    assert np.array_equal(default, keep_largest(raw, rules))
    assert np.array_equal(one, keep_largest(raw, every))
    assert all(ndimage.label(one == c)[1] <= 1 for c in every)
    ensemble = read_label(predict([trained_run, trained_run], image, tmp_path / "ensemble")[0]).array
    assert np.array_equal(ensemble, default)  # two copies of a run agree on its choice


@pytest.mark.slow
def test_report_shows_the_fold_with_post_processing(trained_run, tmp_path):
    from unetzoo.experiments.report import make_report

    page = make_report([trained_run], tmp_path / "report", n_cases=1).read_text()
    section = page.split("## Held-out fold with connected-component post-processing")[1].split("## Paired")[0]
    assert "classes kept to their largest component" in section and "### Dice" in section and "### HD95" in section


@pytest.mark.slow
def test_cli_keep_largest_errors_are_one_line(trained_run, organs, tmp_path):
    result = run_cli("predict", trained_run, organs / "imagesTr", tmp_path / "out", "--keep-largest", "1:0")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--keep-largest" in result.stderr
