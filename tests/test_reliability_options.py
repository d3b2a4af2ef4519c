"""Tracebacks and unclear messages (each: one line, exit 2, before any work, nothing written): options of train,
compare and benchmark, and the model factory of the Python API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY_SHAPE
from unetzoo.cli import main
from unetzoo.config import Config
from unetzoo.data.phantoms import write_organs_phantom
from unetzoo.errors import UnetzooError
from unetzoo.models import create_model


def _error(capsys) -> str:
    """The one error line on stderr (lines logged before it, e.g. the dataset read, are allowed; no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if line.startswith("unetzoo: error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    return errors[0][len("unetzoo: error: ") :]


def _only_line(capsys) -> str:
    """stderr is exactly one line, the error (the check came before anything was read or logged)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("unetzoo: error: ")
    return line[len("unetzoo: error: ") :]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- train: --seed, model_args, data.pos_neg_ratio ------------------------------------------------------------


def test_seed_beyond_what_numpy_takes(organs, tmp_path, capsys):
    """`--seed 99999999999` (train; also `Config(seed=2**40).validate()`)."""
    out = tmp_path / "run"
    assert main(["train", str(organs), "--out", str(out), "--seed", "99999999999"]) == 2
    assert _only_line(capsys) == "seed (--seed): expected an integer >= 0 and <= 4294967295, got 99999999999"
    assert not out.exists()
    with pytest.raises(
        UnetzooError, match=rf"^seed \(--seed\): expected an integer >= 0 and <= 4294967295, got {2**40}$"
    ):
        Config(seed=2**40).validate()
    assert Config(seed=2**32 - 1).validate().seed == 2**32 - 1  # the largest seed is accepted


@pytest.mark.parametrize("value", ["0", "-1"])
def test_base_features_zero_or_negative(organs, tmp_path, monkeypatch, capsys, value):
    """`--set model_args.base_features=0` or `-1` (train: refused; check whether anything is written into --out;
    also `create_model("unet", base_features=0)` raises UnetzooError). The model's own arguments are checked by the
    model factory, after the dataset is read and planned: nothing is written into --out, nor into the cache."""
    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", str(organs), "--out", str(out), "--set", f"model_args.base_features={value}"]) == 2
    assert _error(capsys) == (
        f"model_args.base_features (unet): expected an integer >= 1 (a number of channels), got {value}"
    )
    assert not out.exists() and not (tmp_path / "cache").exists()
    with pytest.raises(UnetzooError, match=r"^model_args.base_features \(unet\): expected an integer >= 1 .*got 0$"):
        create_model("unet", base_features=0)


def test_pos_neg_ratio_both_zero(organs, tmp_path, capsys):
    """`--set data.pos_neg_ratio=[0,0]`."""
    out = tmp_path / "run"
    assert main(["train", str(organs), "--out", str(out), "--set", "data.pos_neg_ratio=[0,0]"]) == 2
    assert _only_line(capsys) == "data.pos_neg_ratio: expected a list of 2 numbers >= 0, not both 0, got [0, 0]"
    assert not out.exists()
    config = Config()
    config.data.pos_neg_ratio = [0, 1]  # one of the two may be 0
    assert config.validate() is config


def test_create_model_with_no_input_channels():
    """`create_model(in_channels=0)` in the API (unetzoo.models.create_model)."""
    with pytest.raises(UnetzooError, match=r"^model 'unet': in_channels must be an integer >= 1, got 0$"):
        create_model("unet", in_channels=0)


# ---- the fold count advised where there are too few cases ------------------------------------------------------


def test_fold_advice_names_a_count_that_works(organs, tmp_path, capsys):
    """The advice "use --folds 2 or fewer" where no fold count works: with a dataset of 1 case and default folds the
    message must not advise a fold count that cannot work; with 6 cases and --folds 10 it advises "--folds 6 or
    fewer"."""
    one = write_organs_phantom(tmp_path / "one", cases=1, seed=1, shape=TINY_SHAPE)
    for folds in ([], ["--folds", "2"]):
        out = tmp_path / "run1"
        assert main(["train", str(one), "--out", str(out), *folds]) == 2
        requested = folds[1] if folds else "5"
        assert _error(capsys) == (
            f"the dataset has 1 case(s), fewer than the {requested} folds requested; no fold count works (each fold "
            "needs a training and a validation case): add cases, or train on every case with --fold all"
        )
        assert not out.exists()
    out = tmp_path / "run6"
    assert main(["train", str(organs), "--out", str(out), "--folds", "10"]) == 2
    assert _error(capsys) == (
        "the dataset has 6 case(s), fewer than the 10 folds requested; use --folds 6 or fewer "
        "(compare: --set data.folds=6; each fold needs a validation case)"
    )
    assert not out.exists()


# ---- compare ---------------------------------------------------------------------------------------------------


def test_compare_slurm_executor_without_slurm(organs, tmp_path, monkeypatch, capsys):
    """`compare --executor slurm` where SLURM is absent."""
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    out = tmp_path / "exp"
    argv = ["compare", str(organs), "--models", "unet", "--out", str(out), "--executor", "slurm"]
    assert main([*argv, "--set", "compare.slurm.time=10"]) == 2
    assert _only_line(capsys) == (
        "--executor slurm: SLURM's sbatch and srun not found on this machine; run compare on a SLURM login node, "
        "or use --executor local"
    )
    assert not out.exists()


@pytest.mark.parametrize("content", ["[1, 2]", '{"models": ["unet"], "folds": [0]}', '"text"'])
def test_compare_json_of_the_wrong_shape(organs, tmp_path, capsys, content):
    """A `compare.json` that is a list or lacks keys (in an --out folder given to compare)."""
    out = tmp_path / "exp"
    out.mkdir()
    (out / "compare.json").write_text(content)
    before = _files(out)
    assert main(["compare", str(organs), "--models", "unet", "--out", str(out), "--budget", "1"]) == 2
    assert _only_line(capsys) == (
        f"{out / 'compare.json'}: not a unetzoo compare file: it needs the keys data, models, folds, seeds, budget, config"
    )
    assert _files(out) == before  # left as it was: no run, no log, no leaderboard


def test_compare_empty_test_folder_refused_before_training(organs, tmp_path, capsys):
    """An empty `--test` folder accepted and then failing after all training."""
    test = tmp_path / "test"
    test.mkdir()
    out = tmp_path / "exp"
    argv = ["compare", str(organs), "--models", "unet", "--out", str(out), "--budget", "1", "--test", str(test)]
    assert main(argv) == 2
    line = _only_line(capsys)
    assert line.startswith(f"{test}: no image files (") and "in this folder" in line
    assert not out.exists()
    assert main([*argv[:-1], str(tmp_path / "no_test")]) == 2
    assert _only_line(capsys) == f"{tmp_path / 'no_test'}: test folder not found"
    assert not out.exists()


# ---- benchmark -------------------------------------------------------------------------------------------------


def test_benchmark_negative_infer_shape(tmp_path, capsys):
    """`benchmark --shape 1 1 1 1` and `--infer-shape -16 16 16` failing inside workers: the inference shape is one
    of the options checked before any measurement."""
    out = tmp_path / "bench"
    argv = ["benchmark", "--models", "unet", "--infer-shape", "-16", "16", "16", "--out", str(out)]
    assert main(argv) == 2
    assert _only_line(capsys) == (
        "benchmark.infer_shape (--infer-shape): expected a list of 2 or 3 integers >= 1 or None, got [-16, 16, 16]"
    )
    assert not out.exists()


@pytest.mark.slow
def test_benchmark_shape_too_small_for_the_model(tmp_path, capsys):
    """`benchmark --shape 1 1 1 1` and `--infer-shape -16 16 16` failing inside workers: a shape too small for the
    model is found only by the model's own worker; the error is one line naming the model, the phases and the
    cause, the tracebacks kept in benchmark.json."""
    out = tmp_path / "bench"
    assert main(["benchmark", "--models", "unet", "--shape", "1", "1", "1", "1", "--out", str(out)]) == 2
    line = _error(capsys)
    assert line.startswith("benchmark failed for unet (train, infer); unet train: ValueError: Expected more than 1 ")
    assert line.endswith(f"(every error and traceback is in {out / 'benchmark.json'})")
    [row] = json.loads((out / "benchmark.json").read_text())["models"]
    assert row["model"] == "unet" and set(row["errors"]) == {"train", "infer"}
