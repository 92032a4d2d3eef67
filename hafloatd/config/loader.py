"""The loader: a YAML file (``load_config``) or parsed data (``parse_config``) into a
``Config``.

It checks the data's shape and types against the dataclasses' annotations, rejects unknown
and duplicate keys, collects every problem of the file into one ``ConfigError`` with line
numbers, and adds the production guard rail on the DigitalOcean request budget. The
dataclasses' own value checks run when they are built; their problems are re-keyed to the
path where the file writes them (``ips[2].address``).

``load_config`` reads a file synchronously: the daemon calls it before the loop starts or
through ``asyncio.to_thread`` on reload.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from hafloatd.config.document import clip_problem, read_yaml
from hafloatd.config.scalars import BY_TYPE, Converter, name_or_id, to_duration, to_mode
from hafloatd.config.schema import CREDENTIAL_NAME, ApiConfig, Config, IpConfig, top_level_problems
from hafloatd.config.values import (
    InvalidValue,
    Problems,
    choice,
    format_duration,
    join_key,
    show,
    show_key,
    suggest,
)
from hafloatd.errors import ConfigError

MAX_FILE_BYTES = 1024 * 1024
# A file with more problems than this gets the first ones (in file order) and a count.
MAX_PROBLEMS = 20
_MAX_PROBLEM_CHARS = 300
# DigitalOcean's rate limit: requests per hour per token (the whole account's, all droplets).
TOKEN_LIMIT_PER_HOUR = 5000
# Steady-state requests per hour one daemon may spend against api.digitalocean.com at most
# (an error above it): a pair usually shares one token, failovers need headroom.
# ``api.hourly_budget`` is the (much lower) target; above it check-config only warns.
REQUEST_BUDGET_PER_HOUR = 1000
MIN_ACTION_POLL_INTERVAL = 0.1  # faster polling burns DigitalOcean's 250/minute burst limit

_TOKEN_KEYS = frozenset({"token", "api_token", "do_token", "access_token", "bearer"})
_NOT_YAML_KEYS = frozenset({("Config", "source")})
# (dataclass name, field) -> converter, where the annotation alone does not say enough.
_SPECIAL: dict[tuple[str, str], Converter] = {("ControlConfig", "mode"): to_mode}


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the YAML file at ``path``; ``ConfigError`` lists every problem."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConfigError(f"cannot read the configuration file: {reason}", source=source) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"file is larger than {MAX_FILE_BYTES} bytes", source=source)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"line {line}: not valid UTF-8 (byte offset {exc.start})", source=source
        ) from None
    document = read_yaml(text, source)
    return _parse(document.data, source, document.lines, document.problems)


def parse_config(data: object, source: str | None = None) -> Config:
    """Validate already-parsed YAML (``yaml.safe_load`` output) into a ``Config``."""
    return _parse(data, source, {}, [])


def _parse(
    data: object,
    source: str | None,
    lines: Mapping[str, int],
    problems: list[tuple[int | None, str]],
) -> Config:
    reader = _Reader(lines, problems)
    if data is None:
        reader.report("", "the file is empty: it needs at least an 'ips:' list")
        raise reader.error(source)
    fields = reader.fields(data, Config, "")
    if fields is None:
        raise reader.error(source)
    kwargs, complete = fields
    # The whole-file rules run on the raw ips, so a bad entry does not hide a duplicate.
    raw_ips = typing.cast(dict[str, Any], data).get("ips")
    addresses = _raw_addresses(raw_ips) if isinstance(raw_ips, list) else None
    state_dir = kwargs.get("state_dir", Config.state_dir)
    reader.extend(top_level_problems(addresses, state_dir), "")
    if isinstance(kwargs.get("api"), ApiConfig):
        reader.extend(_policy_problems(kwargs["api"], len(addresses or ())), "api")
    if reader.problems or not complete:
        raise reader.error(source)
    config: Config | None = reader.build(Config, {**kwargs, "source": source}, "")
    if config is None:
        raise reader.error(source)
    return config


class _Reader:
    """Walks parsed YAML along the dataclasses' annotations, collecting every problem."""

    def __init__(self, lines: Mapping[str, int], problems: list[tuple[int | None, str]]) -> None:
        self.lines = lines
        self.problems = list(problems)

    def report(self, path: str, message: str) -> None:
        self.problems.append((self.line_of(path), f"{path or 'top level'}: {message}"))

    def line_of(self, path: str) -> int | None:
        """Where ``path`` is written, else where its nearest written ancestor is."""
        while path:
            if path in self.lines:
                return self.lines[path]
            parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)
            path = "" if parent == path else parent
        return None

    def extend(self, problems: Iterable[tuple[str, str]], prefix: str) -> None:
        for name, message in problems:
            self.report(join_key(prefix, name), message)

    def error(self, source: str | None) -> ConfigError:
        ordered = sorted(self.problems, key=lambda p: math.inf if p[0] is None else p[0])
        shown = [
            clip_problem(text, _MAX_PROBLEM_CHARS) + ("" if line is None else f" (line {line})")
            for line, text in ordered[:MAX_PROBLEMS]
        ]
        if len(ordered) > MAX_PROBLEMS:
            shown.append(f"... and {len(ordered) - MAX_PROBLEMS} more problems")
        return ConfigError(shown, source=source)

    def fields(self, raw: object, cls: type[Any], path: str) -> tuple[dict[str, Any], bool] | None:
        """A mapping's keys converted to ``cls``'s field types, and whether every required
        field converted; None if ``raw`` is not a mapping."""
        if raw is None and path:
            raw = {}  # "api:" with every key commented out: the defaults
        if not isinstance(raw, dict):
            what = "an IPv4 address or a mapping with 'address'" if cls is IpConfig else "a mapping"
            self.report(path, f"must be {what}, got {show(raw)}")
            return None
        known = {
            spec.name: spec
            for spec in dataclasses.fields(cls)
            if (cls.__name__, spec.name) not in _NOT_YAML_KEYS
        }
        hints = _type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                self.report(path, f"keys must be strings, got {show(key)}")
                continue
            key_path = join_key(path, show_key(key))
            if key not in known:
                self.report(key_path, _unknown_key(key, known, top_level=not path))
                continue
            converted = self.value(value, hints[key], key_path, _converter(cls, key))
            if converted is _INVALID or (
                isinstance(converted, _PartialList) and not converted.items
            ):
                continue  # reported; the field keeps its default
            kwargs[key] = converted
        complete = True
        for name, spec in known.items():
            if spec.default is not dataclasses.MISSING:
                continue
            if spec.default_factory is not dataclasses.MISSING:
                continue
            if name not in raw:
                self.report(join_key(path, name), "missing required key")
            complete = complete and name in kwargs
        return kwargs, complete

    def build(self, cls: type[Any], kwargs: dict[str, Any], path: str) -> Any:
        """``cls(**kwargs)``; its own checks' problems are re-keyed under ``path``.

        A ``_PartialList`` (some items already reported) is checked with its good items,
        which the dataclass numbers from 0: the problems are renumbered as written.
        """
        renumber = {
            join_key(path, key): value.indices
            for key, value in kwargs.items()
            if isinstance(value, _PartialList)
        }
        values = {
            key: value.items if isinstance(value, _PartialList) else value
            for key, value in kwargs.items()
        }
        try:
            return cls(**values)
        except ConfigError as exc:
            prefix: str = cls._KEY
            for problem in exc.problems:
                name, _, message = problem.partition(": ")
                if prefix and name.startswith(prefix):
                    name = path + name[len(prefix) :]
                for list_path, indices in renumber.items():
                    match = re.match(re.escape(list_path) + r"\[(\d+)\]", name)
                    if match:
                        original = indices[int(match.group(1))]
                        name = f"{list_path}[{original}]{name[match.end() :]}"
                self.report(name, message)
            return None

    def value(self, raw: object, hint: Any, path: str, special: Converter | None = None) -> Any:
        """``raw`` converted to ``hint``, or ``_INVALID`` once the problem is reported."""
        try:
            if special is not None:
                return special(raw)
            origin = typing.get_origin(hint)
            if origin in (types.UnionType, typing.Union):
                return self._union(raw, typing.get_args(hint), path)
            if origin is Literal:
                return choice(raw, typing.get_args(hint))
            if origin is tuple:
                return self._list(raw, typing.get_args(hint)[0], path)
            if dataclasses.is_dataclass(hint):
                return self._section(raw, typing.cast(type[Any], hint), path)
            return BY_TYPE[hint](raw)
        except InvalidValue as exc:
            self.report(path, str(exc))
        return _INVALID

    def _union(self, raw: object, options: tuple[Any, ...], path: str) -> Any:
        if raw is None and type(None) in options:
            return None
        concrete = [option for option in options if option is not type(None)]
        if len(concrete) == 1:
            return self.value(raw, concrete[0], path)
        if set(concrete) == {str, int}:
            return name_or_id(raw)
        raise TypeError(f"unsupported annotation for {path}: {options}")  # a bug, not user error

    def _list(self, raw: object, item_hint: Any, path: str) -> Any:
        if not isinstance(raw, list):
            raise InvalidValue(f"must be a list, got {show(raw)}")
        items = [self.value(item, item_hint, f"{path}[{i}]") for i, item in enumerate(raw)]
        if all(item is not _INVALID for item in items):
            return tuple(items)
        good = [(index, item) for index, item in enumerate(items) if item is not _INVALID]
        return _PartialList(tuple(item for _, item in good), tuple(index for index, _ in good))

    def _section(self, raw: object, cls: type[Any], path: str) -> Any:
        if cls is IpConfig and isinstance(raw, str):
            raw = {"address": raw}  # shorthand: "- 203.0.113.10"
        fields = self.fields(raw, cls, path)
        if fields is None or not fields[1]:
            return _INVALID
        built = self.build(cls, fields[0], path)
        return _INVALID if built is None else built


