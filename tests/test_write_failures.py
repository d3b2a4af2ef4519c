"""A full disk and a failed training: one line naming the file that could not be
written, no temporary file left, nothing already written lost, history.json never ahead of the checkpoints, and no
half-made run folder for a later ``--resume`` or ``report`` to take for a run. The full disk is injected
(``OSError(ENOSPC)`` after half the bytes, as a real one fails): a small filesystem needs root to mount."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import tiny_config
from test_bad_input import untrained_run
from unetzoo.cli import main
from unetzoo.data.phantoms import write_organs_phantom
from unetzoo.data.plan import Plan
from unetzoo.errors import UnetzooError, user_error
from unetzoo.io import write_array
from unetzoo.training.run import train

DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fill_disk(monkeypatch, name: str, after: int = 0) -> None:
    """Writes of files ending in ``name`` fail with ENOSPC after ``after`` successful ones, half written (write_bytes:
    checkpoints, JSON, plots; nibabel.save: NIfTI images)."""
    calls = []
    real_write_bytes, real_save = Path.write_bytes, nib.save

    def full(path: Path) -> bool:
        calls.append(path)
        return path.name.endswith(name) and len([p for p in calls if p.name.endswith(name)]) > after

    def write_bytes(self, data):
        if full(self):
            real_write_bytes(self, bytes(memoryview(data)[: len(memoryview(data)) // 2]))
            raise DISK_FULL
        return real_write_bytes(self, data)

    def save(img, filename):
        if full(Path(filename)):
            Path(filename).write_bytes(b"\0" * 100)
            raise DISK_FULL
        return real_save(img, filename)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(nib, "save", save)


def test_disk_full_during_predict(tmp_path, monkeypatch, capsys):
    """The second case cannot be written: one line naming it, the first prediction stays, no temporary file."""
    run = untrained_run(tmp_path / "run", Plan.synthetic([16, 16, 16]))
    for case in ("a", "b"):
        write_array(np.ones((16, 16, 16), np.float32), tmp_path / "in" / f"{case}_0000.nii.gz")
    out = tmp_path / "out"
    fill_disk(monkeypatch, "b.nii.gz")
    assert main(["predict", str(run), str(tmp_path / "in"), str(out)]) == 2
    err = capsys.readouterr().err  # the progress bar, then the error
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"unetzoo: error: {out / 'b.nii.gz'}: cannot write the file: the disk is full (No space left on device): "
        "free some space, then run the command again"
    )
    assert sorted(p.name for p in out.iterdir()) == [".unetzoo-predictions.json", "a.nii.gz"]
    record = json.loads((out / ".unetzoo-predictions.json").read_text())["files"]
    assert record["a.nii.gz"] == (out / "a.nii.gz").stat().st_size and not record.get("b.nii.gz")


def test_disk_full_at_the_first_checkpoint_leaves_the_folder_as_it_was(organs, tmp_path, monkeypatch):
    """Nothing of value was made (no checkpoint): what the run wrote is removed, the user's own file stays."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    fill_disk(monkeypatch, "checkpoint_last.pt")
    with pytest.raises(UnetzooError, match=rf"^{run / 'checkpoint_last.pt'}: cannot write the file: the disk is full"):
        train(organs, run, tiny_config())
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_disk_full_in_a_later_epoch_keeps_a_consistent_resumable_run(organs, tmp_path, monkeypatch):
    """Epoch 1's checkpoint cannot be written: history.json lists epoch 0 only, as the checkpoint; no temporary file;
    the log says why it stopped, and --resume finishes the run."""
    run = tmp_path / "run"
    fill_disk(monkeypatch, "checkpoint_last.pt", after=1)
    with pytest.raises(UnetzooError, match=rf"^{run / 'checkpoint_last.pt'}: cannot write the file: the disk is full"):
        train(organs, run, tiny_config(epochs=2))
    assert not list(run.glob(".tmp_*"))
    checkpoint = torch.load(run / "checkpoint_last.pt", weights_only=False)
    assert checkpoint["epoch"] == 0 and [h["epoch"] for h in checkpoint["unetzoo"]["history"]] == [0]
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [0]
    assert "training stopped: " in max(run.glob("training_log_*.txt")).read_text()
    monkeypatch.undo()
    train(organs, run, tiny_config(epochs=2), resume=True)
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [0, 1]
    assert (run / "validation" / "summary.json").is_file()


def test_failed_training_leaves_no_half_made_run_folder(tmp_path):
    """A label with an unlisted value stops the run at planning, after splits.json and the log were written: the
    folder goes, so that the next attempt makes its own plan and splits."""
    data = write_organs_phantom(tmp_path / "data", cases=2, seed=0, shape=(16, 16, 16), n_structures=1)
    label = data / "labelsTr" / "organs_000.nii.gz"
    image = nib.load(str(label))
    write_array(np.full(image.shape, 9, np.uint8), label, image.affine)
    config = tiny_config()
    config.data.folds = 2
    with pytest.raises(UnetzooError, match=r"label values \[9\] are not listed"):
        train(data, tmp_path / "run", config)
    assert not (tmp_path / "run").exists()


def test_a_full_disk_met_by_another_writer_is_one_line():
    """A logger's write (Lightning's CSV) fails with the system's own error, wrapped or not; it names no file when
    the writer did not say which. Other system errors keep their traceback."""
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/a/logs/metrics.csv")
    wrapped = RuntimeError("in a callback")
    wrapped.__cause__ = error
    assert str(user_error(wrapped)).startswith("/runs/a/logs/metrics.csv: cannot write the file: the disk is full")
    assert str(user_error(DISK_FULL)).startswith("cannot write a file: the disk is full")
    assert user_error(OSError(errno.EIO, os.strerror(errno.EIO))) is None


@pytest.mark.parametrize(
    "error, reason",
    [
        (
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
            r"torch's file writer failed, as on a full disk: \[enforce",
        ),
        (DISK_FULL, "the disk is full"),
    ],
)
def test_disk_full_while_caching_the_preprocessed_cases(tmp_path, monkeypatch, error, reason):
    """torch.save into a full disk raises its own RuntimeError (inline_container.cc), as MONAI's cache write does."""
    from unetzoo.data.cache import plan_folder, preprocessed_cases
    from unetzoo.data.datasets import load_dataset
    from unetzoo.data.plan import make_plan

    data = write_organs_phantom(tmp_path / "data", cases=1, seed=0, shape=(16, 16, 16), n_structures=1)
    dataset = load_dataset(data)
    plan = make_plan(dataset, dataset.cases)

    def full(obj, f, *args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(
        UnetzooError,
        match=rf"^{plan_folder(plan, tmp_path / 'cache')}: cannot write the preprocessing cache \({reason}",
    ):
        preprocessed_cases([dataset.cases[0].as_dict()], plan, tmp_path / "cache")
