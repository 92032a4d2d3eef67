"""Fault injection for the simulator, switchable at run time from Python or over HTTP.

A ``Fault`` applies to the next ``count`` matching requests (``None``: until removed) of the
named API endpoints, or to the metadata service of one droplet (or all), or to newly created
actions. Kinds:

==================  =====================================================================
``latency``         add ``delay_s`` before the request is handled (API)
``server_error``    answer ``status`` (500 by default; any 4xx/5xx) with DO's error body (API);
                    ``message`` replaces DO's text (e.g. an edge proxy echoing a header)
``rate_limit_storm`` answer 429 ``too_many_requests`` with ``retry-after: retry_after_s`` (API)
``drop_connection`` close the TCP connection without an answer; for a POST, by default only
                    *after* the action was created (``after_state_change``): a POST of
                    unknown fate (API)
``action_errored``  the next created action ends ``errored``; the IP does not move
``action_stuck``    the next created action stays ``in-progress`` (the IP stays locked) until
                    ``Simulator.finish_stuck_actions`` is called
``action_slow``     the next created action takes ``delay_s`` longer than ``action_delay`` to
                    finish (combines with ``action_errored``; a stuck action ignores it)
``metadata_down``   the metadata service resets every connection without answering
``metadata_slow``   the metadata service waits ``delay_s`` before answering
``metadata_empty``  the metadata service answers 200 with an empty body
``metadata_error``  the metadata service answers ``status`` (500 by default)
``metadata_garbage`` the metadata service answers 200 with ``GARBAGE_BODY`` (an HTML page
                    with a NUL and bytes that are not UTF-8) for every path: a captive
                    portal or a proxy answering in its place
==================  =====================================================================

API endpoint names (``endpoint=`` takes one, a comma-separated list, or ``"*"``):
``list_reserved_ips``, ``get_reserved_ip``, ``list_ip_actions``, ``post_action``,
``get_ip_action``, ``get_action``, ``get_droplet``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

FaultKind = Literal[
    "latency",
    "server_error",
    "rate_limit_storm",
    "drop_connection",
    "action_errored",
    "action_stuck",
    "action_slow",
    "metadata_down",
    "metadata_slow",
    "metadata_empty",
    "metadata_error",
    "metadata_garbage",
]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))
API_FAULT_KINDS = frozenset({"latency", "server_error", "rate_limit_storm", "drop_connection"})
ACTION_FAULT_KINDS = frozenset({"action_errored", "action_stuck", "action_slow"})
DELAY_FAULT_KINDS = frozenset({"latency", "metadata_slow", "action_slow"})
METADATA_FAULT_KINDS = frozenset(
    {"metadata_down", "metadata_slow", "metadata_empty", "metadata_error", "metadata_garbage"}
)
# What ``metadata_garbage`` answers: neither a droplet id, nor true/false, nor an address.
GARBAGE_BODY: bytes = b"<html><body><h1>It works!</h1>\x00\xff\xfe</body></html>\n"
API_ENDPOINTS: frozenset[str] = frozenset(
    {
        "list_reserved_ips",
        "get_reserved_ip",
        "list_ip_actions",
        "post_action",
        "get_ip_action",
        "get_action",
        "get_droplet",
    }
)


class FaultError(ValueError):
    """A fault that cannot be installed; the message says which argument to change."""


@dataclass
class Fault:
    """One installed fault. ``remaining`` counts down per hit; ``None`` means until removed."""

    id: int
    kind: FaultKind
    endpoints: frozenset[str] | None = None  # None = every endpoint
    ip: str | None = None
    droplet_id: int | None = None
    remaining: int | None = None
    status: int = 500
    delay_s: float = 0.0
    retry_after_s: int = 1
    after_state_change: bool = True
    message: str | None = None  # server_error: the error body's message (None: DO's text)
    hits: int = 0

    def matches(self, endpoint: str | None, ip: str | None, droplet_id: int | None) -> bool:
        if self.endpoints is not None and endpoint not in self.endpoints:
            return False
        if self.ip is not None and ip != self.ip:
            return False
        return self.droplet_id is None or droplet_id == self.droplet_id

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "endpoint": ",".join(sorted(self.endpoints)) if self.endpoints is not None else "*",
            "ip": self.ip,
            "droplet_id": self.droplet_id,
            "remaining": self.remaining,
            "status": self.status,
            "delay_s": self.delay_s,
            "retry_after_s": self.retry_after_s,
            "after_state_change": self.after_state_change,
            "message": self.message,
            "hits": self.hits,
        }


class FaultInjector:
    """The set of installed faults. The servers ``take`` from it; tests ``add`` to it."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._listeners: list[Callable[[], None]] = []

    # --- installing -----------------------------------------------------------------------

    def add(
        self,
        kind: FaultKind,
        *,
        endpoint: str = "*",
        count: int | None = None,
        status: int | None = None,
        delay_s: float = 0.0,
        retry_after_s: int = 1,
        after_state_change: bool = True,
        ip: str | None = None,
        droplet_id: int | None = None,
        message: str | None = None,
    ) -> Fault:
        """Install a fault; see the module docstring for the kinds. Returns it (for ``remove``)."""
        if kind not in FAULT_KINDS:
            raise FaultError(f"kind: unknown fault kind {kind!r}; use one of {sorted(FAULT_KINDS)}")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise FaultError(
                f"count: must be a positive integer or None (until removed), got {count!r}"
            )
        if not isinstance(delay_s, int | float) or delay_s < 0:
            raise FaultError(f"delay_s: must be a number of seconds >= 0, got {delay_s!r}")
        if not isinstance(retry_after_s, int) or retry_after_s < 0:
            raise FaultError(f"retry_after_s: must be whole seconds >= 0, got {retry_after_s!r}")
        default_status = 500
        chosen_status = default_status if status is None else status
        if not isinstance(chosen_status, int) or not 400 <= chosen_status <= 599:
            raise FaultError(f"status: must be an HTTP error status 400-599, got {status!r}")
        if message is not None and (kind != "server_error" or not isinstance(message, str)):
            raise FaultError("message: a string, and only for a server_error fault")
        if kind in DELAY_FAULT_KINDS and delay_s <= 0:
            raise FaultError(f"delay_s: a {kind} fault needs delay_s > 0")
        endpoints = _parse_endpoints(endpoint) if kind in API_FAULT_KINDS else None
        if kind == "metadata_down" and count is not None:
            raise FaultError("count: metadata_down lasts until removed; leave count unset")
        fault = Fault(
            id=next(self._ids),
            kind=kind,
            endpoints=endpoints,
            ip=ip,
            droplet_id=droplet_id,
            remaining=count,
            status=chosen_status,
            delay_s=float(delay_s),
            retry_after_s=retry_after_s,
            after_state_change=after_state_change,
            message=message,
        )
        self._faults.append(fault)
        self._changed()
        return fault

    def add_from_json(self, data: Mapping[str, Any]) -> Fault:
        """``POST /_sim/faults`` body -> ``add``; FaultError names a bad field."""
        allowed = {
            "kind", "endpoint", "count", "status", "delay_s", "retry_after_s",
            "after_state_change", "ip", "droplet_id", "message",
        }  # fmt: skip
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise FaultError(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        if "kind" not in data:
            raise FaultError("kind: required")
        return self.add(**dict(data))

    def latency(
        self,
        delay_s: float,
        *,
        endpoint: str = "*",
        count: int | None = None,
        ip: str | None = None,
    ) -> Fault:
        return self.add("latency", endpoint=endpoint, count=count, delay_s=delay_s, ip=ip)

    def server_errors(
        self,
        count: int | None,
        *,
        endpoint: str = "*",
        status: int = 500,
        ip: str | None = None,
        message: str | None = None,
    ) -> Fault:
        """The next ``count`` matching requests get ``status`` (also usable for 404s, e.g. an
        action lookup that fails as it does for BYOIP addresses); ``message`` replaces the
        error body's text."""
        return self.add(
            "server_error", endpoint=endpoint, count=count, status=status, ip=ip, message=message
        )

    def rate_limit_storm(
        self,
        count: int | None,
        *,
        endpoint: str = "*",
        retry_after_s: int = 1,
        ip: str | None = None,
    ) -> Fault:
        return self.add(
            "rate_limit_storm", endpoint=endpoint, count=count, retry_after_s=retry_after_s, ip=ip
        )

    def drop_connections(
        self,
        count: int | None,
        *,
        endpoint: str = "*",
        after_state_change: bool = True,
        ip: str | None = None,
    ) -> Fault:
        return self.add(
            "drop_connection",
            endpoint=endpoint,
            count=count,
            after_state_change=after_state_change,
            ip=ip,
        )

    def errored_actions(self, count: int | None = 1, *, ip: str | None = None) -> Fault:
        return self.add("action_errored", count=count, ip=ip)

    def stuck_actions(self, count: int | None = 1, *, ip: str | None = None) -> Fault:
        return self.add("action_stuck", count=count, ip=ip)

    def slow_actions(
        self, delay_s: float, count: int | None = 1, *, ip: str | None = None
    ) -> Fault:
        """The next ``count`` created actions finish ``delay_s`` later than ``action_delay``."""
        return self.add("action_slow", delay_s=delay_s, count=count, ip=ip)

    def metadata_down(self, droplet_id: int | None = None) -> Fault:
        return self.add("metadata_down", droplet_id=droplet_id)

    def metadata_slow(
        self, delay_s: float, *, droplet_id: int | None = None, count: int | None = None
    ) -> Fault:
        return self.add("metadata_slow", delay_s=delay_s, droplet_id=droplet_id, count=count)

    def metadata_empty(self, *, droplet_id: int | None = None, count: int | None = None) -> Fault:
        return self.add("metadata_empty", droplet_id=droplet_id, count=count)

    def metadata_error(
        self, *, status: int = 500, droplet_id: int | None = None, count: int | None = None
    ) -> Fault:
        return self.add("metadata_error", status=status, droplet_id=droplet_id, count=count)

    def metadata_garbage(self, *, droplet_id: int | None = None, count: int | None = None) -> Fault:
        """200 with ``GARBAGE_BODY`` on every path (``/metadata/v1.json`` included)."""
        return self.add("metadata_garbage", droplet_id=droplet_id, count=count)

    def remove(self, fault: Fault | int) -> bool:
        """Remove one fault (object or id); False if it was already gone."""
        fault_id = fault.id if isinstance(fault, Fault) else fault
        before = len(self._faults)
        self._faults = [f for f in self._faults if f.id != fault_id]
        removed = len(self._faults) != before
        if removed:
            self._changed()
        return removed

    def clear(self) -> None:
        """Remove every fault."""
        self._faults.clear()
        self._changed()

    def active(self) -> list[Fault]:
        return list(self._faults)

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every change (the simulator logs them)."""
        self._listeners.append(listener)

    # --- consuming (servers call these) ---------------------------------------------------

    def take(
        self,
        kind: FaultKind,
        *,
        endpoint: str | None = None,
        ip: str | None = None,
        droplet_id: int | None = None,
        consume: bool = True,
    ) -> Fault | None:
        """The first matching fault of ``kind``, counting one hit against it, or None."""
        for fault in self._faults:
            if fault.kind == kind and fault.matches(endpoint, ip, droplet_id):
                if consume:
                    self.hit(fault)
                return fault
        return None

    def total_delay(
        self,
        kind: Literal["latency", "metadata_slow", "action_slow"],
        *,
        endpoint: str | None = None,
        ip: str | None = None,
        droplet_id: int | None = None,
    ) -> float:
        """Sum of every matching delay fault (each counts one hit)."""
        delay = 0.0
        for fault in list(self._faults):
            if fault.kind == kind and fault.matches(endpoint, ip, droplet_id):
                delay += fault.delay_s
                self.hit(fault)
        return delay

    def hit(self, fault: Fault) -> None:
        """Count one use of ``fault`` (found with ``take(..., consume=False)``)."""
        fault.hits += 1
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults = [f for f in self._faults if f.id != fault.id]
                self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()


def _parse_endpoints(endpoint: str) -> frozenset[str] | None:
    names = frozenset(part.strip() for part in endpoint.split(",") if part.strip())
    if not names or "*" in names:
        return None
    unknown = sorted(names - API_ENDPOINTS)
    if unknown:
        raise FaultError(
            f"endpoint: unknown endpoint(s) {unknown}; use '*' or some of {sorted(API_ENDPOINTS)}"
        )
    return names
