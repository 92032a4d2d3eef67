"""Configuration: YAML into frozen, typed dataclasses; every error names its key path.

Field names are the YAML keys. Durations are seconds (float) in the dataclasses and are
written ``500ms``, ``2s``, ``1m``, ``1h``, ``1m30s`` (or a bare number of seconds) in YAML.

Two layers of checks, so a problem is caught wherever a config is built:

* each dataclass validates its own values in ``__post_init__`` (ranges, URLs, absolute
  paths, cross-field rules such as ``health.timeout < health.interval``) and raises one
  ``ConfigError`` naming every bad key, like aiohttp's ``ClientTimeout``;
* the loader (``load_config`` / ``parse_config``, below the dataclasses) checks the YAML's
  shape and types against the dataclasses' annotations, rejects unknown and duplicate keys,
  collects every problem of the file into one ``ConfigError`` with line numbers, and adds
  the production guard rail on the DigitalOcean request budget.

``load_config`` reads a file synchronously: the daemon calls it before the loop starts or
through ``asyncio.to_thread`` on reload.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml

from hafloatd.errors import ConfigError

PathFamily = Literal["reserved_ips", "floating_ips"]
TokenSource = Literal["auto", "credential", "file", "env"]
OnStop = Literal["release", "unassign"]
LogLevel = Literal["debug", "info", "warning", "error"]

TOKEN_ENV_VAR = "HAFLOATD_DO_TOKEN"  # noqa: S105  (a variable name, not a secret)
CREDENTIAL_NAME = "do-token"
DEFAULT_PATH = "/etc/hafloatd/hafloatd.yaml"

# (field, message) pairs a dataclass reports about its own values.
Problems = Iterator[tuple[str, str]]


@dataclass(frozen=True)
class ApiConfig:
    """``api:`` — how to reach DigitalOcean."""

    base_url: str = "https://api.digitalocean.com"
    path_family: PathFamily = "reserved_ips"
    # auto: systemd credential, then token_file, then $HAFLOATD_DO_TOKEN.
    token_source: TokenSource = "auto"  # noqa: S105
    token_file: str | None = None
    ca_file: str | None = None  # None: the system trust store
    connect_timeout: float = 2.0
    request_timeout: float = 5.0
    max_connections: int = 4
    keepalive_interval: float = 30.0  # cheap authenticated GET: keeps TLS warm, proves token
    holder_check_interval: float = 60.0  # authoritative GET /v2/reserved_ips/{ip} cadence
    action_poll_interval: float = 0.25
    user_agent: str = "hafloatd"

    _KEY: ClassVar[str] = "api"

    def __post_init__(self) -> None:
        _raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from _url_problems("base_url", self.base_url)
        if _url_path(self.base_url).rstrip("/").endswith("/v2"):
            yield (
                "base_url",
                f"must not end in /v2 (the client adds /v2/...), got {_show(self.base_url)}",
            )
        yield from _one_of("path_family", self.path_family, PathFamily)
        yield from _one_of("token_source", self.token_source, TokenSource)
        if self.token_source == "file" and self.token_file is None:  # noqa: S105
            yield "token_file", "is required when token_source is 'file'"
        if self.token_file is not None:
            if self.token_source in ("credential", "env"):
                yield (
                    "token_file",
                    f"is never read when token_source is '{self.token_source}': "
                    "remove it, or use token_source: file or auto",
                )
            yield from _absolute_path("token_file", self.token_file)
        if self.ca_file is not None:
            yield from _absolute_path("ca_file", self.ca_file)
        yield from _positive_duration("connect_timeout", self.connect_timeout)
        yield from _positive_duration("request_timeout", self.request_timeout)
        if 0 < self.request_timeout < self.connect_timeout:
            yield (
                "connect_timeout",
                f"must not exceed api.request_timeout ({format_duration(self.request_timeout)}), "
                f"got {format_duration(self.connect_timeout)}",
            )
        yield from _int_between("max_connections", self.max_connections, 1, 100)
        yield from _positive_duration("keepalive_interval", self.keepalive_interval)
        yield from _positive_duration("holder_check_interval", self.holder_check_interval)
        yield from _positive_duration("action_poll_interval", self.action_poll_interval)
        if not self.user_agent.strip() or any(c in self.user_agent for c in "\r\n"):
            yield "user_agent", f"must be a non-empty single line, got {_show(self.user_agent)}"


@dataclass(frozen=True)
class MetadataConfig:
    """``metadata:`` — the droplet metadata service and its on-disk identity cache."""

    base_url: str = "http://169.254.169.254/metadata/v1"
    cache_file: str = "/var/lib/hafloatd/metadata.json"
    timeout: float = 2.0
    poll_interval: float = 1.0

    _KEY: ClassVar[str] = "metadata"

    def __post_init__(self) -> None:
        _raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from _url_problems("base_url", self.base_url)
        yield from _absolute_path("cache_file", self.cache_file)
        yield from _positive_duration("timeout", self.timeout)
        yield from _positive_duration("poll_interval", self.poll_interval)


@dataclass(frozen=True)
class ControlConfig:
    """``control:`` — the Unix control socket the OCF agent talks to."""

    socket_path: str = "/run/hafloatd/control.sock"
    mode: int = 0o660
    group: str | None = "haclient"
    # Names or numeric ids; names that do not exist on this host are skipped with a warning.
    allowed_users: tuple[str | int, ...] = ("root", "hacluster")
    allowed_groups: tuple[str | int, ...] = ()
    read_timeout: float = 5.0
    max_connections: int = 32
    max_line_bytes: int = 65536

    _KEY: ClassVar[str] = "control"

    def __post_init__(self) -> None:
        _freeze_lists(self, "allowed_users", "allowed_groups")
        _raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from _absolute_path("socket_path", self.socket_path)
        size = len(os.fsencode(self.socket_path))
        if size > SUN_PATH_MAX:
            yield (
                "socket_path",
                f"must be at most {SUN_PATH_MAX} bytes (the AF_UNIX sun_path limit), "
                f"got {size} bytes",
            )
        if not 0 <= self.mode <= 0o777:
            yield "mode", f"must be an octal file mode 0000..0777, got {_show_mode(self.mode)}"
        elif self.mode & 0o007:
            yield (
                "mode",
                f"must not grant access to others (the last digit must be 0, e.g. 0660), "
                f"got {_show_mode(self.mode)}",
            )
        if self.group is not None:
            yield from _account_name("group", self.group)
        for name in ("allowed_users", "allowed_groups"):
            for index, entry in enumerate(getattr(self, name)):
                yield from _account(f"{name}[{index}]", entry)
        if not self.allowed_users and not self.allowed_groups:
            yield (
                "allowed_users",
                "must not be empty when allowed_groups is empty too: nobody could use the "
                "socket (list root and hacluster)",
            )
        yield from _positive_duration("read_timeout", self.read_timeout)
        yield from _int_between("max_connections", self.max_connections, 1, 1024)
        yield from _int_between("max_line_bytes", self.max_line_bytes, 1024, 16 * 1024 * 1024)


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics:`` — Prometheus exposition; ``listen: null`` disables it."""

    listen: str | None = "127.0.0.1:9310"

    _KEY: ClassVar[str] = "metrics"

    def __post_init__(self) -> None:
        _raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        if self.listen is not None:
            try:
                split_host_port(self.listen)
            except ValueError as exc:
                yield "listen", str(exc)

    def host_port(self) -> tuple[str, int] | None:
        """``(host, port)`` to bind (IPv6 without brackets), or None when disabled."""
        return None if self.listen is None else split_host_port(self.listen)


