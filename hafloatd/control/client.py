"""A small client for the control socket, for ``hafloatd status``, tools and tests.

``request`` (async) and ``request_sync`` (blocking, for the CLI only: never call it from the
daemon's loop) send one JSON request line and return the decoded reply object.
``ControlConnection`` keeps one connection open for several requests. Failures raise
ControlError with a message that says what to do. The OCF agent has its own stdlib-only
client; this module is the reference for the wire format in docs/control-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from hafloatd.errors import ControlError

DEFAULT_SOCKET = "/run/hafloatd/control.sock"
DEFAULT_GROUP = "haclient"
# A reply carries a status snapshot at most; bounded so a confused peer cannot fill memory.
MAX_REPLY_BYTES = 4 << 20


async def request(
    socket_path: str,
    payload: Mapping[str, object],
    timeout: float,
    *,
    group: str = DEFAULT_GROUP,
) -> dict[str, Any]:
    """Send ``payload`` and return the reply object; everything within ``timeout`` seconds."""
    budget = asyncio.timeout(timeout)
    try:
        async with budget, ControlConnection(socket_path, group=group) as conn:
            return await conn.request(payload)
    except TimeoutError:
        if budget.expired():
            raise _timeout_error(socket_path, timeout) from None
        raise


class ControlConnection:
    """One connection to the control socket; requests are answered in order."""

    def __init__(self, socket_path: str, *, group: str = DEFAULT_GROUP) -> None:
        self.socket_path = socket_path
        self._group = group
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> ControlConnection:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.socket_path, limit=MAX_REPLY_BYTES
            )
        except OSError as exc:
            raise _connect_error(self.socket_path, exc, self._group) from None

    async def request(self, payload: Mapping[str, object]) -> dict[str, Any]:
        try:
            await self.send_line(_encode(payload))
        except ControlError as send_error:
            # A daemon that turns us away (peer not allowed, too busy) may have replied and
            # closed before our request went out: its reply says why, so prefer it.
            try:
                return await self.read_reply()
            except ControlError:
                raise send_error from None
        return await self.read_reply()

    async def send_line(self, line: bytes) -> None:
        """Send raw bytes (a newline is added if missing): for tests of malformed input."""
        writer = self._require_writer()
        try:
            writer.write(line if line.endswith(b"\n") else line + b"\n")
            await writer.drain()
        except OSError as exc:
            raise ControlError(
                f"hafloatd closed the connection on {self.socket_path} while sending: "
                f"{exc.strerror or exc}"
            ) from None

    async def read_reply(self) -> dict[str, Any]:
        reader = self._require_reader()
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ControlError(
                    f"hafloatd closed the connection on {self.socket_path} without a reply "
                    f"(see journalctl -u hafloatd)"
                ) from None
            line = exc.partial
        except asyncio.LimitOverrunError:
            raise ControlError(f"reply from hafloatd exceeds {MAX_REPLY_BYTES} bytes") from None
        except OSError as exc:
            raise ControlError(
                f"connection to hafloatd on {self.socket_path} failed: {exc.strerror or exc}"
            ) from None
        return _decode(line)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        self._reader = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    def _require_writer(self) -> asyncio.StreamWriter:
        if self._writer is None:
            raise ControlError("control connection is not open: call connect() first")
        return self._writer

    def _require_reader(self) -> asyncio.StreamReader:
        if self._reader is None:
            raise ControlError("control connection is not open: call connect() first")
        return self._reader


def request_sync(
    socket_path: str,
    payload: Mapping[str, object],
    timeout: float,
    *,
    group: str = DEFAULT_GROUP,
) -> dict[str, Any]:
    """Blocking twin of ``request`` for command-line use (never inside the daemon)."""
    deadline = time.monotonic() + timeout
    line = _encode(payload) + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except TimeoutError:
            raise _timeout_error(socket_path, timeout) from None
        except OSError as exc:
            raise _connect_error(socket_path, exc, group) from None
        buffer = bytearray()
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # Turned away before we sent: the daemon's reply is still ours to read.
                sock.sendall(line)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                if len(buffer) > MAX_REPLY_BYTES:
                    raise ControlError(f"reply from hafloatd exceeds {MAX_REPLY_BYTES} bytes")
        except TimeoutError:
            raise _timeout_error(socket_path, timeout) from None
        except OSError as exc:
            raise ControlError(
                f"connection to hafloatd on {socket_path} failed: {exc.strerror or exc}"
            ) from None
    if not buffer:
        raise ControlError(
            f"hafloatd closed the connection on {socket_path} without a reply "
            f"(see journalctl -u hafloatd)"
        )
    return _decode(bytes(buffer).split(b"\n", 1)[0])


def _timeout_error(socket_path: str, timeout: float) -> ControlError:
    return ControlError(
        f"no reply from hafloatd on {socket_path} within {timeout:g}s: is it "
        f"overloaded or stuck? (journalctl -u hafloatd)"
    )


def _encode(payload: Mapping[str, object]) -> bytes:
    try:
        return json.dumps(dict(payload), separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ControlError(f"cannot encode control request: {exc}") from None


def _decode(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError(
            f"garbled reply from hafloatd: {line[:120]!r}; is something else listening on "
            f"the socket?"
        ) from None
    if not isinstance(obj, dict) or "ok" not in obj or "ocf" not in obj:
        raise ControlError(
            f"unexpected reply from hafloatd: {line[:120]!r}; is something else listening on "
            f"the socket?"
        )
    return obj


def _connect_error(socket_path: str, exc: OSError, group: str) -> ControlError:
    if exc.errno == errno.ENOENT:
        return ControlError(
            f"control socket {socket_path} does not exist: is hafloatd running? "
            f"(systemctl status hafloatd)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ControlError(
            f"permission denied on {socket_path} for uid {os.geteuid()}: run as root or as a "
            f"member of {group}"
        )
    if exc.errno == errno.ECONNREFUSED:
        return ControlError(
            f"nothing is listening on {socket_path} (stale socket): is hafloatd running? "
            f"(systemctl status hafloatd)"
        )
    if exc.errno in (errno.ENOTDIR, errno.ENOTSOCK):
        return ControlError(f"{socket_path} is not a socket: check the socket path")
    return ControlError(f"cannot connect to {socket_path}: {exc.strerror or exc}")
