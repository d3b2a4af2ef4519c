"""One error type for problems the user can fix (bad files, bad options).

The command line prints such an error as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class UnetzooError(Exception):
    """A user-facing problem: the message names the file (if any) and what is wrong with it."""


def file_error(path, problem: str) -> UnetzooError:
    """Build the one-line error for a bad input file: ``<path>: <problem>``."""
    return UnetzooError(f"{path}: {problem}")
