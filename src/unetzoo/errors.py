"""One error type for problems the user can fix (bad files, bad options).

The command line prints such an error as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""

import errno
import sys


class UnetzooError(Exception):
    """A user-facing problem: the message names the file (if any) and what is wrong with it."""


def file_error(path, problem: str) -> UnetzooError:
    """Build the one-line error for a bad input file: ``<path>: <problem>``."""
    return UnetzooError(f"{path}: {problem}")


class Stopped(SystemExit):
    """The process was asked to stop (SIGTERM: ``kill``, a SLURM time limit, a container stop): not an error of the
    run, which stays resumable. A ``SystemExit`` (as Lightning's own ``SIGTERMException``), so that no ``except
    Exception`` swallows it; the command line says ``message`` in one line and exits 128 + the signal's number."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.message = message

    def __str__(self) -> str:
        return self.message


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device, disk quota exceeded


def write_error(path, exc: OSError) -> UnetzooError:
    """The one-line error for a file that could not be written: a full disk (or quota) said as such, since the
    system's own message names neither the file nor the remedy; ``path`` None when the writer did not say which."""
    if exc.errno in DISK_FULL:
        problem = f"the disk is full ({exc.strerror}): free some space, then run the command again"
    else:
        problem = exc.strerror or type(exc).__name__
    return UnetzooError(f"{path}: cannot write the file: {problem}" if path else f"cannot write a file: {problem}")


def user_error(exc: BaseException) -> UnetzooError | None:
    """The UnetzooError behind ``exc`` (MONAI and Lightning wrap exceptions raised inside transforms), or a full disk
    met by a writer that is not unetzoo's own (a logger)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UnetzooError):
            return exc
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return write_error(exc.filename, exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def exit_status(action) -> int:
    """Run ``action()``: 0, or 2 after printing a user error as one line, or 128 + the signal's number after a stop
    (:class:`Stopped`) said in one line (a bug keeps its traceback)."""
    try:
        action()
    except Stopped as stop:
        print(f"unetzoo: {stop}", file=sys.stderr)
        return stop.code
    except Exception as exc:
        error = user_error(exc)
        if error is None:
            raise
        print(f"unetzoo: error: {error}", file=sys.stderr)
        return 2
    return 0
