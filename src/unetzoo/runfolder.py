"""The run folder: the one owner of the files a run writes, of the choice of checkpoint, and of the answers to "is
this a run?" and "is it finished?".

A run folder (nnU-Net's outputs, so its users find their way) holds ``config.json`` (the resolved config: what
ran), ``plan.json``, ``splits.json``, ``inner_split.json`` (which of the fold's training cases trained, validated per
epoch, calibrated), ``budget_width.json`` (under ``--max-minutes``: the width the budget affords),
``checkpoint_last.pt``, ``checkpoint_best.pt`` (where a per-epoch validation ran) and ``checkpoint_at_N.pt`` (the
weights at N % of the budget, ``train.snapshots``), all written to a temporary name and renamed,
``training_log_<timestamp>.txt``, ``progress.png``, ``history.json``, Lightning's ``logs/`` and, after training,
``validation/`` (the held-out fold predicted by the full inference procedure with the reported weights,
``summary.json``, ``cases.json``, the references linked under ``labels/``; with ``train.keep_probabilities`` each
case's ``CASE.npz``; each snapshot's predictions and ``summary.json`` under ``at_N/``), ``snapshots.json`` (each
snapshot's steps, seconds and summary), ``postprocessing.json`` (the keep-largest-component choice on that fold),
``validation/postprocessed/`` (the fold with it applied, and its ``summary.json``: the run's last file),
``inference_precision.json`` (the bf16 check) and, once benchmarked, ``benchmark.json``. While a process trains into
it, ``.lock`` holds that process's pid and host (:meth:`RunFolder.locked`).

The run's reported weights are those its ``train.select`` names (``last`` unless the run chose ``best``): what
``validation/`` evaluates and what ``predict`` uses unless told otherwise (:meth:`RunFolder.checkpoint`).
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from unetzoo.errors import UnetzooError, file_error, write_error
from unetzoo.io import SUPPORTED_ENDINGS, output_folder, process_running, read_json, strip_ending

log = logging.getLogger(__name__)

BEST, LAST = "checkpoint_best", "checkpoint_last"  # Lightning's checkpoint file names, without the extension
CHECKPOINT_EXT = ".pt"
CHECKPOINTS = ("best", "last")
SNAPSHOT = re.compile(r"at_[0-9.e+-]+")  # a snapshot's name (snapshot_name): at_25, the weights at 25 % of the budget
INFERENCE_PRECISION = "inference_precision.json"
NOT_A_RUN = "missing: not a unetzoo run folder (train one with `unetzoo train`)"
NNUNET_FOLDER = "nnunet"  # nnU-Net's raw, preprocessed and results folders of a compare run of nnU-Net itself


def snapshot_name(fraction: float) -> str:
    """The name of the snapshot at ``fraction`` of the budget: ``at_25`` for 0.25 (``checkpoint_at_25.pt``,
    ``validation/at_25/``)."""
    return f"at_{fraction * 100:g}"


@dataclass(frozen=True)
class RunFolder:
    """The files of the run in ``path``; nothing is read or written until asked."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:  # a RunFolder goes wherever a path to the run does
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    # ---- file names ---------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    @property
    def splits(self) -> Path:
        return self.path / "splits.json"

    @property
    def inner_split(self) -> Path:
        """The fold's training cases as the run used them: trained on, validated on per epoch, calibrated on."""
        return self.path / "inner_split.json"

    @property
    def snapshots(self) -> Path:
        """Each snapshot's steps, training seconds and held-out summary, and the reported weights' (fraction 1)."""
        return self.path / "snapshots.json"

    @property
    def budget_width(self) -> Path:
        return self.path / "budget_width.json"

    @property
    def history(self) -> Path:
        return self.path / "history.json"

    @property
    def progress_plot(self) -> Path:
        return self.path / "progress.png"

    @property
    def postprocessing(self) -> Path:
        return self.path / "postprocessing.json"

    @property
    def inference_precision(self) -> Path:
        return self.path / INFERENCE_PRECISION

    @property
    def logs(self) -> Path:
        """Lightning's loggers' folder (CSV, TensorBoard)."""
        return self.path / "logs"

    def training_log(self, stamp: str) -> Path:
        """The timestamped log of one invocation of training (a resumed run adds one)."""
        return self.path / f"training_log_{stamp}.txt"

    @property
    def benchmark(self) -> Path:
        return self.path / "benchmark.json"

    @property
    def lock_file(self) -> Path:
        """Present while a process trains into the folder: that process's pid and host (:meth:`locked`)."""
        return self.path / ".lock"

    @property
    def validation(self) -> Path:
        """The held-out fold's predictions and their ``summary.json``."""
        return self.path / "validation"

    @property
    def validation_labels(self) -> Path:
        """The held-out references, linked under the case names (evaluation pairs files by name)."""
        return self.validation / "labels"

    @property
    def validation_cases(self) -> Path:
        """The source files of every validation case, for the report's overlays."""
        return self.validation / "cases.json"

    @property
    def summary(self) -> Path:
        """The held-out fold's metrics."""
        return self.validation / "summary.json"

    def snapshot_validation(self, fraction: float) -> Path:
        """The held-out fold predicted with the snapshot at ``fraction`` of the budget, and its ``summary.json``."""
        return self.validation / snapshot_name(fraction)

    @property
    def postprocessed(self) -> Path:
        """The held-out fold with the chosen post-processing applied, and its ``summary.json``."""
        return self.validation / "postprocessed"

    @property
    def postprocessed_summary(self) -> Path:
        """The held-out fold's metrics with the post-processing: the run's last file."""
        return self.postprocessed / "summary.json"

    def checkpoint_file(self, which: str) -> Path:
        """``checkpoint_best.pt``, ``checkpoint_last.pt`` or a snapshot's ``checkpoint_at_N.pt`` (``which`` "at_N")."""
        if which in CHECKPOINTS:
            return self.path / f"{BEST if which == 'best' else LAST}{CHECKPOINT_EXT}"
        if isinstance(which, str) and SNAPSHOT.fullmatch(which):
            return self.path / f"checkpoint_{which}{CHECKPOINT_EXT}"
        raise UnetzooError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)} or a snapshot at_N, got {which!r}")

    def selected(self) -> str:
        """The checkpoint the run reports, its ``train.select``: "last" or "best" (a run from before the option
        reported its best one)."""
        return (read_json(self.config, {}).get("train") or {}).get("select", "best")

    # ---- state --------------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[RunFolder]:
        """Hold the folder (made if needed) for this process while the body runs, so that two trainings never write
        into one folder: :attr:`lock_file` is created atomically and removed on exit. A folder another running process
        holds is one line naming that process; a lock left by a process of this machine that no longer runs (killed)
        is taken over with a warning."""
        output_folder(self.path)
        mine = f"{os.getpid()} {socket.gethostname()}"
        while True:
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._remove_stale_lock()
                continue
            except OSError as exc:
                raise write_error(self.lock_file, exc) from None
            with os.fdopen(fd, "w") as stream:
                stream.write(mine)
            break
        try:
            yield self
        finally:
            try:
                if self.lock_file.read_text() == mine:
                    self.lock_file.unlink()
            except FileNotFoundError:  # the folder of a run that failed before its first checkpoint is removed
                pass

    def _remove_stale_lock(self) -> None:
        """Remove the lock of a process of this machine that no longer runs; one line naming the holder otherwise."""
        try:
            holder = self.lock_file.read_text()
        except FileNotFoundError:  # released meanwhile
            return
        pid, _, host = holder.partition(" ")
        if host == socket.gethostname() and not process_running(pid):
            log.warning(f"{self.lock_file}: left by process {pid}, which no longer runs: taken over")
            self.lock_file.unlink(missing_ok=True)
            return
        if not host:  # the holder is between creating the file and writing into it
            raise file_error(self.path, "in use: another process is starting to train into it; choose another --out")
        elsewhere = "" if host == socket.gethostname() else f" (if it no longer runs, delete {self.lock_file})"
        raise file_error(
            self.path,
            f"in use: process {pid} on {host} is training into it{elsewhere}; wait for it to end or choose another --out",
        )

    def require(self) -> RunFolder:
        """This folder if it is a run (training wrote the config and the data plan, what prediction needs), or one
        line naming the file that makes it none (or that the run is nnU-Net's own, which unetzoo cannot predict with)."""
        if (self.path / NNUNET_FOLDER).is_dir():
            raise file_error(
                self.path,
                f"a run of nnU-Net itself (compare's nnunet peer): predict with nnU-Net, "
                f"nnUNet_results={self.path / NNUNET_FOLDER / 'results'} nnUNetv2_predict -d 999 -c CONF -f all",
            )
        for path in (self.config, self.plan):
            if not path.is_file():
                raise file_error(path, NOT_A_RUN)
        return self

    def has_checkpoint(self) -> bool:
        """Whether an epoch has finished (a resumable run); a snapshot taken within the first epoch is not one."""
        return any(self.checkpoint_file(which).is_file() for which in CHECKPOINTS)

    def is_finished(self) -> bool:
        """Training wrote its last file: the post-processed held-out fold's summary."""
        return self.postprocessed_summary.is_file()

    def checkpoint(self, which: str | None = None) -> Path:
        """The weights to predict with: ``which`` None the run's reported ones (:meth:`selected`); ``best`` falls
        back to ``last`` with a warning where the run never validated; ``last`` and a snapshot must exist."""
        which = self.selected() if which is None else which
        path = self.checkpoint_file(which)
        if path.is_file():
            return path
        if which == "last":
            raise file_error(path, "missing: the run has not finished an epoch")
        if which != "best":
            raise file_error(path, f"missing: the run saved no snapshot {which} (train.snapshots)")
        last = self.checkpoint_file("last")
        if not last.is_file():
            raise file_error(
                self.path, "no checkpoint_best.pt or checkpoint_last.pt: the run has not finished an epoch"
            )
        log.warning(f"{path}: missing (the run never validated?): using {last.name} instead")
        return last

    # ---- reading ------------------------------------------------------------------------------------
    def load(self) -> dict:
        """What a report needs from the run: config, plan, history, validation summaries and files (JSON as read;
        a file the run has not written yet is None, or empty)."""
        if not self.config.is_file():
            raise file_error(self.config, "missing: not a unetzoo run folder")
        return {
            "dir": self.path,
            "config": read_json(self.config),
            "plan": read_json(self.plan, {}),
            "history": read_json(self.history, []),
            "summary": read_json(self.summary),
            "postprocessed": read_json(self.postprocessed_summary),
            "postprocessing": read_json(self.postprocessing),
            "benchmark": read_json(self.benchmark),
            "cases": read_json(self.validation_cases, {}),
            "predictions": _case_files(self.validation),
            "references": _case_files(self.validation_labels),
        }


def _case_files(folder: Path) -> dict[str, Path]:
    """The label files of a folder by case name."""
    if not folder.is_dir():
        return {}
    return {
        strip_ending(p): p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.lower().endswith(SUPPORTED_ENDINGS)
    }
