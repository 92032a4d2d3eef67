"""Log helpers shared by every module: one line per event, key=value."""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """An exception as one line (its message, else its type)."""
    return " ".join(str(exc).split()) or type(exc).__name__