def _converter(cls: type[Any], key: str) -> Converter | None:
    """The converter for ``cls.key`` when its annotation alone does not say enough."""
    if key in getattr(cls, "MAX_SECONDS", {}):
        return functools.partial(to_duration, at_most=cls.MAX_SECONDS[key])
    return _SPECIAL.get((cls.__name__, key))


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    # Cached: a list of 100,000 bad entries would evaluate IpConfig's annotations 100,000 times.
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _unknown_key(key: str, known: Mapping[str, object], *, top_level: bool) -> str:
    if key.lower() in _TOKEN_KEYS:
        return (
            "unknown key: the API token never goes in this file; use a systemd credential "
            f"(LoadCredential={CREDENTIAL_NAME}:...) or api.token_file"
        )
    suggestion = suggest(key, list(known))
    if suggestion is None and top_level:
        # A section's key written at the top level ("interval:" for "health.interval:").
        nested = [
            f"{section}.{name}"
            for section, hint in _type_hints(Config).items()
            if section in known
            for option in (hint, *typing.get_args(hint))
            if dataclasses.is_dataclass(option)
            for name in _type_hints(typing.cast(type[Any], option))
            if name == key and not name.startswith("_")
        ]
        suggestion = nested[0] if nested else None
    return "unknown key" + (f" (did you mean '{suggestion}'?)" if suggestion else "")


