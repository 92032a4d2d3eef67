"""The control protocol's vocabulary: requests, replies and the limits on them.

``parse_request`` turns one request line into a ``ControlRequest`` (or a ProtocolError saying
what is wrong); ``ControlReply`` is what every operation answers and how it goes on the wire.
This module is a leaf (stdlib, ``hafloatd.errors``, ``hafloatd.deadline``): the controller
builds its replies from it and ``hafloatd.pacemaker`` checks names with it, without pulling in
the server. The wire format is described in docs/control-protocol.md.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from hafloatd.deadline import Deadline
from hafloatd.errors import OCF_SUCCESS, HafloatdError, ProtocolError
from hafloatd.logs import one_line

Op = Literal["start", "stop", "monitor", "validate", "status"]
OPS: tuple[str, ...] = get_args(Op)
OPS_NEEDING_IP = frozenset({"start", "stop", "monitor", "validate"})

DEFAULT_DEADLINE_MS = 20_000
MAX_DEADLINE_MS = 3_600_000  # an hour: no Pacemaker operation timeout is longer in practice
MAX_REASON_CHARS = 1000
MAX_NAME_CHARS = 255
_PEERCRED_FORMAT = "3i"  # struct ucred: pid, uid, gid
_REPLY_KEYS = ("ok", "ocf", "reason")

# A resource id is an XML ID (NCName); a clone instance adds ":N" (OCF_RESOURCE_INSTANCE).
_RESOURCE_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*(?::[0-9]+)?")
# Node names are host names or corosync ``name:`` entries: they may start with a digit,
# never with "-" (it would be read as an option when the name reaches crm_resource's argv).
_NODE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class PeerCred:
    """The connecting process as the kernel saw it at ``connect()`` (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def from_socket(cls, sock: Any) -> PeerCred:
        """Read ``SO_PEERCRED`` from a socket (or asyncio/uvloop transport socket)."""
        raw = sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_PEERCRED_FORMAT)
        )
        pid, uid, gid = struct.unpack(_PEERCRED_FORMAT, raw)
        return cls(pid=pid, uid=uid, gid=gid)


@dataclass(frozen=True)
class ControlRequest:
    """One validated request. ``received_monotonic`` anchors ``deadline_ms``."""

    op: Op
    ip: str | None
    deadline_ms: int
    probe: bool
    resource: str | None
    node: str | None
    peer: PeerCred
    received_monotonic: float = field(default_factory=time.monotonic, compare=False)

    def deadline(self, margin_s: float = 0.0) -> Deadline:
        """When the reply is due (monotonic clock), less ``margin_s`` kept for sending it.

        Always measured from receipt, so time spent queueing counts against the budget.
        """
        return Deadline(self.received_monotonic + max(0.0, self.deadline_ms / 1000.0 - margin_s))


@dataclass(frozen=True)
class ControlReply:
    """What an operation answers: an OCF exit code, a reason for humans, extra reply fields.

    On the wire: ``{"ok": .., "ocf": .., "reason": .., **data}``; ``ok`` is ``ocf == 0``.
    """

    ocf: int
    reason: str = ""
    data: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.ocf, bool) or not isinstance(self.ocf, int) or not 0 <= self.ocf <= 9:
            raise ValueError(f"ControlReply.ocf must be an OCF exit code 0..9, got {self.ocf!r}")

    @property
    def ok(self) -> bool:
        return self.ocf == OCF_SUCCESS

    @classmethod
    def success(cls, reason: str = "", **data: object) -> ControlReply:
        return cls(OCF_SUCCESS, reason, data)

    @classmethod
    def failure(cls, ocf: int, reason: str, **data: object) -> ControlReply:
        if ocf == OCF_SUCCESS:
            raise ValueError("ControlReply.failure needs a failing OCF code; use success()")
        return cls(ocf, reason, data)

    @classmethod
    def from_error(cls, exc: HafloatdError) -> ControlReply:
        """The reply for a HafloatdError: its OCF code and its one-line message."""
        return cls(exc.ocf_code, str(exc) or type(exc).__name__)

    def to_json_line(self) -> bytes:
        payload: dict[str, object] = {
            "ok": self.ok,
            "ocf": self.ocf,
            "reason": one_line(self.reason, limit=MAX_REASON_CHARS),
        }
        payload.update((k, v) for k, v in self.data.items() if k not in _REPLY_KEYS)
        text = json.dumps(payload, separators=(",", ":"), default=str, allow_nan=False)
        return text.encode("utf-8") + b"\n"


