"""The control-socket server: a Unix SOCK_STREAM server speaking one JSON object per line.

The OCF agent (run by pacemaker-execd as root) sends a request line and reads a reply line;
a connection may carry several requests, answered in order. ``ControlServer`` owns the
connections: peer-credential checks, input limits, the per-request deadline, reload and a
two-phase close (stop accepting, let in-flight requests finish within a grace, then cancel
them with a reply saying so). The wire vocabulary is ``hafloatd.control.protocol``; the
socket file's creation and removal is ``hafloatd.control.unixsock``; what a request *does*
is the ``ControlHandler``'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from hafloatd.config import ControlConfig
from hafloatd.control import unixsock
from hafloatd.control.exchange import (
    ControlHandler,
    HangUps,
    describe,
    dispatch,
    send_final,
    send_reply,
)
from hafloatd.control.protocol import ControlReply, PeerCred, parse_request
from hafloatd.control.warnlimit import WarningLimiter
from hafloatd.errors import OCF_ERR_ARGS, OCF_ERR_GENERIC, OCF_ERR_PERM, ProtocolError
from hafloatd.metrics import Metrics

log = logging.getLogger("hafloatd.control")

_CLOSE_TIMEOUT_S = 1.0


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
        self._socket_identity: unixsock.SocketIdentity | None = None  # the file we created
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._refusing: set[asyncio.Task[Any]] = set()
        self._closing = False
        # What a client can make the server warn about, limited per peer uid.
        self._warnings = WarningLimiter(metrics)
        self._hang_ups = HangUps()  # closed connections whose client left replies unread

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
        unixsock.check_socket_path(path)
        self._allowed_uids, self._allowed_gids = await asyncio.to_thread(
            unixsock.resolve_peers, config.allowed_users, config.allowed_groups
        )
        group_gid = await asyncio.to_thread(unixsock.resolve_group, config.group)
        await asyncio.to_thread(unixsock.prepare_directory, os.path.dirname(path), group_gid)
        await unixsock.refuse_if_live(path)
        sock, temp_path = await asyncio.to_thread(
            unixsock.bind_private, path, config.mode, group_gid
        )
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connect,
                sock=sock,
                limit=self._line_limit,
                backlog=max(16, config.max_connections),
            )
            self._socket_identity = await asyncio.to_thread(unixsock.publish, temp_path, path)
        except BaseException:
            if self._server is not None:
                self._server.close()
                self._server = None
            sock.close()
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.unlink, temp_path)
            raise
        self._closing = False
        self._warnings.start()
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
            await asyncio.to_thread(unixsock.unlink_if_ours, self._socket_path, identity)
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
        await self._warnings.close()  # and write what was suppressed and not yet summed up
        self._hang_ups.abort_all()
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
        uids, gids = await asyncio.to_thread(
            unixsock.resolve_peers, config.allowed_users, config.allowed_groups
        )
        if self._socket_identity is not None and (
            config.mode != old.mode or config.group != old.group
        ):
            group_gid = await asyncio.to_thread(unixsock.resolve_group, config.group)
            await asyncio.to_thread(
                unixsock.apply_socket_permissions,
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
            peer = _peer_of(writer)
            self._warnings.warn(
                -1 if peer is None else peer.uid,
                "control_connection_rejected",
                "reason=busy pid=%d connections=%d max_connections=%d",
                -1 if peer is None else peer.pid,
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
                "event=control_connection_error pid=%d error=%s", conn.peer_pid, describe(exc)
            )
        finally:
            del self._connections[task]
            if self._metrics is not None:
                self._metrics.control_connections.dec()
            self._hang_ups.hang_up(writer, self._config.read_timeout)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        peer = _peer_of(writer)
        if peer is None or not self.peer_allowed(peer):
            shown = peer or PeerCred(pid=-1, uid=-1, gid=-1)  # -1: no peer credentials
            self._warnings.warn(
                shown.uid,
                "control_peer_denied",
                "pid=%d uid=%d gid=%d allowed_uids=%s allowed_gids=%s",
                shown.pid,
                shown.uid,
                shown.gid,
                _ids(self._allowed_uids),
                _ids(self._allowed_gids),
            )
            self._count("unknown", "denied")
            why = f"peer uid={shown.uid} not allowed" if peer else "peer credentials unavailable"
            await self._send_final(reader, writer, ControlReply.failure(OCF_ERR_PERM, why))
            return
        conn.peer_pid = peer.pid

        while not self._closing:
            conn.busy = False
            conn.op = "unknown"
            last = oversize = False
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
                line, oversize = b"", True  # the stream buffer is full: no newline in sight
            except ConnectionError:
                return
            conn.busy = True
            limit = self._effective_line_limit()
            if oversize or len(line.rstrip(b"\r\n")) > limit:
                self._count("unknown", "invalid")
                self._warnings.warn(
                    peer.uid,
                    "control_request_invalid",
                    "pid=%d uid=%d error='line exceeds %d bytes'",
                    peer.pid,
                    peer.uid,
                    limit,
                )
                await self._send_final(reader, writer, _line_too_long(limit))
                return
            if line.strip():
                reply = await self._answer(line, peer, conn)
                if not await send_reply(writer, reply, self._config.read_timeout):
                    return
            if last:
                return

    async def _answer(self, line: bytes, peer: PeerCred, conn: _Connection) -> ControlReply:
        try:
            request = parse_request(line.strip(), peer)
        except ProtocolError as exc:
            self._count("unknown", "invalid")
            self._warnings.warn(
                peer.uid,
                "control_request_invalid",
                "pid=%d uid=%d error=%r",
                peer.pid,
                peer.uid,
                str(exc),
            )
            return ControlReply.from_error(exc)
        conn.op = request.op
        reply, result = await dispatch(self._handler, request, self._warnings)
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
            self._hang_ups.hang_up(writer, self._config.read_timeout)

    async def _send_final(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: ControlReply
    ) -> None:
        await send_final(
            reader, writer, reply, self._config.read_timeout, 4 * self._effective_line_limit()
        )

    def _effective_line_limit(self) -> int:
        return min(self._line_limit, self._config.max_line_bytes)

    def _count(self, op: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.control_requests_total.labels(op=op, result=result).inc()

    def _reload_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event=control_reload_failed error=%s", describe(task.exception()))


@dataclass
class _Connection:
    busy: bool = False  # a request line has been read and not yet answered
    op: str = "unknown"
    peer_pid: int = -1


def _peer_of(writer: asyncio.StreamWriter) -> PeerCred | None:
    try:
        return PeerCred.from_socket(writer.get_extra_info("socket"))
    except (OSError, AttributeError, struct.error):
        return None


def _line_too_long(limit: int) -> ControlReply:
    return ControlReply.failure(OCF_ERR_ARGS, f"invalid request: line exceeds {limit} bytes")


def _ids(ids: frozenset[int]) -> str:
    return ",".join(str(i) for i in sorted(ids)) or "-"