@dataclass(frozen=True)
class IpConfig:
    """One entry of ``ips:``."""

    address: str
    on_stop: OnStop = "release"

    # Direct construction has no index to name; the loader re-keys to ``ips[N]``.
    _KEY: ClassVar[str] = "ips[]"

    def __post_init__(self) -> None:
        _raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        try:
            parsed = ipaddress.IPv4Address(self.address)
        except ValueError:
            yield "address", f"must be an IPv4 address like 203.0.113.10, got {_show(self.address)}"
        else:
            if parsed.is_unspecified or parsed.is_multicast or parsed == _BROADCAST:
                yield "address", f"must be a unicast IPv4 address, got {_show(self.address)}"
        yield from _one_of("on_stop", self.on_stop, OnStop)


@dataclass(frozen=True)
class HealthConfig:
    """``health:`` — the local web server probe (absent section: no probe)."""

    url: str = "http://127.0.0.1/"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    expected_statuses: tuple[int, ...] = (200,)
    body_contains: str | None = None

    _KEY: ClassVar[str] = "health"

    def __post_init__(self) -> None:
        _freeze_lists(self, "expected_statuses")
        _raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from _url_problems("url", self.url)
        yield from _positive_duration("interval", self.interval)
        yield from _positive_duration("timeout", self.timeout)
        # A probe still running when the next is due would overlap or skew the cadence.
        if 0 < self.interval <= self.timeout:
            yield (
                "timeout",
                f"must be shorter than health.interval ({format_duration(self.interval)}), "
                f"got {format_duration(self.timeout)}",
            )
        yield from _int_between("rise", self.rise, 1, None)
        yield from _int_between("fall", self.fall, 1, None)
        if not self.expected_statuses:
            yield "expected_statuses", "must list at least one HTTP status code"
        for index, status in enumerate(self.expected_statuses):
            yield from _int_between(f"expected_statuses[{index}]", status, 100, 599)
        if self.body_contains is not None and not self.body_contains:
            yield "body_contains", "must not be empty (use null to skip the body check)"


