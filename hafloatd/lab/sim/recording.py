"""What the simulator's API server saw: one ``Exchange`` per request, plus counters.

Tests assert on these (how many POSTs reached the API, what a client sent, on which TCP
connection) and the test fixtures validate every exchange against DigitalOcean's OpenAPI spec.
Reprs mask the ``Authorization`` header so a recorded token never lands in a test report.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

SENSITIVE_HEADERS = frozenset({"authorization"})


@dataclass
class Exchange:
    """One request to the API server and what it was answered.

    ``status`` is ``None`` when the connection was dropped instead of answered
    (``dropped`` is then True); ``state_changed`` says whether the request changed the
    simulator's state (an accepted POST), which matters for "POST of unknown fate" tests.
    ``endpoint`` is the operation name (``post_action``, ``get_reserved_ip``...) or ``None``
    for paths the simulated API does not serve. ``fault`` names the injected fault that shaped
    the answer, if any. ``contract_exempt`` carries the reason a test gave for sending a request
    that deliberately violates the spec.
    """

    seq: int
    received_at: float  # unix time
    received_monotonic: float  # CLOCK_MONOTONIC, comparable across processes on Linux
    connection_id: int
    method: str
    path: str
    query_string: str
    request_headers: CIMultiDictProxy[str]
    request_body: bytes
    endpoint: str | None = None
    ip: str | None = None
    status: int | None = None
    response_headers: CIMultiDictProxy[str] = field(
        default_factory=lambda: CIMultiDictProxy(CIMultiDict())
    )
    response_body: bytes = b""
    duration_s: float = 0.0
    dropped: bool = False
    state_changed: bool = False
    fault: str | None = None
    contract_exempt: str | None = None

    @property
    def query(self) -> MultiDict[str]:
        return MultiDict(parse_qsl(self.query_string, keep_blank_values=True))

    @property
    def token_sent(self) -> bool:
        return self.request_headers.get("Authorization", "").lower().startswith("bearer ")

    def request_json(self) -> Any:
        return json.loads(self.request_body) if self.request_body else None

    def response_json(self) -> Any:
        return json.loads(self.response_body) if self.response_body else None

    def masked_request_headers(self) -> dict[str, str]:
        return {
            k: ("***" if k.lower() in SENSITIVE_HEADERS else v)
            for k, v in self.request_headers.items()
        }

    def summary(self) -> str:
        answer = "dropped" if self.dropped else str(self.status)
        query = f"?{self.query_string}" if self.query_string else ""
        fault = f" fault={self.fault}" if self.fault else ""
        return f"#{self.seq} {self.method} {self.path}{query} -> {answer}{fault}"

    def __repr__(self) -> str:
        return (
            f"Exchange({self.summary()!r}, endpoint={self.endpoint!r}, "
            f"connection_id={self.connection_id}, request_headers={self.masked_request_headers()})"
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe view for ``GET /_sim/exchanges`` (Authorization masked)."""
        return {
            "seq": self.seq,
            "received_at": self.received_at,
            "received_monotonic": self.received_monotonic,
            "connection_id": self.connection_id,
            "method": self.method,
            "path": self.path,
            "query": self.query_string,
            "endpoint": self.endpoint,
            "ip": self.ip,
            "status": self.status,
            "dropped": self.dropped,
            "state_changed": self.state_changed,
            "fault": self.fault,
            "duration_s": self.duration_s,
            "request_headers": self.masked_request_headers(),
            "request_body": self.request_body.decode("utf-8", "replace"),
            "response_headers": dict(self.response_headers),
            "response_body": self.response_body.decode("utf-8", "replace"),
        }


@dataclass
class SimCounters:
    """Running totals since start (or since ``Recorder.clear``)."""

    requests: Counter[str] = field(default_factory=Counter)  # by endpoint ("-" = unknown)
    statuses: Counter[int] = field(default_factory=Counter)  # 0 = dropped
    posts_per_ip: Counter[str] = field(default_factory=Counter)  # POST .../{ip}/actions
    # POSTs that started an action, whether or not the client saw the 201 (dropped after).
    actions_created_per_ip: Counter[str] = field(default_factory=Counter)
    connections: int = 0  # distinct TCP connections seen on the API port

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "posts_per_ip": dict(self.posts_per_ip),
            "actions_created_per_ip": dict(self.actions_created_per_ip),
            "connections": self.connections,
        }


class Recorder:
    """Owns the exchange list, the counters and the TCP-connection numbering."""

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        # Never cleared: the contract check at fixture teardown sees every exchange.
        self.history: list[Exchange] = []
        self.counters = SimCounters()
        self._connection_ids: dict[tuple[Any, ...], int] = {}
        self._next_connection_id = 1
        self._next_seq = 1
        self._exempt_reasons: list[str] = []

    def connection_id(self, peer: tuple[Any, ...] | None, transport_id: int) -> int:
        """A stable number per client TCP connection (peer address + transport object)."""
        key = (peer, transport_id)
        known = self._connection_ids.get(key)
        if known is not None:
            return known
        assigned = self._next_connection_id
        self._next_connection_id += 1
        self._connection_ids[key] = assigned
        self.counters.connections += 1
        return assigned

    def next_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def current_exemption(self) -> str | None:
        return self._exempt_reasons[-1] if self._exempt_reasons else None

    @contextmanager
    def expect_invalid_requests(self, reason: str) -> Iterator[None]:
        """Requests recorded inside the block are exempt from request-contract checks."""
        if not reason:
            raise ValueError("expect_invalid_requests: say why the requests are invalid")
        self._exempt_reasons.append(reason)
        try:
            yield
        finally:
            self._exempt_reasons.pop()

    def add(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)
        self.history.append(exchange)
        self.counters.requests[exchange.endpoint or "-"] += 1
        self.counters.statuses[exchange.status or 0] += 1
        if exchange.endpoint == "post_action" and exchange.ip is not None:
            self.counters.posts_per_ip[exchange.ip] += 1
        if exchange.state_changed and exchange.ip is not None:
            self.counters.actions_created_per_ip[exchange.ip] += 1

    def clear(self) -> None:
        """Forget exchanges and counters (``history`` and connection numbering continue)."""
        self.exchanges.clear()
        self.counters = SimCounters()
