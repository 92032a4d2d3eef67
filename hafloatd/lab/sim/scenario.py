"""The simulator's scenario: droplets, reserved IPs, tokens, timing and limits.

Frozen dataclasses that validate themselves in ``__post_init__`` (like aiohttp's
``ClientTimeout``): a scenario the simulator could not honour fails when it is built, with a
message naming the field and what to change. ``scenario_from_mapping`` builds one from the
YAML form used by ``hafloatd simulator --scenario FILE``.

Nothing here imports from the daemon's side of hafloatd: the simulator must not share code
(or bugs) with the client it tests.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

# Region slug -> display name, as DigitalOcean's /v2/regions answers them.
REGION_NAMES: Mapping[str, str] = {
    "ams3": "Amsterdam 3",
    "atl1": "Atlanta 1",
    "blr1": "Bangalore 1",
    "fra1": "Frankfurt 1",
    "lon1": "London 1",
    "nyc1": "New York 1",
    "nyc2": "New York 2",
    "nyc3": "New York 3",
    "sfo2": "San Francisco 2",
    "sfo3": "San Francisco 3",
    "sgp1": "Singapore 1",
    "syd1": "Sydney 1",
    "tor1": "Toronto 1",
}

# DigitalOcean's documented defaults (README: 5,000 per rolling hour, 250 per minute).
DEFAULT_RATE_LIMIT_PER_HOUR = 5000
DEFAULT_RATE_LIMIT_PER_MINUTE = 250


class ScenarioError(ValueError):
    """A scenario the simulator cannot run; the message names the field and the fix."""


@dataclass(frozen=True)
class SimDroplet:
    """One simulated droplet.

    ``backend`` is the ``host:port`` the reserved-IP proxy forwards to while this droplet holds
    the IP (its nginx); ``None`` means connections are closed. Empty address fields are
    derived from ``id`` so that small scenarios stay short.
    """

    id: int
    name: str
    region: str
    backend: str | None = None
    private_ipv4: str = ""
    public_ipv4: str = ""
    anchor_ipv4: str = ""
    tags: tuple[str, ...] = ()
    metadata_port: int = 0

    def __post_init__(self) -> None:
        where = f"droplet {self.id!r}"
        _require_positive_int(self.id, f"{where}: id")
        if not isinstance(self.name, str) or not self.name:
            raise ScenarioError(f"{where}: name must be a non-empty string")
        _require_region(self.region, f"{where}: region")
        if self.backend is not None:
            parse_backend(self.backend, f"{where}: backend")
        low, mid, high = (self.id >> 16) & 0xFF, (self.id >> 8) & 0xFF, self.id & 0xFF
        derived = {
            "private_ipv4": f"10.{110 + low % 100}.{mid}.{high}",
            "public_ipv4": f"198.51.{100 + low % 100}.{high}",
            "anchor_ipv4": f"10.{20 + low % 100}.{mid}.{high}",
        }
        for name, default in derived.items():
            value = getattr(self, name)
            if not value:
                object.__setattr__(self, name, default)
            else:
                _require_ipv4(value, f"{where}: {name}")
        object.__setattr__(self, "tags", tuple(self.tags))
        _require_port(self.metadata_port, f"{where}: metadata_port")


@dataclass(frozen=True)
class SimReservedIp:
    """One reserved IP, reserved to ``region``; ``droplet_id`` is its holder at start."""

    ip: str
    region: str
    droplet_id: int | None = None
    proxy_port: int = 0
    project_id: str = ""

    def __post_init__(self) -> None:
        where = f"reserved IP {self.ip!r}"
        _require_ipv4(self.ip, f"{where}: ip")
        _require_region(self.region, f"{where}: region")
        if self.droplet_id is not None:
            _require_positive_int(self.droplet_id, f"{where}: droplet_id")
        _require_port(self.proxy_port, f"{where}: proxy_port")
        if not self.project_id:
            object.__setattr__(
                self, "project_id", str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-project/{self.ip}"))
            )
        else:
            _require_uuid(self.project_id, f"{where}: project_id")


@dataclass(frozen=True)
class SimScenario:
    """Everything the simulator serves. Durations are seconds.

    ``action_delay``: time from an accepted POST to the action completing (the IP moves then).
    ``metadata_lag_s``: how long the metadata service keeps showing the previous holder after a
    move (0 = instantly). The two rate-limit windows default to DigitalOcean's minute and hour;
    shorten them only to test a client's handling of a real (non-injected) 429 quickly.
    """

    tokens: tuple[str, ...] = ("test-token",)
    read_only_tokens: tuple[str, ...] = ()
    droplets: tuple[SimDroplet, ...] = ()
    reserved_ips: tuple[SimReservedIp, ...] = ()
    action_delay: float = 1.0
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT_PER_MINUTE
    rate_limit_per_hour: int = DEFAULT_RATE_LIMIT_PER_HOUR
    tls: bool = False
    host: str = "127.0.0.1"
    api_port: int = 0
    metadata_lag_s: float = 0.0
    rate_limit_minute_window_s: float = 60.0
    rate_limit_hour_window_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("tokens", "read_only_tokens", "droplets", "reserved_ips"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for index, token in enumerate(self.tokens + self.read_only_tokens):
            if not isinstance(token, str) or not token or token != token.strip():
                raise ScenarioError(
                    f"tokens[{index}]: a token must be a non-empty string without surrounding "
                    "whitespace"
                )
        droplet_ids = [d.id for d in self.droplets]
        _require_unique(droplet_ids, "droplets: duplicate droplet id")
        ips = [r.ip for r in self.reserved_ips]
        _require_unique(ips, "reserved_ips: duplicate reserved IP")
        by_id = {d.id: d for d in self.droplets}
        holders: dict[int, str] = {}
        for rip in self.reserved_ips:
            if rip.droplet_id is None:
                continue
            droplet = by_id.get(rip.droplet_id)
            if droplet is None:
                raise ScenarioError(
                    f"reserved IP {rip.ip}: droplet_id {rip.droplet_id} is not one of the "
                    f"scenario's droplets {sorted(by_id)}"
                )
            if droplet.region != rip.region:
                raise ScenarioError(
                    f"reserved IP {rip.ip}: held by droplet {droplet.id} in {droplet.region} "
                    f"but reserved to {rip.region}; a reserved IP only maps within its region"
                )
            if rip.droplet_id in holders:
                raise ScenarioError(
                    f"reserved IP {rip.ip}: droplet {rip.droplet_id} already holds "
                    f"{holders[rip.droplet_id]}; DigitalOcean allows one reserved IPv4 per droplet"
                )
            holders[rip.droplet_id] = rip.ip
        _require_non_negative(self.action_delay, "action_delay")
        _require_non_negative(self.metadata_lag_s, "metadata_lag_s")
        _require_positive_int(self.rate_limit_per_minute, "rate_limit_per_minute")
        _require_positive_int(self.rate_limit_per_hour, "rate_limit_per_hour")
        for name in ("rate_limit_minute_window_s", "rate_limit_hour_window_s"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ScenarioError(f"{name}: must be a positive number of seconds, got {value!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ScenarioError("host: must be a non-empty address such as 127.0.0.1")
        _require_port(self.api_port, "api_port")
        ports = [self.api_port] + [d.metadata_port for d in self.droplets]
        ports += [r.proxy_port for r in self.reserved_ips]
        _require_unique([p for p in ports if p], "ports: the same fixed port is used twice")

    def droplet(self, droplet_id: int) -> SimDroplet:
        for droplet in self.droplets:
            if droplet.id == droplet_id:
                return droplet
        raise KeyError(droplet_id)


def parse_backend(backend: str, where: str = "backend") -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:8080"`` for IPv6) -> ``(host, port)``; ScenarioError if not."""
    host, sep, port_text = backend.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ScenarioError(f"{where}: expected host:port such as 127.0.0.1:8081, got {backend!r}")
    return host, int(port_text)