def _raw_addresses(raw_ips: list[Any]) -> list[str | None]:
    addresses: list[str | None] = []
    for entry in raw_ips:
        address = entry.get("address") if isinstance(entry, dict) else entry
        addresses.append(address if isinstance(address, str) else None)
    return addresses


def holder_checks_per_hour(api: ApiConfig, ip_count: int) -> float:
    """The holder checks' requests per hour at rest: one GET per IP per interval."""
    return ip_count * 3600 / api.holder_check_interval


def keep_warms_per_hour(api: ApiConfig) -> float:
    """At most this many keep-warm GETs per hour at rest. One goes out only after
    ``keepalive_interval`` with no request at all, and the holder check leaves the API quiet
    for ``holder_check_interval`` at a time: a longer keepalive never fires at rest."""
    if api.keepalive_interval > api.holder_check_interval:
        return 0.0
    return 3600 / api.keepalive_interval


def idle_requests_per_hour(api: ApiConfig, ip_count: int) -> float:
    """API requests per hour of an idle daemon (IPs held, health OK): holder checks and any
    keep-warm GETs; what ``api.hourly_budget`` and the 1000/hour guard are compared with."""
    return holder_checks_per_hour(api, ip_count) + keep_warms_per_hour(api)


def budget_warnings(config: Config) -> list[str]:
    """What check-config (and the daemon, at startup) warns about: an idle cadence above
    ``api.hourly_budget``, with the share of DigitalOcean's per-token limit it implies.
    Not an error: the file is valid, and a proxy or a simulator may want other cadences."""
    api, ip_count = config.api, len(config.ips)
    total = idle_requests_per_hour(api, ip_count)
    if total <= api.hourly_budget:
        return []
    parts = [
        f"{ip_count} IP(s) checked every {format_duration(api.holder_check_interval)} "
        f"(api.holder_check_interval): {holder_checks_per_hour(api, ip_count):.0f}"
    ]
    advice = "lengthen api.holder_check_interval"
    keep_warms = keep_warms_per_hour(api)
    if keep_warms:
        parts.append(
            f"up to {keep_warms:.0f} keep-warm GETs, api.keepalive_interval "
            f"({format_duration(api.keepalive_interval)}) being no longer than the holder check"
        )
        advice += ", set api.keepalive_interval above it"
    return [
        f"api.hourly_budget: an idle daemon would send about {total:.0f} API requests/hour "
        f"({'; '.join(parts)}), over api.hourly_budget ({api.hourly_budget}): "
        f"{_share(total)} of DigitalOcean's {TOKEN_LIMIT_PER_HOUR:,} requests/hour per token, "
        f"{_droplets(total)} per token (at the budget: {_droplets(api.hourly_budget)}); "
        f"{advice}, or raise api.hourly_budget"
    ]


