"""Figures as the tables print them: durations, shapes and the benchmark's counts, seconds and megabytes."""

from __future__ import annotations


def duration(seconds: float | None) -> str:
    """``H:MM:SS``, or ``n/a`` for an unknown duration."""
    if seconds is None:
        return "n/a"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def shape(value) -> str:
    """A shape as ``32x48x32`` (anything else as its text)."""
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def human(figure: str, value) -> str:
    """A benchmark figure for a table: counts (``params``, ``macs``) with k/M/G, seconds (``*_s``) with 3 decimals
    below 10, megabytes with one; ``failed`` for a missing one."""
    if value is None:
        return "failed"
    if figure in ("params", "macs"):
        for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.2f}{unit}"
        return f"{value:.0f}"
    if figure.endswith("_s"):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return f"{value:.1f}"
