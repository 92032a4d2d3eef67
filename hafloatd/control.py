"""The control socket: a Unix SOCK_STREAM server speaking one JSON object per line each way.

The OCF agent (run by pacemaker-execd as root) sends a request line and reads a reply line;
a connection may carry several requests, answered in order. This module owns the wire format
(``parse_request``, ``ControlRequest``, ``ControlReply``) and the server (``ControlServer``):
socket creation and permissions, peer-credential checks, input limits, per-request deadlines
and a two-phase shutdown. What a request *does* is the ``ControlHandler``'s business.

Socket creation never changes the process umask: the socket is bound under a temporary name
inside its 0750 directory, given its mode and group, put into listening state, then renamed
onto the public path, so no client ever sees it with the wrong permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import json
import logging
import os
import pwd
import socket
import stat
import struct
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, get_args

from hafloatd.config import ControlConfig
from hafloatd.deadline import Deadline
from hafloatd.errors import (
    OCF_ERR_ARGS,
    OCF_ERR_GENERIC,
    OCF_ERR_PERM,
    ControlError,
    HafloatdError,
    ProtocolError,
)
from hafloatd.metrics import Metrics
from hafloatd.pacemaker import is_valid_node_name, is_valid_resource_id

log = logging.getLogger("hafloatd.control")

Op = Literal["start", "stop", "monitor", "validate", "status"]
OPS: tuple[str, ...] = get_args(Op)
OPS_NEEDING_IP = frozenset({"start", "stop", "monitor", "validate"})

DEFAULT_DEADLINE_MS = 20_000
MAX_DEADLINE_MS = 3_600_000  # an hour: no Pacemaker operation timeout is longer in practice
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the terminating NUL
MAX_REASON_CHARS = 1000
_PEERCRED_FORMAT = "3i"  # struct ucred: pid, uid, gid
_LIVENESS_TIMEOUT_S = 1.0
_CLOSE_TIMEOUT_S = 1.0
_LINGER_S = 1.0  # how long a turned-away client may take to finish sending
_REQUEST_KEYS = frozenset({"op", "ip", "deadline_ms", "probe", "resource", "node"})
_REPLY_KEYS = ("ok", "ocf", "reason")


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

    def deadline(self) -> Deadline:
        """The instant by which the reply is due, on the monotonic clock."""
        return Deadline(self.received_monotonic + self.deadline_ms / 1000.0)


@dataclass(frozen=True)
class ControlReply:
    """One reply line: ``{"ok": .., "ocf": .., "reason": .., **data}``."""

    ok: bool
    ocf: int
    reason: str = ""
    data: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.ocf, bool) or not isinstance(self.ocf, int) or not 0 <= self.ocf <= 9:
            raise ValueError(f"ControlReply.ocf must be an OCF exit code 0..9, got {self.ocf!r}")

    @classmethod
    def success(cls, reason: str = "", **data: object) -> ControlReply:
        return cls(ok=True, ocf=0, reason=reason, data=data)

    @classmethod
    def failure(cls, ocf: int, reason: str, **data: object) -> ControlReply:
        return cls(ok=False, ocf=ocf, reason=reason, data=data)

    @classmethod
    def from_error(cls, exc: HafloatdError) -> ControlReply:
        """The reply for a HafloatdError: its OCF code and its one-line message."""
        return cls(ok=False, ocf=exc.ocf_code, reason=str(exc) or type(exc).__name__)

    def to_json_line(self) -> bytes:
        payload: dict[str, object] = {
            "ok": self.ok,
            "ocf": self.ocf,
            "reason": _one_line(self.reason),
        }
        payload.update((k, v) for k, v in self.data.items() if k not in _REPLY_KEYS)
        text = json.dumps(payload, separators=(",", ":"), default=str, allow_nan=False)
        return text.encode("utf-8") + b"\n"


class ControlHandler(Protocol):
    """What the server calls for each valid, authorised request (the controller)."""

    async def handle(self, request: ControlRequest) -> ControlReply: ...


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


class ControlServer:
    """The control-socket server; see the module docstring and docs/control-protocol.md."""

    def __init__(
        self,
        config: ControlConfig,
        handler: ControlHandler,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._handler = handler
        self._metrics = metrics
        self._socket_path = config.socket_path
        self._line_limit = config.max_line_bytes  # the StreamReader limit, fixed at start
        self._allowed_uids: frozenset[int] = frozenset()
        self._allowed_gids: frozenset[int] = frozenset()
        self._server: asyncio.Server | None = None
        self._socket_identity: tuple[int, int] | None = None  # (st_dev, st_ino) we created
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._refusing: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def socket_path(self) -> str:
        return self._socket_path

    @property
    def serving(self) -> bool:
        return self._server is not None and not self._closing

    async def start(self) -> None:
        """Create the socket (directory, mode, group), resolve allowed peers, start serving.

        Raises ControlError when the path is unusable or another process is listening on it.
        """
        if self._server is not None:
            return
        config = self._config
        path = self._socket_path
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise ControlError(
                f"control.socket_path {path!r} is {len(os.fsencode(path))} bytes; Unix socket "
                f"paths are limited to {SUN_PATH_MAX}: choose a shorter path"
            )
        if not os.path.isabs(path):
            raise ControlError(f"control.socket_path {path!r} must be an absolute path")
        self._allowed_uids, self._allowed_gids = await asyncio.to_thread(_resolve_peers, config)
        group_gid = await asyncio.to_thread(_resolve_group, config.group)
        await asyncio.to_thread(_prepare_directory, os.path.dirname(path), group_gid)
        await _refuse_if_live(path)
        sock, temp_path = await asyncio.to_thread(_bind_private, path, config.mode, group_gid)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connect,
                sock=sock,
                limit=self._line_limit,
                backlog=max(16, config.max_connections),
            )
            self._socket_identity = await asyncio.to_thread(_publish, temp_path, path)
        except BaseException:
            if self._server is not None:
                self._server.close()
                self._server = None
            sock.close()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.unlink, temp_path)
            raise
        self._closing = False
        log.info(
            "event=control_listening path=%s mode=%04o group=%s allowed_uids=%s allowed_gids=%s "
            "max_connections=%d",
            path,
            config.mode,
            config.group if group_gid is not None else "-",
            _ids(self._allowed_uids),
            _ids(self._allowed_gids),
            config.max_connections,
        )

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting, let in-flight requests finish within ``grace``, then cancel.

        Idle connections (waiting for their next request line) are closed at once. The socket
        file is removed only if it is still the one this server created.
        """
        self._closing = True
        for task in [*self._background, *self._refusing]:
            task.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        identity, self._socket_identity = self._socket_identity, None
        if identity is not None:
            await asyncio.to_thread(_unlink_if_ours, self._socket_path, identity)
        busy: list[asyncio.Task[Any]] = []
        for task, conn in list(self._connections.items()):
            if conn.busy:
                busy.append(task)
            else:
                task.cancel()
        if busy:
            _done, pending = await asyncio.wait(busy, timeout=max(0.0, grace))
            for task in pending:
                log.warning(
                    "event=control_request_cancelled op=%s pid=%d reason='shutdown grace of %gs "
                    "exceeded'",
                    self._connections[task].op if task in self._connections else "-",
                    self._connections[task].peer_pid if task in self._connections else -1,
                    grace,
                )
                task.cancel()
        remaining = [t for t in [*self._connections, *self._refusing] if not t.done()]
        if remaining:
            await asyncio.wait(remaining, timeout=_CLOSE_TIMEOUT_S)
        if self._background:
            await asyncio.wait(self._background, timeout=_CLOSE_TIMEOUT_S)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await server.wait_closed()
        log.info("event=control_closed path=%s", self._socket_path)

    def reconfigure(self, config: ControlConfig) -> None:
        """Apply a reloaded ``control:`` section in the background (see ``reload``)."""
        task = asyncio.get_running_loop().create_task(
            self.reload(config), name="hafloatd-control-reload"
        )
        self._background.add(task)
        task.add_done_callback(self._reload_done)

    async def reload(self, config: ControlConfig) -> None:
        """Apply a reloaded ``control:`` section and wait until it is in force.

        Allowed users/groups, read timeout, connection limit, socket mode and group apply at
        once. ``socket_path`` needs a restart; ``max_line_bytes`` can only be lowered without
        one (the stream buffer limit is set when the socket is created).
        """
        old = self._config
        if config.socket_path != self._socket_path:
            log.warning(
                "event=control_reload_ignored key=control.socket_path new=%s current=%s "
                "reason='a socket path change needs a daemon restart'",
                config.socket_path,
                self._socket_path,
            )
        if config.max_line_bytes > self._line_limit:
            log.warning(
                "event=control_reload_ignored key=control.max_line_bytes new=%d current=%d "
                "reason='raising the line limit needs a daemon restart'",
                config.max_line_bytes,
                self._line_limit,
            )
        uids, gids = await asyncio.to_thread(_resolve_peers, config)
        if self._socket_identity is not None and (
            config.mode != old.mode or config.group != old.group
        ):
            group_gid = await asyncio.to_thread(_resolve_group, config.group)
            await asyncio.to_thread(
                _apply_socket_permissions,
                self._socket_path,
                self._socket_identity,
                config.mode,
                group_gid,
            )
        self._allowed_uids, self._allowed_gids = uids, gids
        self._config = config
        log.info(
            "event=control_reconfigured allowed_uids=%s allowed_gids=%s max_connections=%d "
            "read_timeout_s=%g",
            _ids(uids),
            _ids(gids),
            config.max_connections,
            config.read_timeout,
        )

    def snapshot(self) -> dict[str, object]:
        """The server's state for ``status`` replies."""
        return {
            "socket": self._socket_path,
            "connections": len(self._connections),
            "max_connections": self._config.max_connections,
            "allowed_uids": sorted(self._allowed_uids),
            "allowed_gids": sorted(self._allowed_gids),
        }

    def peer_allowed(self, peer: PeerCred) -> bool:
        return peer.uid in self._allowed_uids or peer.gid in self._allowed_gids

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing:
            await self._refuse(
                reader,
                writer,
                ControlReply.failure(OCF_ERR_GENERIC, "hafloatd is shutting down"),
                "error",
            )
            return
        if len(self._connections) >= self._config.max_connections:
            log.warning(
                "event=control_connection_rejected reason=busy connections=%d max_connections=%d",
                len(self._connections),
                self._config.max_connections,
            )
            await self._refuse(
                reader,
                writer,
                ControlReply.failure(
                    OCF_ERR_GENERIC,
                    f"too many control connections (max {self._config.max_connections}); retry",
                ),
                "busy",
            )
            return
        conn = _Connection()
        self._connections[task] = conn
        if self._metrics is not None:
            self._metrics.control_connections.inc()
        try:
            await self._serve(reader, writer, conn)
        except asyncio.CancelledError:
            if conn.busy:
                # Shutdown outlasted the grace: say so instead of a bare EOF.
                self._count(conn.op, "error")
                with contextlib.suppress(Exception):
                    writer.write(
                        ControlReply.failure(
                            OCF_ERR_GENERIC, "hafloatd shutting down: request cancelled"
                        ).to_json_line()
                    )
            raise
        except Exception as exc:
            log.error(
                "event=control_connection_error pid=%d error=%s", conn.peer_pid, _describe(exc)
            )
        finally:
            del self._connections[task]
            if self._metrics is not None:
                self._metrics.control_connections.dec()
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        try:
            peer = PeerCred.from_socket(writer.get_extra_info("socket"))
        except (OSError, AttributeError, struct.error) as exc:
            log.warning(
                "event=control_peer_denied reason='no peer credentials' error=%s", _describe(exc)
            )
            self._count("unknown", "denied")
            await self._send_final(
                reader,
                writer,
                ControlReply.failure(OCF_ERR_PERM, "peer credentials unavailable"),
            )
            return
        conn.peer_pid = peer.pid
        if not self.peer_allowed(peer):
            log.warning(
                "event=control_peer_denied pid=%d uid=%d gid=%d allowed_uids=%s allowed_gids=%s",
                peer.pid,
                peer.uid,
                peer.gid,
                _ids(self._allowed_uids),
                _ids(self._allowed_gids),
            )
            self._count("unknown", "denied")
            await self._send_final(
                reader,
                writer,
                ControlReply.failure(OCF_ERR_PERM, f"peer uid={peer.uid} not allowed"),
            )
            return

        while not self._closing:
            conn.busy = False
            conn.op = "unknown"
            last = False
            try:
                async with asyncio.timeout(self._config.read_timeout):
                    line = await reader.readuntil(b"\n")
            except TimeoutError:
                log.debug(
                    "event=control_idle_timeout pid=%d read_timeout_s=%g",
                    peer.pid,
                    self._config.read_timeout,
                )
                return
            except asyncio.IncompleteReadError as exc:
                line, last = exc.partial, True  # EOF: serve a final unterminated line
            except asyncio.LimitOverrunError:
                line = b""
                conn.busy = True
                self._count("unknown", "invalid")
                log.warning(
                    "event=control_request_invalid pid=%d uid=%d error='line exceeds %d bytes'",
                    peer.pid,
                    peer.uid,
                    self._effective_line_limit(),
                )
                await self._send_final(reader, writer, _line_too_long(self._effective_line_limit()))
                return
            except ConnectionError:
                return
            conn.busy = True
            if line.strip():
                if len(line.rstrip(b"\r\n")) > self._effective_line_limit():
                    self._count("unknown", "invalid")
                    await self._send_final(
                        reader, writer, _line_too_long(self._effective_line_limit())
                    )
                    return
                reply = await self._answer(line, peer, conn)
                if not await self._send(writer, reply):
                    return
            if last:
                return

    async def _answer(self, line: bytes, peer: PeerCred, conn: _Connection) -> ControlReply:
        try:
            request = parse_request(line.strip(), peer)
        except ProtocolError as exc:
            self._count("unknown", "invalid")
            log.warning(
                "event=control_request_invalid pid=%d uid=%d error=%r", peer.pid, peer.uid, str(exc)
            )
            return ControlReply.from_error(exc)
        conn.op = request.op
        reply, result = await self._dispatch(request)
        self._count(request.op, result)
        level = (
            logging.DEBUG
            if request.op in ("monitor", "status") and result == "ok"
            else logging.INFO
        )
        log.log(
            level,
            "control_request op=%s ip=%s resource=%s probe=%s pid=%d uid=%d ocf=%d result=%s "
            "duration_ms=%d",
            request.op,
            request.ip or "-",
            request.resource or "-",
            request.probe,
            peer.pid,
            peer.uid,
            reply.ocf,
            result,
            round((time.monotonic() - request.received_monotonic) * 1000),
        )
        return reply

    async def _dispatch(self, request: ControlRequest) -> tuple[ControlReply, str]:
        remaining = request.deadline().remaining()
        timeout = asyncio.timeout(remaining)
        try:
            async with timeout:
                # Typed as object: a handler outside mypy's reach may return anything.
                reply: object = await self._handler.handle(request)
        except TimeoutError as exc:
            if timeout.expired():
                return (
                    ControlReply.failure(
                        OCF_ERR_GENERIC,
                        f"deadline exceeded: {request.op} did not finish within "
                        f"{request.deadline_ms} ms",
                    ),
                    "error",
                )
            log.error("event=control_handler_error op=%s error=%s", request.op, _describe(exc))
            return ControlReply.failure(OCF_ERR_GENERIC, f"timeout: {exc or 'no detail'}"), "error"
        except HafloatdError as exc:
            log.warning(
                "event=control_handler_failed op=%s ip=%s ocf=%d error=%r",
                request.op,
                request.ip or "-",
                exc.ocf_code,
                str(exc),
            )
            return ControlReply.from_error(exc), "error"
        except Exception as exc:
            log.error(
                "event=control_handler_error op=%s ip=%s error=%s",
                request.op,
                request.ip or "-",
                _describe(exc),
            )
            return (
                ControlReply.failure(
                    OCF_ERR_GENERIC, f"internal error: {type(exc).__name__}: {exc}"
                ),
                "error",
            )
        if not isinstance(reply, ControlReply):
            log.error(
                "event=control_handler_error op=%s error='handler returned %s'",
                request.op,
                type(reply).__name__,
            )
            return ControlReply.failure(
                OCF_ERR_GENERIC, "internal error: handler gave no reply"
            ), "error"
        return reply, "ok"

    async def _send(self, writer: asyncio.StreamWriter, reply: ControlReply) -> bool:
        try:
            data = reply.to_json_line()
        except (TypeError, ValueError) as exc:
            log.error("event=control_reply_unserialisable error=%s", _describe(exc))
            data = ControlReply.failure(
                OCF_ERR_GENERIC, "internal error: reply not serialisable"
            ).to_json_line()
        try:
            writer.write(data)
            async with asyncio.timeout(self._config.read_timeout):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            return False
        return True

    async def _send_final(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: ControlReply
    ) -> None:
        """Send a last reply, half-close, and let the client finish writing before closing.

        Closing at once would make a client that has not yet sent its request fail with
        EPIPE instead of reading why it was turned away. The wait is short and bounded.
        """
        if not await self._send(writer, reply):
            return
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
        budget = 4 * self._effective_line_limit()
        with contextlib.suppress(TimeoutError, ConnectionError, asyncio.LimitOverrunError):
            async with asyncio.timeout(_LINGER_S):
                while budget > 0:
                    chunk = await reader.read(min(65536, budget))
                    if not chunk:
                        break
                    budget -= len(chunk)

    async def _refuse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        reply: ControlReply,
        result: str,
    ) -> None:
        # Not counted as a connection (it is the over-limit one), but owned: close() cancels it.
        task = asyncio.current_task()
        assert task is not None
        self._refusing.add(task)
        self._count("unknown", result)
        try:
            await self._send_final(reader, writer, reply)
        finally:
            self._refusing.discard(task)
            writer.close()

    def _effective_line_limit(self) -> int:
        return min(self._line_limit, self._config.max_line_bytes)

    def _count(self, op: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.control_requests_total.labels(op=op, result=result).inc()

    def _reload_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event=control_reload_failed error=%s", _describe(task.exception()))


@dataclass
class _Connection:
    busy: bool = False  # a request line has been read and not yet answered
    op: str = "unknown"
    peer_pid: int = -1


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


def _optional_name(obj: Mapping[str, Any], key: str, valid: Any, what: str) -> str | None:
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


def _line_too_long(limit: int) -> ControlReply:
    return ControlReply.failure(OCF_ERR_ARGS, f"invalid request: line exceeds {limit} bytes")


def _one_line(text: str) -> str:
    flat = " ".join(text.split()) if ("\n" in text or "\r" in text) else text
    if len(flat) > MAX_REASON_CHARS:
        flat = flat[: MAX_REASON_CHARS - 3] + "..."
    return flat


def _describe(exc: BaseException | None) -> str:
    """``Type: message at file.py:123`` — one line, the innermost frame for bugs."""
    if exc is None:
        return "None"
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        where = f" at {os.path.basename(last.filename)}:{last.lineno}"
    return repr(f"{type(exc).__name__}: {exc}{where}")


def _ids(ids: frozenset[int]) -> str:
    return ",".join(str(i) for i in sorted(ids)) or "-"


# Everything below runs in a worker thread (asyncio.to_thread): NSS lookups and filesystem
# calls may block.


def _resolve_peers(config: ControlConfig) -> tuple[frozenset[int], frozenset[int]]:
    uids: set[int] = set()
    for user in config.allowed_users:
        uid = _lookup_id(user, "control.allowed_users", lambda n: pwd.getpwnam(n).pw_uid)
        if uid is not None:
            uids.add(uid)
    gids: set[int] = set()
    for group in config.allowed_groups:
        gid = _lookup_id(group, "control.allowed_groups", lambda n: grp.getgrnam(n).gr_gid)
        if gid is not None:
            gids.add(gid)
    if not uids and not gids:
        log.warning(
            "event=control_no_allowed_peers reason='no allowed user or group resolved: every "
            "client will be refused' hint='set control.allowed_users'"
        )
    elif 0 not in uids:
        log.warning(
            "event=control_root_not_allowed hint='pacemaker-execd runs the OCF agent as root; add "
            "root to control.allowed_users'"
        )
    return frozenset(uids), frozenset(gids)


def _lookup_id(name: str | int, key: str, lookup: Any) -> int | None:
    if isinstance(name, int):
        return name
    if name.isdigit():
        return int(name)
    try:
        return int(lookup(name))
    except KeyError:
        log.warning("event=control_unknown_name key=%s name=%s action=skipped", key, name)
        return None


def _resolve_group(group: str | None) -> int | None:
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning(
            "event=control_group_missing group=%s action='socket keeps the daemon group' "
            "hint='create the group or set control.group'",
            group,
        )
        return None


def _prepare_directory(directory: str, group_gid: int | None) -> None:
    try:
        os.mkdir(directory, 0o750)
    except FileExistsError:
        st = os.stat(directory)
        if not stat.S_ISDIR(st.st_mode):
            raise ControlError(
                f"{directory} exists and is not a directory: fix control.socket_path"
            ) from None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o002 and not mode & stat.S_ISVTX:
            raise ControlError(
                f"socket directory {directory} is world-writable (mode {mode:04o}): anyone "
                f"could replace the socket; use a 0750 directory"
            ) from None
        if mode & 0o007:
            log.warning(
                "event=control_dir_open path=%s mode=%04o hint='expected 0750'", directory, mode
            )
        return
    except FileNotFoundError:
        raise ControlError(
            f"cannot create socket directory {directory}: its parent does not exist"
        ) from None
    except PermissionError:
        raise ControlError(
            f"cannot create socket directory {directory}: permission denied (run as root or "
            f"create it with RuntimeDirectory=)"
        ) from None
    os.chmod(directory, 0o750)  # noqa: S103  (group may traverse; mkdir's mode is umasked)
    if group_gid is not None:
        _chown_group(directory, group_gid)
    log.info("event=control_dir_created path=%s mode=0750", directory)


def _bind_private(path: str, mode: int, group_gid: int | None) -> tuple[socket.socket, str]:
    directory, name = os.path.split(path)
    temp_path = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    if len(os.fsencode(temp_path)) > SUN_PATH_MAX:
        temp_path = os.path.join(directory, f".h{os.getpid()}")
    if len(os.fsencode(temp_path)) > SUN_PATH_MAX:
        raise ControlError(
            f"control.socket_path directory {directory!r} is too long for a Unix socket: "
            f"choose a shorter path"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp_path)  # left by an earlier run that crashed with the same pid
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(temp_path)
        os.chmod(temp_path, mode)
        if group_gid is not None:
            _chown_group(temp_path, group_gid)
        sock.setblocking(False)
    except BaseException as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        if isinstance(exc, OSError):
            raise ControlError(
                f"cannot create control socket in {directory}: {exc.strerror}"
            ) from None
        raise
    return sock, temp_path


def _publish(temp_path: str, path: str) -> tuple[int, int]:
    os.rename(temp_path, path)  # atomic: replaces a stale socket, never exposes a half-made one
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _apply_socket_permissions(
    path: str, identity: tuple[int, int], mode: int, group_gid: int | None
) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        log.warning(
            "event=control_socket_missing path=%s hint='restart hafloatd to recreate it'", path
        )
        return
    if (st.st_dev, st.st_ino) != identity:
        log.warning("event=control_socket_replaced path=%s action='permissions not changed'", path)
        return
    os.chmod(path, mode)
    if group_gid is not None:
        _chown_group(path, group_gid)


def _chown_group(path: str, gid: int) -> None:
    if os.stat(path).st_gid == gid:
        return  # already right (under the unit, Group=haclient): chown is filtered there
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        log.warning(
            "event=control_chgrp_failed path=%s gid=%d reason='permission denied' "
            "hint='run as root or as a member of the group'",
            path,
            gid,
        )


def _unlink_if_ours(path: str, identity: tuple[int, int]) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) != identity:
        log.info("event=control_socket_kept path=%s reason='replaced by another process'", path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _refuse_if_live(path: str) -> None:
    try:
        st = await asyncio.to_thread(os.lstat, path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(
            f"{path} exists and is not a socket: remove it or set control.socket_path"
        )
    try:
        async with asyncio.timeout(_LIVENESS_TIMEOUT_S):
            _reader, writer = await asyncio.open_unix_connection(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("event=control_socket_stale path=%s action=replacing", path)
        return
    except TimeoutError:
        raise ControlError(
            f"{path} accepts connections but does not complete them: another hafloatd may be "
            f"running; stop it or set control.socket_path"
        ) from None
    except OSError as exc:
        raise ControlError(f"cannot check existing socket {path}: {exc.strerror}") from None
    try:
        peer = PeerCred.from_socket(writer.get_extra_info("socket"))
        who = f"pid={peer.pid}"
    except (OSError, AttributeError, struct.error):
        who = "pid unknown"
    finally:
        writer.close()
    raise ControlError(
        f"another process ({who}) is listening on {path}: stop the other hafloatd or set "
        f"control.socket_path"
    )