@dataclass(frozen=True)
class PacemakerConfig:
    """``pacemaker:`` — opt-in direct notification of health failures."""

    notify_failures: bool = False
    crm_resource: str = "/usr/sbin/crm_resource"

    _KEY: ClassVar[str] = "pacemaker"

    def __post_init__(self) -> None:
        _raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from _absolute_path("crm_resource", self.crm_resource)


@dataclass(frozen=True)
class LoggingConfig:
    """``logging:``."""

    level: LogLevel = "info"

    _KEY: ClassVar[str] = "logging"

    def __post_init__(self) -> None:
        _raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from _one_of("level", self.level, LogLevel)


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    ips: tuple[IpConfig, ...]
    api: ApiConfig = field(default_factory=ApiConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig | None = None
    pacemaker: PacemakerConfig = field(default_factory=PacemakerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    state_dir: str = "/run/hafloatd"
    source: str | None = None  # the file it was loaded from, for messages

    _KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        _freeze_lists(self, "ips")
        _raise_if_invalid(
            self._KEY, _top_level_problems([ip.address for ip in self.ips], self.state_dir)
        )

    def ip(self, address: str) -> IpConfig | None:
        return next((entry for entry in self.ips if entry.address == address), None)


# The loader (load_config, parse_config, parse_duration) follows below.

SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes on Linux, one kept for the NUL
MAX_FILE_BYTES = 1024 * 1024
# Steady-state requests per hour one daemon may spend against api.digitalocean.com: the
# limit is 5,000/hour per token, a pair usually shares one token, failovers need headroom.
REQUEST_BUDGET_PER_HOUR = 1000
MIN_ACTION_POLL_INTERVAL = 0.1  # faster polling burns DigitalOcean's 250/minute burst limit

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)")
_DURATION_TEXT = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|s|m|h)\s*)+")
_BARE_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_ACCOUNT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_TOKEN_LIKE = re.compile(r"do[opr]_v1_[0-9a-f]{16,}|\b[0-9a-f]{64}\b")
_TOKEN_KEYS = frozenset({"token", "api_token", "do_token", "access_token", "bearer"})
_NOT_YAML_KEYS = frozenset({("Config", "source")})


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
        raise ConfigError(f"not valid UTF-8 (byte offset {exc.start})", source=source) from None
    document = _read_yaml(text, source)
    return _parse(document.data, source, document.lines, document.problems)