def parse_request(line: bytes, peer: PeerCred) -> ControlRequest:
    """Validate one request line; raise ProtocolError (OCF_ERR_ARGS) saying what is wrong.

    Unknown keys are ignored so an agent newer than the daemon keeps working.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("invalid request: not valid UTF-8") from None
    try:
        obj = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _DuplicateKey as exc:
        raise ProtocolError(f"invalid request: duplicate key {exc.key!r}") from None
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ProtocolError(f"invalid request: not a JSON object ({detail})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"invalid request: expected a JSON object, got {_json_type(obj)}")

    op = obj.get("op")
    if not isinstance(op, str) or op not in OPS:
        shown = repr(op) if isinstance(op, str) else _json_type(op)
        raise ProtocolError(
            f"invalid request: unknown op {shown[:64]}; expected one of {', '.join(OPS)}"
        )

    ip = obj.get("ip")
    if ip is not None:
        if not isinstance(ip, str):
            raise ProtocolError(f"invalid request: ip must be a string, got {_json_type(ip)}")
        try:
            ip = str(ipaddress.IPv4Address(ip))
        except ValueError:
            raise ProtocolError(f"invalid request: ip {ip[:64]!r} is not an IPv4 address") from None
    elif op in OPS_NEEDING_IP:
        raise ProtocolError(f"invalid request: op {op} needs an ip")

    deadline_ms = obj.get("deadline_ms")
    if deadline_ms is None:
        deadline_ms = DEFAULT_DEADLINE_MS
    elif isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int):
        raise ProtocolError(
            f"invalid request: deadline_ms must be an integer, got {_json_type(deadline_ms)}"
        )
    elif deadline_ms < 0:
        raise ProtocolError(f"invalid request: deadline_ms must be >= 0, got {deadline_ms}")
    elif deadline_ms > MAX_DEADLINE_MS:
        raise ProtocolError(
            f"invalid request: deadline_ms must be <= {MAX_DEADLINE_MS}, got {deadline_ms}"
        )

    probe = obj.get("probe", False)
    if probe is None:
        probe = False
    if not isinstance(probe, bool):
        raise ProtocolError(
            f"invalid request: probe must be true or false, got {_json_type(probe)}"
        )

    resource = _optional_name(obj, "resource", is_valid_resource_id, "a Pacemaker resource id")
    node = _optional_name(obj, "node", is_valid_node_name, "a Pacemaker node name")
    return ControlRequest(
        op=cast(Op, op),
        ip=ip,
        deadline_ms=deadline_ms,
        probe=probe,
        resource=resource,
        node=node,
        peer=peer,
    )


def is_valid_resource_id(name: str) -> bool:
    """True when ``name`` is a Pacemaker resource id (optionally with a clone suffix)."""
    return len(name) <= MAX_NAME_CHARS and _RESOURCE_ID_RE.fullmatch(name) is not None


def is_valid_node_name(name: str) -> bool:
    """True when ``name`` is a plausible Pacemaker node name (host-name characters)."""
    return len(name) <= MAX_NAME_CHARS and _NODE_NAME_RE.fullmatch(name) is not None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _optional_name(
    obj: Mapping[str, Any], key: str, valid: Callable[[str], bool], what: str
) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"invalid request: {key} must be a string, got {_json_type(value)}")
    if not valid(value):
        raise ProtocolError(f"invalid request: {key} {value[:64]!r} is not {what}")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
