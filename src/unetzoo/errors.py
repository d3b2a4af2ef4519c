"""One error type for problems the user can fix (bad files, bad options).

The command line prints such an error as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""

import errno


class UnetzooError(Exception):
    """A user-facing problem: the message names the file (if any) and what is wrong with it."""


def file_error(path, problem: str) -> UnetzooError:
    """Build the one-line error for a bad input file: ``<path>: <problem>``."""
    return UnetzooError(f"{path}: {problem}")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device, disk quota exceeded


def write_error(path, exc: OSError) -> UnetzooError:
    """The one-line error for a file that could not be written: a full disk (or quota) said as such, since the
    system's own message names neither the file nor the remedy; ``path`` None when the writer did not say which."""
    if exc.errno in DISK_FULL:
        problem = f"the disk is full ({exc.strerror}): free some space, then run the command again"
    else:
        problem = exc.strerror or type(exc).__name__
    return UnetzooError(f"{path}: cannot write the file: {problem}" if path else f"cannot write a file: {problem}")