def parse_config(data: object, source: str | None = None) -> Config:
    """Validate already-parsed YAML (``yaml.safe_load`` output) into a ``Config``."""
    return _parse(data, source, {}, [])


def parse_duration(value: object, key: str) -> float:
    """Seconds from ``500ms``, ``2s``, ``1.5m``, ``1h``, ``1m30s`` or a bare number of seconds.

    Raises ``ConfigError("<key>: ...")`` for anything else, negatives, NaN and infinity.
    """
    try:
        return _to_duration(value)
    except _Invalid as exc:
        raise ConfigError(f"{key}: {exc}") from None


def format_duration(seconds: float) -> str:
    """The YAML spelling of a duration: ``500ms``, ``2s``, ``1.5s``, ``5m``."""
    if not math.isfinite(seconds):
        return repr(seconds)
    if 0 < abs(seconds) < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def split_host_port(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9310"`` → ``("127.0.0.1", 9310)``; ``"[::1]:9310"`` → ``("::1", 9310)``.

    Port 0 (an ephemeral port) is accepted for tests. Raises ValueError with a message fit
    for ``metrics.listen: <message>``.
    """
    wrong = f"must be host:port like 127.0.0.1:9310 or [::1]:9310, got {_show(listen)}"
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(wrong)
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port must be from 0 to 65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(wrong) from None
        return host[1:-1], port
    if not _is_host(host):
        raise ValueError(wrong + (" (put IPv6 addresses in brackets)" if ":" in host else ""))
    return host, port


# --- the loader's internals ---------------------------------------------------------------


class _YamlInt(int):
    """An int that remembers how it was written: ``control.mode: 660`` means octal 0660."""

    text: str

    def __new__(cls, value: int, text: str) -> _YamlInt:
        self = super().__new__(cls, value)
        self.text = text
        return self


class _Loader(yaml.SafeLoader):
    """SafeLoader whose ints keep their source text (for ``control.mode``)."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)
    return _YamlInt(value, node.value)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class _Document:
    data: object
    lines: dict[str, int]  # key path -> 1-based line where it is written
    problems: list[tuple[int | None, str]]  # duplicate keys


def _read_yaml(text: str, source: str) -> _Document:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return _Document(None, {}, [])
        document = _Document(None, {}, [])
        _walk_nodes(node, "", document, set())
        document.data = loader.construct_document(node)
        return document
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_problem(exc), source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if exc.context and exc.problem and exc.problem.startswith("but "):
        what = f"{exc.context}, {exc.problem}"  # "expected a single document..., but found..."
    elif exc.context and exc.problem:
        what = f"{exc.problem} ({exc.context})"
    else:
        what = exc.problem or exc.context or "unreadable document"
    return f"{where}invalid YAML: {what}"


def _walk_nodes(node: yaml.Node, path: str, document: _Document, seen: set[int]) -> None:
    """Record where each key path is written and report duplicate keys (PyYAML keeps the last)."""
    if id(node) in seen:  # aliases point at a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            child = _join(path, key_node.value)
            line = key_node.start_mark.line + 1
            if key_node.value in first_line:
                document.problems.append(
                    (
                        line,
                        f"{child}: duplicate key, first defined on line "
                        f"{first_line[key_node.value]}",
                    )
                )
            else:
                first_line[key_node.value] = line
            document.lines[child] = line
            _walk_nodes(value_node, child, document, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = f"{path}[{index}]"
            document.lines[child] = item.start_mark.line + 1
            _walk_nodes(item, child, document, seen)


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
    reader.extend(_top_level_problems(addresses, state_dir), "")
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
            self.report(_join(prefix, name), message)

    def error(self, source: str | None) -> ConfigError:
        ordered = sorted(self.problems, key=lambda p: math.inf if p[0] is None else p[0])
        return ConfigError(
            [text if line is None else f"{text} (line {line})" for line, text in ordered],
            source=source,
        )

    def fields(self, raw: object, cls: type[Any], path: str) -> tuple[dict[str, Any], bool] | None:
        """A mapping's keys converted to ``cls``'s field types, and whether every required
        field converted; None if ``raw`` is not a mapping."""
        if raw is None and path:
            raw = {}  # "api:" with every key commented out: the defaults
        if not isinstance(raw, dict):
            what = "an IPv4 address or a mapping with 'address'" if cls is IpConfig else "a mapping"
            self.report(path, f"must be {what}, got {_show(raw)}")
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
                self.report(path, f"keys must be strings, got {_show(key)}")
                continue
            key_path = _join(path, key)
            if key not in known:
                self.report(key_path, _unknown_key(key, known, top_level=not path))
                continue
            converted = self.value(value, hints[key], key_path, _SPECIAL.get((cls.__name__, key)))
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
                self.report(_join(path, name), "missing required key")
            complete = complete and name in kwargs
        return kwargs, complete

    def build(self, cls: type[Any], kwargs: dict[str, Any], path: str) -> Any:
        """``cls(**kwargs)``; its own checks' problems are re-keyed under ``path``.

        A ``_PartialList`` (some items already reported) is checked with its good items,
        which the dataclass numbers from 0: the problems are renumbered as written.
        """
        renumber = {
            _join(path, key): value.indices
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

    def value(self, raw: object, hint: Any, path: str, special: _Converter | None = None) -> Any:
        """``raw`` converted to ``hint``, or ``_INVALID`` once the problem is reported."""
        try:
            if special is not None:
                return special(raw)
            origin = typing.get_origin(hint)
            if origin in (types.UnionType, typing.Union):
                return self._union(raw, typing.get_args(hint), path)
            if origin is Literal:
                return _choice(raw, typing.get_args(hint))
            if origin is tuple:
                return self._list(raw, typing.get_args(hint)[0], path)
            if dataclasses.is_dataclass(hint):
                return self._section(raw, typing.cast(type[Any], hint), path)
            return _SCALARS[hint](raw)
        except _Invalid as exc:
            self.report(path, str(exc))
        return _INVALID

    def _union(self, raw: object, options: tuple[Any, ...], path: str) -> Any:
        if raw is None and type(None) in options:
            return None
        concrete = [option for option in options if option is not type(None)]
        if len(concrete) == 1:
            return self.value(raw, concrete[0], path)
        if set(concrete) == {str, int}:
            return _name_or_id(raw)
        raise TypeError(f"unsupported annotation for {path}: {options}")  # a bug, not user error

    def _list(self, raw: object, item_hint: Any, path: str) -> Any:
        if not isinstance(raw, list):
            raise _Invalid(f"must be a list, got {_show(raw)}")
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


class _Invalid(Exception):
    """A scalar did not convert; the message completes ``<key path>: ``."""


@dataclass(frozen=True)
class _PartialList:
    """A list with bad items (already reported): the good ones and their original indices."""

    items: tuple[Any, ...]
    indices: tuple[int, ...]


_INVALID: Any = object()
_Converter = typing.Callable[[object], Any]


def _to_int(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _Invalid(f"must be an integer, got {_show(raw)}")
    return int(raw)


def _to_bool(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise _Invalid(f"must be true or false, got {_show(raw)}")
    return raw


def _to_str(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"must be a string, got {_show(raw)} (quote it)")
    if not raw.strip():
        raise _Invalid("must not be empty")
    return raw


def _to_duration(raw: object) -> float:
    seconds: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if _BARE_NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION_TEXT.fullmatch(text):
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(text)
            )
    if seconds is None:
        raise _Invalid(
            f"must be a duration like 500ms, 2s or 1m (a bare number is seconds), got {_show(raw)}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise _Invalid(f"must be a duration >= 0, got {_show(raw)}")
    return seconds


def _to_mode(raw: object) -> int:
    """Octal like chmod: ``0660``, ``660``, ``"0660"`` and ``"0o660"`` all mean rw-rw----.

    YAML 1.1 reads ``0660`` as the int 432 and ``660`` as 660; the digits as written are
    what the user meant, so they are read as octal. A plain int from Python is a mode value.
    """
    wrong = f"must be an octal file mode like 0660, got {_show(raw)}"
    if isinstance(raw, _YamlInt):
        digits = raw.text.replace("_", "").lstrip("+")
        if re.fullmatch(r"\d+", digits):
            if not re.fullmatch(r"[0-7]+", digits):
                raise _Invalid(f"must be an octal file mode like 0660, got {raw.text}")
            return int(digits, 8)
        return int(raw)  # 0x1b0, 0b110110000: the value as written
    if isinstance(raw, bool):
        raise _Invalid(wrong)
    if isinstance(raw, int):
        if raw > 0o777 and re.fullmatch(r"[0-7]{3,4}", str(raw)):
            raise _Invalid(f"{wrong} (an int here is the numeric mode: write 0o{raw} or '0{raw}')")
        return raw
    if isinstance(raw, str):
        match = re.fullmatch(r"(?:0o)?([0-7]{1,4})", raw.strip().lower())
        if match:
            return int(match.group(1), 8)
    raise _Invalid(wrong)


def _name_or_id(raw: object) -> str | int:
    if isinstance(raw, str) and raw.strip():
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return int(raw)
    raise _Invalid(f"must be a name or a numeric id, got {_show(raw)}")


def _choice(raw: object, choices: tuple[Any, ...]) -> Any:
    if raw in choices and isinstance(raw, str):
        return raw
    message = f"must be one of {', '.join(choices)}, got {_show(raw)}"
    if isinstance(raw, str) and (suggestion := _suggest(raw, [str(c) for c in choices])):
        message += f" (did you mean '{suggestion}'?)"
    raise _Invalid(message)


_SCALARS: dict[Any, _Converter] = {int: _to_int, bool: _to_bool, str: _to_str, float: _to_duration}
# (dataclass name, field) -> converter, where the annotation alone does not say enough.
_SPECIAL: dict[tuple[str, str], _Converter] = {("ControlConfig", "mode"): _to_mode}


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(key: str, known: Mapping[str, object], *, top_level: bool) -> str:
    if key.lower() in _TOKEN_KEYS:
        return (
            "unknown key: the API token never goes in this file; use a systemd credential "
            f"(LoadCredential={CREDENTIAL_NAME}:...) or api.token_file"
        )
    suggestion = _suggest(key, list(known))
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


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    lowered = {choice.lower(): choice for choice in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _raw_addresses(raw_ips: list[Any]) -> list[str | None]:
    addresses: list[str | None] = []
    for entry in raw_ips:
        address = entry.get("address") if isinstance(entry, dict) else entry
        addresses.append(address if isinstance(address, str) else None)
    return addresses


# --- checks shared by the dataclasses and the loader --------------------------------------


def _top_level_problems(addresses: Sequence[str | None] | None, state_dir: str) -> Problems:
    """``addresses``: each ``ips[N].address`` (None where unusable); None: no usable list."""
    if addresses is not None and not addresses:
        yield "ips", "must list at least one reserved IP"
    first_index: dict[str, int] = {}
    for index, address in enumerate(addresses or ()):
        if address is None:
            continue
        if address in first_index:
            yield f"ips[{index}].address", f"duplicate of ips[{first_index[address]}] ({address})"
        else:
            first_index[address] = index
    yield from _absolute_path("state_dir", state_dir)


def _policy_problems(api: ApiConfig, ip_count: int) -> Problems:
    """Guard rails for production against DigitalOcean's real API (not for simulators)."""
    host = urlsplit(api.base_url).hostname or ""
    if not (host == "digitalocean.com" or host.endswith(".digitalocean.com")):
        return
    keepalive_per_hour = 3600 / api.keepalive_interval
    holder_per_hour = ip_count * 3600 / api.holder_check_interval
    total = keepalive_per_hour + holder_per_hour
    if total > REQUEST_BUDGET_PER_HOUR:
        key = "holder_check_interval"
        if keepalive_per_hour > holder_per_hour:
            key = "keepalive_interval"
        yield (
            key,
            f"too frequent: about {total:.0f} requests/hour at rest (keepalive every "
            f"{format_duration(api.keepalive_interval)}, {ip_count} IP(s) checked every "
            f"{format_duration(api.holder_check_interval)}); keep it under "
            f"{REQUEST_BUDGET_PER_HOUR} of DigitalOcean's 5000/hour per token",
        )
    if api.action_poll_interval < MIN_ACTION_POLL_INTERVAL:
        yield (
            "action_poll_interval",
            f"must be at least {format_duration(MIN_ACTION_POLL_INTERVAL)} against DigitalOcean "
            f"(250 requests/minute burst limit), got {format_duration(api.action_poll_interval)}",
        )


def _raise_if_invalid(prefix: str, problems: Iterable[tuple[str, str]]) -> None:
    found = [f"{_join(prefix, name)}: {message}" for name, message in problems]
    if found:
        raise ConfigError(found)


def _freeze_lists(instance: object, *names: str) -> None:
    """Lists passed to a frozen dataclass become tuples, so it stays hashable and immutable."""
    for name in names:
        value = getattr(instance, name)
        if isinstance(value, list):
            object.__setattr__(instance, name, tuple(value))


def _positive_duration(name: str, seconds: float) -> Problems:
    if not (math.isfinite(seconds) and seconds > 0):
        yield name, f"must be a duration > 0, got {format_duration(seconds)}"


def _int_between(name: str, value: int, low: int, high: int | None) -> Problems:
    if high is None and value < low:
        yield name, f"must be an integer >= {low}, got {value}"
    elif high is not None and not low <= value <= high:
        yield name, f"must be an integer from {low} to {high}, got {value}"


def _absolute_path(name: str, path: str) -> Problems:
    if not os.path.isabs(path):
        yield name, f"must be an absolute path, got {_show(path)}"


def _one_of(name: str, value: object, literal: Any) -> Problems:
    try:
        _choice(value, typing.get_args(literal))
    except _Invalid as exc:
        yield name, str(exc)


def _url_problems(name: str, url: str) -> Problems:
    wrong = f"must be an http:// or https:// URL, got {_show(url)}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        yield name, wrong
        return
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        yield name, wrong
    elif parts.username is not None or parts.password is not None:
        yield name, "must not embed credentials (user:password@)"


def _url_path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return ""


def _account(name: str, entry: str | int) -> Problems:
    if isinstance(entry, int):
        if not 0 <= entry < 2**32 - 1:
            yield name, f"must be a numeric id from 0 to {2**32 - 2}, got {entry}"
    else:
        yield from _account_name(name, entry)


def _account_name(name: str, value: str) -> Problems:
    if not _ACCOUNT_NAME.fullmatch(value):
        yield name, f"must be a user or group name like hacluster, got {_show(value)}"


def _is_host(host: str) -> bool:
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):  # looks numeric: must be a real IPv4
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _show(value: object) -> str:
    """A value as the user wrote it, for messages; anything token-like is redacted."""
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
        return repr(value)
    if isinstance(value, int | float):
        return repr(int(value) if isinstance(value, int) else value)
    return f"a {type(value).__name__}"


def _show_mode(mode: int) -> str:
    return f"{mode:04o}" if mode >= 0 else str(mode)
