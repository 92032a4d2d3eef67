"""The configuration's shape: one frozen dataclass per YAML section, each checking its own
values in ``__post_init__`` (ranges, URLs, absolute paths, cross-field rules such as
``health.timeout < health.interval``) and raising one ``ConfigError`` that names every bad
key, like aiohttp's ``ClientTimeout``.

Field names are the YAML keys. Durations are seconds (float). Built from Python, a problem
is named under the section (``health.fall``); the loader re-keys it to where the file says.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from hafloatd.config.values import (
    Problems,
    absolute_path,
    account,
    account_name,
    duration,
    format_duration,
    freeze_lists,
    int_between,
    one_of,
    raise_if_invalid,
    show,
    show_mode,
    split_host_port,
    url_path,
    url_problems,
)

PathFamily = Literal["reserved_ips", "floating_ips"]
TokenSource = Literal["auto", "credential", "file", "env"]
OnStop = Literal["release", "unassign"]
LogLevel = Literal["debug", "info", "warning", "error"]

TOKEN_ENV_VAR = "HAFLOATD_DO_TOKEN"  # noqa: S105  (a variable name, not a secret)
CREDENTIAL_NAME = "do-token"
DEFAULT_PATH = "/etc/hafloatd/hafloatd.yaml"
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes on Linux, one kept for the NUL

# Upper bounds of durations (seconds), far above any sensible setting: a longer timeout
# would outlast every Pacemaker operation waiting on it, a longer interval leaves the
# state it refreshes stale for longer than anyone would want. They also keep a typo
# (2h for 2s, 190:20:30) from being taken at its word. docs/configuration.md lists them.
MAX_TIMEOUT = 60.0
MAX_REQUEST_TIMEOUT = 120.0
MAX_INTERVAL = 3600.0
MAX_ACTION_POLL_INTERVAL = 60.0
# api.hourly_budget's bound, for the same reasons: a million requests an hour is 200 times
# DigitalOcean's limit per token, and a number past what a float holds passed check-config
# then crashed the daemon at startup (its metrics gauge), exit 70 in a restart loop.
MAX_HOURLY_BUDGET = 1_000_000

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


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
    # A cheap authenticated GET once the API has been quiet this long (longer than the holder
    # check: never at rest; it keeps the connection warm when the holder check is slower).
    keepalive_interval: float = 300.0
    # Authoritative GET /v2/reserved_ips/{ip} cadence at rest; it keeps the connection warm too.
    holder_check_interval: float = 120.0
    hourly_budget: int = 30  # API requests/hour one idle daemon should spend (check-config warns)
    action_poll_interval: float = 0.25
    user_agent: str = "hafloatd"

    _KEY: ClassVar[str] = "api"
    # The upper bound of each duration field (every float field is one); the loader uses it too.
    MAX_SECONDS: ClassVar[Mapping[str, float]] = {
        "connect_timeout": MAX_TIMEOUT,
        "request_timeout": MAX_REQUEST_TIMEOUT,
        "keepalive_interval": MAX_INTERVAL,
        "holder_check_interval": MAX_INTERVAL,
        "action_poll_interval": MAX_ACTION_POLL_INTERVAL,
    }

    def __post_init__(self) -> None:
        raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from url_problems("base_url", self.base_url)
        if url_path(self.base_url).rstrip("/").endswith("/v2"):
            yield (
                "base_url",
                f"must not end in /v2 (the client adds /v2/...), got {show(self.base_url)}",
            )
        yield from one_of("path_family", self.path_family, PathFamily)
        yield from one_of("token_source", self.token_source, TokenSource)
        if self.token_source == "file" and self.token_file is None:  # noqa: S105
            yield "token_file", "is required when token_source is 'file'"
        if self.token_file is not None:
            if self.token_source in ("credential", "env"):
                yield (
                    "token_file",
                    f"is never read when token_source is '{self.token_source}': "
                    "remove it, or use token_source: file or auto",
                )
            yield from absolute_path("token_file", self.token_file)
        if self.ca_file is not None:
            yield from absolute_path("ca_file", self.ca_file)
        yield from _durations(self)
        if 0 < self.request_timeout < self.connect_timeout:
            yield (
                "connect_timeout",
                f"must not exceed api.request_timeout ({format_duration(self.request_timeout)}), "
                f"got {format_duration(self.connect_timeout)}",
            )
        yield from int_between("max_connections", self.max_connections, 1, 100)
        yield from int_between("hourly_budget", self.hourly_budget, 1, MAX_HOURLY_BUDGET)
        if not self.user_agent.strip() or any(_is_control(c) for c in self.user_agent):
            yield "user_agent", f"must be a non-empty single line, got {show(self.user_agent)}"


@dataclass(frozen=True)
class MetadataConfig:
    """``metadata:`` — the droplet metadata service and its on-disk identity cache."""

    base_url: str = "http://169.254.169.254/metadata/v1"
    cache_file: str = "/var/lib/hafloatd/metadata.json"
    timeout: float = 2.0
    poll_interval: float = 1.0
    # How far the metadata's reserved-IP answer may trail the API after a move (see holder.py).
    max_lag: float = 2.0

    _KEY: ClassVar[str] = "metadata"
    # The upper bound of each duration field (every float field is one); the loader uses it too.
    MAX_SECONDS: ClassVar[Mapping[str, float]] = {
        "timeout": MAX_TIMEOUT,
        "poll_interval": MAX_INTERVAL,
        "max_lag": MAX_TIMEOUT,
    }

    def __post_init__(self) -> None:
        raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from url_problems("base_url", self.base_url)
        yield from absolute_path("cache_file", self.cache_file)
        yield from _durations(self)


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
    # The upper bound of each duration field (every float field is one); the loader uses it too.
    MAX_SECONDS: ClassVar[Mapping[str, float]] = {"read_timeout": MAX_TIMEOUT}

    def __post_init__(self) -> None:
        freeze_lists(self, "allowed_users", "allowed_groups")
        raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from absolute_path("socket_path", self.socket_path)
        size = len(self.socket_path.encode("utf-8", "surrogatepass"))  # never fails
        if size > SUN_PATH_MAX:
            yield (
                "socket_path",
                f"must be at most {SUN_PATH_MAX} bytes (the AF_UNIX sun_path limit), "
                f"got {size} bytes",
            )
        if not 0 <= self.mode <= 0o777:
            yield "mode", f"must be an octal file mode 0000..0777, got {show_mode(self.mode)}"
        elif self.mode & 0o007:
            yield (
                "mode",
                f"must not grant access to others (the last digit must be 0, e.g. 0660), "
                f"got {show_mode(self.mode)}",
            )
        if self.group is not None:
            yield from account_name("group", self.group)
        for name in ("allowed_users", "allowed_groups"):
            for index, entry in enumerate(getattr(self, name)):
                yield from account(f"{name}[{index}]", entry)
        if not self.allowed_users and not self.allowed_groups:
            yield (
                "allowed_users",
                "must not be empty when allowed_groups is empty too: nobody could use the "
                "socket (list root and hacluster)",
            )
        yield from _durations(self)
        yield from int_between("max_connections", self.max_connections, 1, 1024)
        yield from int_between("max_line_bytes", self.max_line_bytes, 1024, 16 * 1024 * 1024)


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics:`` — Prometheus exposition; ``listen: null`` disables it."""

    listen: str | None = "127.0.0.1:9310"

    _KEY: ClassVar[str] = "metrics"

    def __post_init__(self) -> None:
        raise_if_invalid(self._KEY, self._problems())

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
        raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        try:
            parsed = ipaddress.IPv4Address(self.address)
        except ValueError:
            yield "address", f"must be an IPv4 address like 203.0.113.10, got {show(self.address)}"
        else:
            if parsed.is_unspecified or parsed.is_multicast or parsed == _BROADCAST:
                yield "address", f"must be a unicast IPv4 address, got {show(self.address)}"
        yield from one_of("on_stop", self.on_stop, OnStop)


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
    # The upper bound of each duration field (every float field is one); the loader uses it too.
    MAX_SECONDS: ClassVar[Mapping[str, float]] = {"interval": MAX_INTERVAL, "timeout": MAX_TIMEOUT}

    def __post_init__(self) -> None:
        freeze_lists(self, "expected_statuses")
        raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from url_problems("url", self.url)
        yield from _durations(self)
        # A probe still running when the next is due would overlap or skew the cadence.
        if 0 < self.interval <= self.timeout:
            yield (
                "timeout",
                f"must be shorter than health.interval ({format_duration(self.interval)}), "
                f"got {format_duration(self.timeout)}",
            )
        yield from int_between("rise", self.rise, 1, None)
        yield from int_between("fall", self.fall, 1, None)
        if not self.expected_statuses:
            yield "expected_statuses", "must list at least one HTTP status code"
        for index, status in enumerate(self.expected_statuses):
            yield from int_between(f"expected_statuses[{index}]", status, 100, 599)
        if self.body_contains is not None and not self.body_contains:
            yield "body_contains", "must not be empty (use null to skip the body check)"


