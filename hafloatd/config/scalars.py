"""YAML scalars into the Python values the dataclasses hold: integers, booleans, strings,
durations (seconds), file modes, user/group names or ids.

Each converter takes what ``yaml`` produced and returns the value, or raises
``InvalidValue`` whose message completes ``<key path>: ``. ``YamlInt`` and ``YamlFloat``
remember how they were written (the YAML reader makes them): a mode written ``660`` is
read as the octal digits the user meant, and YAML 1.1's base-60 numbers (``1:30`` is 90,
``190:20:30`` is 685230) are refused wherever a number is expected, not taken as written.
"""

from __future__ import annotations

import math
import re
import typing
from typing import Any

from hafloatd.config.values import InvalidValue, clip, format_duration, show
from hafloatd.errors import ConfigError

Converter = typing.Callable[[object], Any]

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)")
_DURATION_TEXT = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|s|m|h)\s*)+")
_BARE_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


class YamlInt(int):
    """An int that remembers how it was written: ``control.mode: 660`` means octal 0660."""

    text: str

    def __new__(cls, value: int, text: str) -> YamlInt:
        self = super().__new__(cls, value)
        self.text = text
        return self


class YamlFloat(float):
    """A float that remembers how it was written (``1:30.5`` is a YAML 1.1 base-60 float)."""

    text: str

    def __new__(cls, value: float, text: str) -> YamlFloat:
        self = super().__new__(cls, value)
        self.text = text
        return self


def parse_duration(value: object, key: str, at_most: float = math.inf) -> float:
    """Seconds from ``500ms``, ``2s``, ``1.5m``, ``1h``, ``1m30s`` or a bare number of seconds.

    Raises ``ConfigError("<key>: ...")`` for anything else, negatives, NaN, infinity, YAML's
    base-60 numbers and values over ``at_most`` seconds.
    """
    try:
        return to_duration(value, at_most)
    except InvalidValue as exc:
        raise ConfigError(f"{key}: {exc}") from None


def to_int(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidValue(f"must be an integer, got {show(raw)}")
    _refuse_base60(raw, "must be an integer", "write the number itself")
    return int(raw)


def to_bool(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise InvalidValue(f"must be true or false, got {show(raw)}")
    return raw


def to_str(raw: object) -> str:
    if not isinstance(raw, str):
        raise InvalidValue(f"must be a string, got {show(raw)} (quote it)")
    if not raw.strip():
        raise InvalidValue("must not be empty")
    return raw


def to_duration(raw: object, at_most: float = math.inf) -> float:
    """Seconds, from 0 to ``at_most``; the key's bound (``MAX_SECONDS``) comes from the loader."""
    wrong = f"must be a duration like 500ms, 2s or 1m (a bare number is seconds), got {show(raw)}"
    seconds: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        _refuse_base60(raw, "must be a duration", "write it with units, like 1m30s")
        try:
            seconds = float(raw)
        except OverflowError:  # an int too large for a float
            seconds = math.inf if raw > 0 else -math.inf
    elif isinstance(raw, str):
        text = raw.strip()
        if _BARE_NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION_TEXT.fullmatch(text):
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(text)
            )
    if seconds is None or math.isnan(seconds):
        raise InvalidValue(wrong)
    if seconds < 0:
        raise InvalidValue(f"must be a duration >= 0, got {show(raw)}")
    if seconds > at_most:
        raise InvalidValue(f"must be at most {format_duration(at_most)}, got {show(raw)}")
    if math.isinf(seconds):  # no bound given (parse_duration): still never infinite
        raise InvalidValue(wrong)
    return seconds


def to_mode(raw: object) -> int:
    """Octal like chmod: ``0660``, ``660``, ``"0660"`` and ``"0o660"`` all mean rw-rw----.

    YAML 1.1 reads ``0660`` as the int 432 and ``660`` as 660; the digits as written are
    what the user meant, so they are read as octal. A plain int from Python is a mode value.
    """
    wrong = f"must be an octal file mode like 0660, got {show(raw)}"
    _refuse_base60(raw, "must be an octal file mode", "write it like 0660")
    if isinstance(raw, YamlInt):
        digits = raw.text.replace("_", "").lstrip("+")
        if re.fullmatch(r"\d+", digits):
            if not re.fullmatch(r"[0-7]+", digits):
                raise InvalidValue(f"must be an octal file mode like 0660, got {clip(raw.text)}")
            return int(digits, 8)
        return int(raw)  # 0x1b0, 0b110110000: the value as written
    if isinstance(raw, bool):
        raise InvalidValue(wrong)
    if isinstance(raw, int):
        if raw > 0o777 and re.fullmatch(r"[0-7]{3,4}", str(raw)):
            raise InvalidValue(
                f"{wrong} (an int here is the numeric mode: write 0o{raw} or '0{raw}')"
            )
        return raw
    if isinstance(raw, str):
        match = re.fullmatch(r"(?:0o)?([0-7]{1,4})", raw.strip().lower())
        if match:
            return int(match.group(1), 8)
    raise InvalidValue(wrong)


def name_or_id(raw: object) -> str | int:
    if isinstance(raw, str) and raw.strip():
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        _refuse_base60(raw, "must be a name or a numeric id", "quote it if it is a name")
        return int(raw)
    raise InvalidValue(f"must be a name or a numeric id, got {show(raw)}")


def _refuse_base60(raw: object, must: str, hint: str) -> None:
    """YAML 1.1 reads ``1:30`` as 90 and ``190:20:30`` as 685230: never what was meant."""
    text = getattr(raw, "text", "")
    if isinstance(raw, YamlInt | YamlFloat) and ":" in text:
        raise InvalidValue(
            f"{must}, got {clip(text)}, which YAML 1.1 reads as the base-60 number "
            f"{show(raw)}; {hint}"
        )


# Annotation -> converter; a float field is always a duration.
BY_TYPE: dict[Any, Converter] = {int: to_int, bool: to_bool, str: to_str, float: to_duration}
