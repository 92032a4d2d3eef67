"""Value checks shared by both layers of the configuration: the dataclasses' own checks
(``schema``) and the YAML loader (``loader``).

Each check yields ``(field, message)`` problems (``Problems``) instead of raising, so a
dataclass can report every bad key at once; ``raise_if_invalid`` turns them into one
``ConfigError``. ``show`` renders a value the way a user wrote it, for messages.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import typing
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from hafloatd.errors import ConfigError

# (field, message) pairs a dataclass reports about its own values.
Problems = Iterator[tuple[str, str]]

_ACCOUNT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_TOKEN_LIKE = re.compile(r"do[opr]_v1_[0-9a-f]{16,}|\b[0-9a-f]{64}\b")
# A value or key longer than this is cut in messages: a message stays one readable line.
SHOWN_CHARS = 40
PATH_MAX = 4096  # Linux: bytes of a path, including the terminating NUL


class InvalidValue(Exception):
    """A value did not convert or check; the message completes ``<key path>: ``."""


def format_duration(seconds: float) -> str:
    """The YAML spelling of a duration: ``500ms``, ``2s``, ``1.5s``, ``5m``, ``1h``."""
    if not math.isfinite(seconds):
        return repr(seconds)
    if 0 < abs(seconds) < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def split_host_port(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9310"`` → ``("127.0.0.1", 9310)``; ``"[::1]:9310"`` → ``("::1", 9310)``.

    Port 0 (an ephemeral port) is accepted for tests. Raises ValueError with a message fit
    for ``metrics.listen: <message>``.
    """
    wrong = f"must be host:port like 127.0.0.1:9310 or [::1]:9310, got {show(listen)}"
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(wrong)
    if len(port_text) > 5 or int(port_text) > 65535:
        raise ValueError(f"port must be from 0 to 65535, got {clip(port_text)}")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(wrong) from None
        return host[1:-1], port
    if not is_host(host):
        raise ValueError(wrong + (" (put IPv6 addresses in brackets)" if ":" in host else ""))
    return host, port


def is_host(host: str) -> bool:
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):  # looks numeric: must be a real IPv4
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


# --- messages -----------------------------------------------------------------------------


def show(value: object) -> str:
    """A value as the user wrote it, for messages: at most ``SHOWN_CHARS`` characters and
    one line; anything token-like is redacted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        if _TOKEN_LIKE.search(value):
            return "<redacted: looks like an API token>"
        return clip(repr(value))
    if isinstance(value, int):
        return _show_int(int(value))
    if isinstance(value, float):
        return clip(repr(value))
    return f"a {type(value).__name__}"


def show_key(key: str) -> str:
    """A mapping key for a key path: as written if short and printable, else quoted, clipped."""
    if _TOKEN_LIKE.search(key):
        return "<redacted: looks like an API token>"
    if len(key) <= SHOWN_CHARS and key.isprintable():
        return key
    return clip(repr(key))


def show_mode(mode: int) -> str:
    return clip(f"{mode:04o}" if mode >= 0 else _show_int(mode))


def clip(text: str) -> str:
    """``text`` cut to ``SHOWN_CHARS`` characters, with an ellipsis when cut."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _show_int(value: int) -> str:
    try:
        return clip(str(value))
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return f"a number of about {value.bit_length() * 0.30103:.0f} digits"


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The choice ``word`` was probably meant to be, if one is close enough."""
    lowered = {choice.lower(): choice for choice in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    import difflib  # noqa: PLC0415 - only a bad key pays for it (~0.2 MB resident)

    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def choice(raw: object, choices: tuple[Any, ...]) -> Any:
    """``raw`` if it is one of the string ``choices``; else ``InvalidValue`` with a hint."""
    if raw in choices and isinstance(raw, str):
        return raw
    message = f"must be one of {', '.join(choices)}, got {show(raw)}"
    if isinstance(raw, str) and (suggestion := suggest(raw, [str(c) for c in choices])):
        message += f" (did you mean '{suggestion}'?)"
    raise InvalidValue(message)


# --- checks: each yields (field, message) ---------------------------------------------------


def raise_if_invalid(prefix: str, problems: Iterable[tuple[str, str]]) -> None:
    found = [f"{join_key(prefix, name)}: {message}" for name, message in problems]
    if found:
        raise ConfigError(found)


def freeze_lists(instance: object, *names: str) -> None:
    """Lists passed to a frozen dataclass become tuples, so it stays hashable and immutable."""
    for name in names:
        value = getattr(instance, name)
        if isinstance(value, list):
            object.__setattr__(instance, name, tuple(value))


def duration(name: str, seconds: float, at_most: float) -> Problems:
    """A duration > 0 and at most ``at_most`` seconds (each key's bound is in ``schema``)."""
    if not (math.isfinite(seconds) and seconds > 0):
        yield name, f"must be a duration > 0, got {format_duration(seconds)}"
    elif seconds > at_most:
        yield name, f"must be at most {format_duration(at_most)}, got {format_duration(seconds)}"


def int_between(name: str, value: int, low: int, high: int | None) -> Problems:
    if high is None and value < low:
        yield name, f"must be an integer >= {low}, got {show(value)}"
    elif high is not None and not low <= value <= high:
        yield name, f"must be an integer from {low} to {high}, got {show(value)}"


def absolute_path(name: str, path: str) -> Problems:
    if not os.path.isabs(path):
        yield name, f"must be an absolute path, got {show(path)}"
        return
    try:
        size = len(os.fsencode(path))
    except UnicodeError:
        yield name, f"must be a path of valid characters, got {show(path)}"
        return
    if "\0" in path:
        yield name, f"must not contain a NUL character, got {show(path)}"
    elif size >= PATH_MAX:
        yield name, f"must be shorter than {PATH_MAX} bytes, got {size} bytes"


def one_of(name: str, value: object, literal: Any) -> Problems:
    try:
        choice(value, typing.get_args(literal))
    except InvalidValue as exc:
        yield name, str(exc)


def url_problems(name: str, url: str) -> Problems:
    wrong = f"must be an http:// or https:// URL, got {show(url)}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        yield name, wrong
        return
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not url.isprintable()
        or any(c.isspace() for c in url)
    ):
        yield name, wrong
    elif parts.username is not None or parts.password is not None:
        yield name, "must not embed credentials (user:password@)"


def url_path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return ""


def account(name: str, entry: str | int) -> Problems:
    """A user or group given by name or numeric id."""
    if isinstance(entry, int):
        if not 0 <= entry < 2**32 - 1:
            yield name, f"must be a numeric id from 0 to {2**32 - 2}, got {show(entry)}"
    else:
        yield from account_name(name, entry)


def account_name(name: str, value: str) -> Problems:
    if not _ACCOUNT_NAME.fullmatch(value):
        yield name, f"must be a user or group name like hacluster, got {show(value)}"