@dataclass(frozen=True)
class PacemakerConfig:
    """``pacemaker:`` — opt-in direct notification of health failures."""

    notify_failures: bool = False
    crm_resource: str = "/usr/sbin/crm_resource"

    _KEY: ClassVar[str] = "pacemaker"

    def __post_init__(self) -> None:
        raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from absolute_path("crm_resource", self.crm_resource)


@dataclass(frozen=True)
class LoggingConfig:
    """``logging:``."""

    level: LogLevel = "info"

    _KEY: ClassVar[str] = "logging"

    def __post_init__(self) -> None:
        raise_if_invalid(self._KEY, self._problems())

    def _problems(self) -> Problems:
        yield from one_of("level", self.level, LogLevel)


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
        freeze_lists(self, "ips")
        raise_if_invalid(
            self._KEY, top_level_problems([ip.address for ip in self.ips], self.state_dir)
        )

    def ip(self, address: str) -> IpConfig | None:
        return next((entry for entry in self.ips if entry.address == address), None)


def top_level_problems(addresses: Sequence[str | None] | None, state_dir: str) -> Problems:
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
    yield from absolute_path("state_dir", state_dir)


def _durations(section: Any) -> Problems:
    """Each of ``section``'s durations: > 0 and at most its bound in ``MAX_SECONDS``."""
    for name, at_most in section.MAX_SECONDS.items():
        yield from duration(name, getattr(section, name), at_most)


def _is_control(char: str) -> bool:
    """A C0 control or DEL, except tab: it would break a header line (CR, LF) or a request."""
    return char != "\t" and (char < " " or char == "\x7f")
