"""The command line is generated from the config's one declaration per option, and docs/cli.md from the parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from unetzoo.cli import OPTION_TREES, REGENERATE, _config_from_args, _parser, main, reference_markdown
from unetzoo.config import RULES, BenchmarkConfig, Config, PredictConfig, options, set_options

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _actions(command: str) -> dict[str, argparse.Action]:
    [sub] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {flag: a for a in sub.choices[command]._actions for flag in a.option_strings}


def test_docs_cli_md_is_the_generated_reference():
    expected = reference_markdown()
    assert REFERENCE.is_file(), f"docs/cli.md is missing: run {REGENERATE}"
    assert REFERENCE.read_text(encoding="utf-8") == expected, f"docs/cli.md is out of date: run {REGENERATE}"
    for command in ("train", "predict", "benchmark", "evaluate", "compare"):
        assert f"\n## unetzoo {command}\n" in expected


def test_reference_does_not_depend_on_the_terminal(monkeypatch):
    expected = reference_markdown()
    for columns in ("20", "400"):
        monkeypatch.setenv("COLUMNS", columns)
        assert reference_markdown() == expected


@pytest.mark.parametrize(
    "command, tree", [("train", Config), ("predict", PredictConfig), ("benchmark", BenchmarkConfig)]
)
def test_every_flag_of_a_config_field_comes_from_its_declaration(command, tree):
    """Each option's flag, help and metavar are its RULES entry's; argparse checks no range or choice."""
    assert OPTION_TREES[command] is tree
    actions = _actions(command)
    declared = options(tree)
    assert declared
    for option in declared:
        action = actions[option.rule.flag]
        assert action.dest == option.path and action.default is None
        assert action.help == option.rule.help and action.help, option.path
        assert action.choices is None  # ranges and choices are validate's, not argparse's
        if option.rule.metavar:
            assert action.metavar == option.rule.metavar


def test_lr_flag_help_and_check_come_from_one_declaration(tmp_path, capsys):
    rule = RULES["train.lr"]
    assert rule.flag == "--lr" and _actions("train")["--lr"].help == rule.help
    out = tmp_path / "run"
    for value, shown in (("0", "0.0"), ("fast", "'fast'")):  # a value of the wrong type reaches validate too
        assert main(["train", str(tmp_path / "data"), "--out", str(out), "--lr", value]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"unetzoo: error: train.lr (--lr): expected a number > 0, got {shown}"
        ]
    assert not out.exists()


def test_train_flags_set_their_fields(tmp_path):
    """The generic loop over the parsed flags: every field whose flag was given; the others keep the config's."""
    args = _parser().parse_args(
        [
            "train",
            "data",
            "--out",
            str(tmp_path / "run"),
            "--lr",
            "3e-4",
            "--patch",
            "8",
            "16",
            "--fold",
            "all",
            "--splits",
            "s.json",
            "--epochs",
            "7",
            "--set",
            "train.momentum=0.9",
        ]
    )
    config = _config_from_args(args)
    expected = Config(fold="all")
    expected.train.lr, expected.data.patch_size, expected.data.splits_file = 3e-4, [8, 16], "s.json"
    expected.train.epochs, expected.train.momentum = 7, 0.9
    assert config == expected and config.validate() is config
    args = _parser().parse_args(["train", "data", "--out", str(tmp_path / "r"), "--fold", "3"])
    assert _config_from_args(args).fold == 3


def test_predict_and_benchmark_flags_fill_their_sections():
    args = _parser().parse_args(
        [
            "predict",
            "run",
            "in",
            "out",
            "--overlap",
            "0.5",
            "--mirror",
            "--upsample",
            "2",
            "--no-postprocess",
            "--checkpoint",
            "last",
        ]
    )
    assert set_options(PredictConfig(), vars(args)) == PredictConfig(
        overlap=0.5, mirror=True, upsample=2, no_postprocess=True, checkpoint="last"
    )
    assert set_options(PredictConfig(), vars(_parser().parse_args(["predict", "run", "in", "out"]))) == PredictConfig()
    args = _parser().parse_args(
        [
            "benchmark",
            "--models",
            "unet",
            "--shape",
            "1",
            "16",
            "16",
            "--threads",
            "2",
            "--precision",
            "32-true",
            "--out",
            "o",
        ]
    )
    bench = set_options(BenchmarkConfig(), vars(args)).validate()
    assert bench == BenchmarkConfig(shape=[1, 16, 16], threads=2, precision="32-true")
    config = bench.override(Config())
    assert config.train.precision == "32-true" and config.train.batch_size is None


def test_keep_largest_and_no_postprocess_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["predict", "run", "in", "out", "--keep-largest", "1", "--no-postprocess"])
    assert "not allowed with argument" in capsys.readouterr().err
