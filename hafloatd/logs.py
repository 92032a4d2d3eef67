"""Log lines and one-line messages: the daemon's ``key=value`` handler and the text helpers.

``one_line`` is the one way hafloatd puts text it does not control (an exception, a server's
answer, a child's stderr) into a log line, a reply or a status: runs of whitespace, line
breaks included, become one space, and ``limit`` cuts it with ``...``. ``describe`` names an
exception with its type, ``kv`` quotes a logfmt value. ``setup_logging`` installs the
handler (journald adds the time), ``redact_secret`` the filter that keeps the token out of
every line. Standard library only: any module may import this one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable

__all__ = [
    "KeyValueFormatter",
    "RedactFilter",
    "describe",
    "kv",
    "one_line",
    "redact_secret",
    "setup_logging",
]

ROOT_LOGGER = "hafloatd"


def one_line(value: object, *, limit: int | None = None) -> str:
    """``value`` as one line: whitespace runs folded to one space, cut to ``limit`` chars.

    Bytes are decoded as UTF-8 (undecodable bytes replaced); an exception without a message
    gives its type name, so a reason is never empty. A cut line ends in ``...`` and is
    exactly ``limit`` characters long.
    """
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", errors="replace")
    else:
        text = str(value)
    flat = " ".join(text.split())
    if not flat and isinstance(value, BaseException):
        flat = type(value).__name__
    if limit is not None and len(flat) > limit:
        flat = flat[: max(0, limit - 3)] + "..."
    return flat


def describe(exc: BaseException, *, where: bool = False) -> str:
    """``TypeName: message`` on one line; with ``where``, `` at file.py:123`` (innermost frame).

    The type says as much as the text (``ConnectionResetError: ...``); the frame is for bugs.
    """
    text = f"{type(exc).__name__}: {one_line(exc)}"
    frames = traceback.extract_tb(exc.__traceback__) if where else []
    if frames:
        text += f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
    return text


def kv(value: object) -> str:
    """A logfmt value: bare when it is one word, else double-quoted."""
    flat = one_line(value)
    if flat and not any(ch in flat for ch in ' "='):
        return flat
    return json.dumps(flat, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """``level=info logger=hafloatd.x event=...``: journald adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"level={record.levelname.lower()} logger={record.name} "
        line += one_line(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            line += f" exc={kv(describe(record.exc_info[1], where=True))}"
        return line


class RedactFilter(logging.Filter):
    """Last line of defence: no log line ever carries the token, whatever formatted it."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret and self.secret in record.getMessage():
            record.msg = record.getMessage().replace(self.secret, "***")
            record.args = ()
        return True


def setup_logging(level: str) -> None:
    """One ``key=value`` handler on stderr for the ``hafloatd`` loggers (idempotent)."""
    root = logging.getLogger(ROOT_LOGGER)
    if not any(getattr(h, "_hafloatd", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(KeyValueFormatter())
        handler._hafloatd = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())


def redact_secret(secret: str) -> Callable[[], None]:
    """Mask ``secret`` in every line of the ``hafloatd`` handlers; returns the undo."""
    redact = RedactFilter(secret)
    handlers = list(logging.getLogger(ROOT_LOGGER).handlers)
    for handler in handlers:
        handler.addFilter(redact)

    def undo() -> None:
        for handler in handlers:
            handler.removeFilter(redact)

    return undo
