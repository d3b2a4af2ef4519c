"""Bad options and bad config files: every config field is checked once, by
``Config.validate``, wherever a config is built (train, predict, benchmark, a config.json); a bad value is one line
naming the field and its flag, exit status 2, before any work."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from conftest import run_cli, tiny_config
from test_bad_input import untrained_run
from unetzoo.cli import main
from unetzoo.config import RULES, BenchmarkConfig, Config, PredictConfig
from unetzoo.data.plan import Plan
from unetzoo.errors import UnetzooError
from unetzoo.inference import Predictor

# (train flags, the error line after "unetzoo: error: ")
TRAIN_OPTIONS = [
    (
        ["--patch", "0", "0", "0"],
        "data.patch_size (--patch): expected a list of 2 or 3 integers >= 1 or None, got [0, 0, 0]",
    ),
    (
        ["--patch", "-32", "32", "32"],
        "data.patch_size (--patch): expected a list of 2 or 3 integers >= 1 or None, got [-32, 32, 32]",
    ),
    (["--lr", "-1"], "train.lr (--lr): expected a number > 0, got -1.0"),
    (["--batch-size", "0"], "train.batch_size (--batch-size): expected an integer >= 1 or None, got 0"),
    (["--epochs", "0"], "train.epochs (--epochs): expected an integer >= 1, got 0"),
    (["--set", "augment.elastic_p=abc"], "augment.elastic_p: expected a number >= 0 and <= 1, got 'abc'"),
    (["--set", "augment.elastic_p=1.5"], "augment.elastic_p: expected a number >= 0 and <= 1, got 1.5"),
    (["--set", "train.deep_supervision=maybe"], "train.deep_supervision: expected true or false, got 'maybe'"),
    (
        ["--set", "train.scheduler='cosine'"],
        "train.scheduler: expected one of 'poly', 'constant', 'plateau', got 'cosine'",
    ),
    (["--fold", "-1"], "fold (--fold): expected an integer >= 0 or one of 'all', got -1"),
]


@pytest.mark.parametrize("flags, message", TRAIN_OPTIONS)
def test_cli_train_option_out_of_range(tmp_path, capsys, flags, message):
    """One line naming the option, exit 2, and nothing written: the run folder is not even created."""
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--out", str(out), *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"unetzoo: error: {message}"]
    assert not out.exists()


@pytest.mark.parametrize("overlap", ["1.5", "-0.5"])
def test_cli_predict_overlap_out_of_range(tmp_path, capsys, overlap):
    run = untrained_run(tmp_path / "run", Plan.synthetic([16, 16, 16]))
    assert (
        main(["predict", str(run), str(tmp_path / "missing_input"), str(tmp_path / "out"), "--overlap", overlap]) == 2
    )
    assert capsys.readouterr().err.strip().splitlines() == [
        f"unetzoo: error: inference.overlap (--overlap): expected a number >= 0 and < 1, got {float(overlap)}"
    ]
    assert not (tmp_path / "out").exists()


# (predict flags, the error line after "unetzoo: error: "): PredictConfig's RULES, before the run is read
PREDICT_OPTIONS = [
    (["--upsample", "0"], "predict.upsample (--upsample): expected an integer >= 1, got 0"),
    (["--upsample", "two"], "predict.upsample (--upsample): expected an integer >= 1, got 'two'"),
    (["--fit-slices", "-1"], "predict.fit_slices (--fit-slices): expected an integer >= 1, got -1"),
    (
        ["--precision", "16-mixed"],
        "inference.precision (--precision): expected one of 'auto', '32-true', 'bf16-mixed', got '16-mixed'",
    ),
    (["--device", "tpu"], "predict.device (--device): expected one of 'auto', 'cpu', 'cuda', got 'tpu'"),
]


@pytest.mark.parametrize("flags, message", PREDICT_OPTIONS)
def test_cli_predict_option_out_of_range(tmp_path, capsys, flags, message):
    run = untrained_run(tmp_path / "run", Plan.synthetic([16, 16, 16]))
    assert main(["predict", str(run), str(tmp_path / "missing_input"), str(tmp_path / "out"), *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"unetzoo: error: {message}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(overlap=1.5), r"^inference.overlap \(--overlap\): expected a number >= 0 and < 1, got 1.5$"),
        (dict(upsample=0), r"^predict.upsample \(--upsample\): expected an integer >= 1, got 0$"),
        (dict(keep_largest="1", no_postprocess=True), r"^--keep-largest and --no-postprocess exclude each other$"),
    ],
)
def test_api_predict_options_are_checked_before_the_run_is_read(tmp_path, options, message):
    """``PredictConfig`` is checked first: the run folder need not even exist."""
    from unetzoo.inference import predict

    with pytest.raises(UnetzooError, match=message):
        Predictor(tmp_path / "no_run", options=PredictConfig(**options))
    with pytest.raises(UnetzooError, match=message):
        predict(tmp_path / "no_run", tmp_path / "in", tmp_path / "out", options=PredictConfig(**options))
    if "keep_largest" not in options:  # the keyword keep_largest is the rules themselves (dict or text), not a field
        with pytest.raises(UnetzooError, match=message):
            predict(tmp_path / "no_run", tmp_path / "in", tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


# (benchmark flags, the error line after "unetzoo: error: "): BenchmarkConfig's RULES, before any measurement
BENCHMARK_OPTIONS = [
    (["--threads", "0"], "benchmark.threads (--threads): expected an integer >= 1 or None, got 0"),
    (["--infer-repeats", "0"], "benchmark.infer_repeats (--infer-repeats): expected an integer >= 1, got 0"),
    (["--warmup", "-1"], "benchmark.warmup (--warmup): expected an integer >= 0, got -1"),
    (["--classes", "1"], "benchmark.classes (--classes): expected an integer >= 2, got 1"),
    (
        ["--shape", "1", "1", "1", "1", "1"],
        "benchmark.shape (--shape): expected a list of 3 or 4 integers >= 1 or None, got [1, 1, 1, 1, 1]",
    ),
    (
        ["--shape", "1", "0", "16", "16"],
        "benchmark.shape (--shape): expected a list of 3 or 4 integers >= 1 or None, got [1, 0, 16, 16]",
    ),
    (["--batch-size", "0"], "train.batch_size (--batch-size): expected an integer >= 1 or None, got 0"),
    (
        ["--precision", "fp8"],
        "train.precision (--precision): expected one of 'auto', '32-true', 'bf16-mixed', '16-mixed', got 'fp8'",
    ),
]


@pytest.mark.parametrize("flags, message", BENCHMARK_OPTIONS)
def test_cli_benchmark_option_out_of_range(tmp_path, capsys, flags, message):
    out = tmp_path / "bench"
    argv = ["benchmark", "--models", "unet", "--shape", "1", "16", "16", "16", *flags, "--out", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"unetzoo: error: {message}"]
    assert not out.exists()


@pytest.mark.slow
def test_cli_train_bad_patch_in_a_fresh_interpreter(tmp_path):
    """The same end to end: no traceback, exit status 2 (the in-process tests above check the other options)."""
    result = run_cli("train", tmp_path / "data", "--out", tmp_path / "run", "--patch", "-32", "32", "32")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("unetzoo: error: data.patch_size (--patch): expected")


@pytest.mark.parametrize(
    "assignment, field",
    [
        ("data.patch_size=[0, 0, 0]", "data.patch_size"),
        ("train.lr=-1", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.epochs=0", "train.epochs"),
        ("augment.elastic_p='abc'", "augment.elastic_p"),
        ("inference.overlap=1.5", "inference.overlap"),
    ],
)
def test_api_train_and_predict_share_the_check(tmp_path, assignment, field):
    """The Python API: ``train`` stops before its first write, a ``Predictor`` before it loads anything."""
    from unetzoo.training.run import train

    config = tiny_config()
    config.set(assignment)
    with pytest.raises(UnetzooError, match=rf"^{field}\b"):
        train(tmp_path / "data", tmp_path / "run", config)
    assert not (tmp_path / "run").exists()
    section, name = field.split(".")
    run = untrained_run(tmp_path / "predict_run", Plan.synthetic([16, 16, 16]))
    saved = json.loads((run / "config.json").read_text())
    saved[section][name] = getattr(getattr(config, section), name)
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UnetzooError, match=rf"^{run / 'config.json'}: {field}\b"):
        Predictor(run)


def test_benchmark_shares_the_check(tmp_path):
    from unetzoo.experiments.benchmark import run_benchmark

    with pytest.raises(
        UnetzooError, match=r"^train.batch_size \(--batch-size\): expected an integer >= 1 or None, got 0$"
    ):
        run_benchmark(["unet"], tmp_path / "out", shape=[1, 16, 16, 16], batch_size=0)
    assert not (tmp_path / "out").exists()


def test_valid_values_pass_and_every_rule_names_a_field():
    config = Config(fold="all")
    config.set("data.patch_size=[16, 16]")
    config.set("inference.overlap=0")
    config.set("train.lr=1")  # an integer is a valid number
    assert config.validate() is config
    fields = {name for name, _ in _flat(Config().to_dict())}
    fields |= {name for name, _ in _flat(asdict(PredictConfig()), "predict.")}
    fields |= {name for name, _ in _flat(asdict(BenchmarkConfig()), "benchmark.")}
    assert set(RULES) <= fields
    assert {rule.overrides for rule in RULES.values() if rule.overrides} <= {n for n, _ in _flat(Config().to_dict())}


def _flat(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("model_args", "method_args"):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_set_refuses_a_whole_section():
    with pytest.raises(UnetzooError, match=r"'train' is a section: set one of its fields"):
        Config().set("train=3")


# ---- 6. a corrupt config.json in a run folder ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"model": "unet", "train": {"epochs": 3', "corrupt: not a JSON config (Expecting"),
        (b"\x80\x81\x00\xff", "corrupt: not a JSON config ("),
        ("[1, 2]", "a config must be a JSON object of sections, got list"),
        ('{"train": 5}', "config section 'train' must be an object of fields, got 5"),
        ('{"train": {"epochz": 5}}', "unknown config field train.epochz"),
        ('{"train": {"lr": "fast"}}', "train.lr (--lr): expected a number > 0, got 'fast'"),
    ],
)
def test_corrupt_config_json_in_a_run_folder(tmp_path, capsys, content, problem):
    """predict and export name the file and the problem in one line, exit 2."""
    run = untrained_run(tmp_path / "run", Plan.synthetic([16, 16, 16]))
    config = run / "config.json"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in (
        ["predict", str(run), str(tmp_path / "in"), str(tmp_path / "out")],
        ["export", str(run), str(tmp_path / "export")],
    ):
        assert main(command) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"unetzoo: error: {config}: {problem}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "export").exists()


def test_unreadable_config_json(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    Config().save(path)
    real_read_text = Path.read_text

    def denied(self, *args, **kwargs):  # tests may run as root, for whom chmod 000 changes nothing
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(UnetzooError, match=rf"^{path}: cannot read the file \(Permission denied\)$"):
        Config.load(path)
