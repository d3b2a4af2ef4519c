"""Subject-grouped cross-validation splits, nnU-Net's splits_final.json, and their one-line errors."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from unetzoo.config import DataConfig
from unetzoo.data.splits import fold_split, load_splits, make_splits, splits_for, subjects
from unetzoo.errors import UnetzooError

# ACDC-like names: two volumes (end-diastole, end-systole) per patient, at patient-specific frame numbers
ACDC = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 11) for f in (1, 4 + p)]


def test_subjects_group_by_the_match_in_the_case_name():
    groups = subjects(ACDC + ["extra_case"], r"patient\d+")
    assert groups["patient003"] == ["patient003_frame01", "patient003_frame07"]
    assert groups["extra_case"] == ["extra_case"]  # no match: its own subject
    assert len(groups) == 11
    assert subjects(["b", "a"]) == {"a": ["a"], "b": ["b"]}  # no pattern: every case is a subject


def test_grouped_folds_keep_each_patient_together_and_balanced():
    splits = make_splits(ACDC, folds=5, seed=0, group_by=r"patient\d+")
    assert sorted(n for s in splits for n in s["val"]) == sorted(ACDC)  # every case validated once
    for s in splits:
        assert len(s["val"]) == 4 and len(s["train"]) == 16
        train_patients = {n.split("_")[0] for n in s["train"]}
        val_patients = {n.split("_")[0] for n in s["val"]}
        assert not train_patients & val_patients
    assert make_splits(ACDC, 5, 0, r"patient\d+") == splits
    assert make_splits(ACDC, 5, 1, r"patient\d+") != splits


def test_ungrouped_splits_can_separate_a_patient():
    """What grouping prevents: case-wise folds put some patient's two volumes on both sides."""
    splits = make_splits(ACDC, folds=5, seed=0)
    separated = [s for s in splits if {n.split("_")[0] for n in s["train"]} & {n.split("_")[0] for n in s["val"]}]
    assert separated


def test_unequal_subjects_are_dealt_to_the_emptiest_fold():
    """Hand-computed: subjects of 3, 2, 1, 1, 1 cases over 2 folds give 3+1 and 2+1+1 cases."""
    names = ["a_1", "a_2", "a_3", "b_1", "b_2", "c_1", "d_1", "e_1"]
    splits = make_splits(names, folds=2, seed=0, group_by=r"^[a-e]")
    assert sorted(len(s["val"]) for s in splits) == [4, 4]
    assert any({"a_1", "a_2", "a_3"} <= set(s["val"]) for s in splits)
    assert any({"b_1", "b_2"} <= set(s["val"]) for s in splits)


@pytest.mark.parametrize(
    "group_by, message",
    [
        (r"subject\d+", r"--group-by 'subject\\d\+' matches no case name \(e.g. 'patient001_frame01'\)"),
        (r"patient(\d+", r"--group-by 'patient\(\\d\+': not a regular expression"),
        (
            r"frame",
            r"the dataset has 1 subject\(s\) \(--group-by 'frame'\), fewer than the 5 folds requested; no fold count "
            r"works .*give another --group-by",
        ),
    ],
)
def test_bad_grouping_is_a_one_line_error(group_by, message):
    with pytest.raises(UnetzooError, match=message):
        make_splits(ACDC, folds=5, group_by=group_by)


def test_splits_final_json_round_trip(tmp_path):
    """nnU-Net's splits_final.json (a list of {"train": [...], "val": [...]}) is read as is, and ours is that file."""
    splits = make_splits(ACDC, folds=5, seed=2, group_by=r"patient\d+")
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(splits))
    assert load_splits(path, ACDC, r"patient\d+") == splits
    # a file written by nnU-Net: unsorted lists, only some cases named (the others are unused)
    nnunet = [
        {"train": ["patient002_frame01", "patient001_frame01"], "val": ["patient003_frame07"]},
        {"train": ["patient003_frame07"], "val": ["patient002_frame01", "patient001_frame01"]},
    ]
    path.write_text(json.dumps(nnunet))
    assert load_splits(path, ACDC) == [
        {"train": ["patient001_frame01", "patient002_frame01"], "val": ["patient003_frame07"]},
        {"train": ["patient003_frame07"], "val": ["patient001_frame01", "patient002_frame01"]},
    ]
    config = DataConfig(splits_file=str(path), folds=3)
    assert splits_for(ACDC, config, seed=0) == load_splits(path, ACDC)  # the file wins over data.folds
    assert len(splits_for(ACDC, DataConfig(folds=3, group_by=r"patient\d+"), seed=0)) == 3


@pytest.mark.parametrize(
    "content, message",
    [
        (
            [{"train": ["patient001_frame01"], "val": ["patient999_frame01"]}],
            r"fold 0 names 1 case\(s\) not in the dataset, e.g. 'patient999_frame01'",
        ),
        (
            [{"train": ["patient001_frame01"], "val": ["patient001_frame01"]}],
            r"fold 0 has case 'patient001_frame01' in both train and val",
        ),
        ({"train": [], "val": []}, r"expected a list of \{\"train\""),
        ([{"train": ["patient001_frame01"]}], r"fold 0: expected a list"),
        ([{"train": ["patient001_frame01"], "val": []}], r"fold 0 has no validation case"),
    ],
)
def test_bad_splits_file_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UnetzooError, match=f"{path}: {message}"):
        load_splits(path, ACDC)


def test_splits_file_that_separates_a_subject_is_refused_when_grouping(tmp_path):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": ["patient001_frame01"], "val": ["patient001_frame05"]}]))
    assert load_splits(path, ACDC)  # case-wise it is a valid split
    with pytest.raises(
        UnetzooError, match=r"fold 0 has subject 'patient001' \(--group-by 'patient\\d\+'\) in both train and val"
    ):
        load_splits(path, ACDC, r"patient\d+")
    with pytest.raises(UnetzooError, match=f"{tmp_path / 'missing.json'}: splits file not found"):
        load_splits(tmp_path / "missing.json", ACDC)


def test_fold_out_of_range_is_a_one_line_error():
    splits = make_splits(ACDC, folds=2)
    assert fold_split(splits, 1) == splits[1]
    for fold in (2, -1, "first"):
        with pytest.raises(
            UnetzooError, match=r"fold .* does not exist: splits_final.json has folds 0..1 \(or use fold all\)"
        ):
            fold_split(splits, fold, "splits_final.json")


@pytest.mark.slow
def test_train_uses_a_splits_file_and_records_it(organs, tmp_path):
    """``data.splits_file`` with fold 1: the run trains on that fold and saves the file as its splits.json; on the
    command line (``--splits FILE``) a fold the file does not have ends with one line and exit status 2."""
    from conftest import tiny_config
    from unetzoo.training.run import train

    names = [f"organs_{i:03d}" for i in range(6)]
    splits = [{"train": names[2:], "val": names[:2]}, {"train": names[:4], "val": names[4:]}]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(splits))
    config = tiny_config()
    config.fold, config.data.splits_file, config.train.iters_per_epoch = 1, str(path), 1
    run = train(organs, tmp_path / "run", config)
    assert json.loads((run / "splits.json").read_text()) == splits
    assert json.loads((run / "config.json").read_text())["data"]["splits_file"] == str(path)
    assert (
        sorted(c["case"] for c in json.loads((run / "validation" / "summary.json").read_text())["cases"]) == names[4:]
    )
    bad = run_cli("train", organs, "--out", tmp_path / "bad", "--splits", path, "--fold", "2")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"unetzoo: error: fold 2 does not exist: {path} has folds 0..1 (or use fold all)"
    ]