def _share(per_hour: float) -> str:
    return f"{100 * per_hour / TOKEN_LIMIT_PER_HOUR:.1f}%"


def _droplets(per_hour: float) -> str:
    count = math.floor(TOKEN_LIMIT_PER_HOUR / per_hour)
    return f"{count} idle droplet{'' if count == 1 else 's'}"


def _policy_problems(api: ApiConfig, ip_count: int) -> Problems:
    """Guard rails for production against DigitalOcean's real API (not for simulators)."""
    host = urlsplit(api.base_url).hostname or ""
    if not (host == "digitalocean.com" or host.endswith(".digitalocean.com")):
        return
    keep_warms = keep_warms_per_hour(api)
    holder_checks = holder_checks_per_hour(api, ip_count)
    total = keep_warms + holder_checks
    if total > REQUEST_BUDGET_PER_HOUR:
        key = "keepalive_interval" if keep_warms > holder_checks else "holder_check_interval"
        keep_warm = (
            f", keep-warm every {format_duration(api.keepalive_interval)}" if keep_warms else ""
        )
        yield (
            key,
            f"too frequent: about {total:.0f} requests/hour at rest ({ip_count} IP(s) checked "
            f"every {format_duration(api.holder_check_interval)}{keep_warm}); keep it under "
            f"{REQUEST_BUDGET_PER_HOUR} of DigitalOcean's {TOKEN_LIMIT_PER_HOUR}/hour per token",
        )
    if api.action_poll_interval < MIN_ACTION_POLL_INTERVAL:
        yield (
            "action_poll_interval",
            f"must be at least {format_duration(MIN_ACTION_POLL_INTERVAL)} against DigitalOcean "
            f"(250 requests/minute burst limit), got {format_duration(api.action_poll_interval)}",
        )


@dataclass(frozen=True)
class _PartialList:
    """A list with bad items (already reported): the good ones and their original indices."""

    items: tuple[Any, ...]
    indices: tuple[int, ...]


_INVALID: Any = object()