def scenario_from_mapping(data: Mapping[str, Any]) -> SimScenario:
    """Build a scenario from its YAML/JSON form; errors name the key path (``droplets[1].id``)."""
    if not isinstance(data, Mapping):
        raise ScenarioError("scenario: expected a mapping at the top level")
    known = {f.name for f in fields(SimScenario)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(f"scenario: unknown key(s) {unknown}; known keys: {sorted(known)}")
    nested = ("droplets", "reserved_ips")
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in nested}
    for key in ("tokens", "read_only_tokens"):
        if key in kwargs:
            kwargs[key] = tuple(_sequence(kwargs[key], key))
    kwargs["droplets"] = tuple(
        _build(SimDroplet, item, f"droplets[{i}]")
        for i, item in enumerate(_sequence(data.get("droplets", ()), "droplets"))
    )
    kwargs["reserved_ips"] = tuple(
        _build(SimReservedIp, item, f"reserved_ips[{i}]")
        for i, item in enumerate(_sequence(data.get("reserved_ips", ()), "reserved_ips"))
    )
    try:
        return SimScenario(**kwargs)
    except TypeError as exc:
        raise ScenarioError(f"scenario: {exc}") from None


def _build(cls: type[Any], item: Any, where: str) -> Any:
    if not isinstance(item, Mapping):
        raise ScenarioError(f"{where}: expected a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(item) - known)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    values = dict(item)
    if "tags" in values:
        values["tags"] = tuple(_sequence(values["tags"], f"{where}.tags"))
    try:
        return cls(**values)
    except ScenarioError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ScenarioError(f"{where}: expected a list")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _require_positive_int(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ScenarioError(f"{where}: must be a positive integer, got {value!r}")


def _require_non_negative(value: Any, where: str) -> None:
    if not _is_number(value) or value < 0:
        raise ScenarioError(f"{where}: must be a number of seconds >= 0, got {value!r}")


def _require_port(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 65536:
        raise ScenarioError(f"{where}: must be a TCP port 1-65535, or 0 for an ephemeral port")


def _require_region(value: Any, where: str) -> None:
    if value not in REGION_NAMES:
        raise ScenarioError(f"{where}: unknown region {value!r}; use one of {sorted(REGION_NAMES)}")


def _require_ipv4(value: Any, where: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except (ipaddress.AddressValueError, ValueError):
        raise ScenarioError(f"{where}: expected a dotted-quad IPv4 address, got {value!r}") from (
            None
        )


def _require_uuid(value: Any, where: str) -> None:
    try:
        uuid.UUID(str(value))
    except ValueError:
        raise ScenarioError(f"{where}: expected a UUID, got {value!r}") from None


def _require_unique(values: Sequence[Any], message: str) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ScenarioError(f"{message}: {value!r}")
        seen.add(value)
