"""One request's answer: the handler call under the request's deadline, and writing replies.

``dispatch`` runs a parsed request through the handler within the request's own deadline
(fixed when the request was received) and makes up the reply when the handler overruns,
raises or returns something that is not a reply. ``send_reply`` writes a reply line with a
bounded drain; ``send_final`` is the last reply before the server turns a client away;
``HangUps`` closes connections, and aborts those whose client leaves its replies unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from hafloatd import logs
from hafloatd.control.protocol import ControlReply, ControlRequest
from hafloatd.control.warnlimit import WarningLimiter
from hafloatd.errors import OCF_ERR_GENERIC, HafloatdError

log = logging.getLogger("hafloatd.control")

_LINGER_S = 1.0  # how long a turned-away client may take to finish sending


class ControlHandler(Protocol):
    """What the server calls for each valid, authorised request (the daemon)."""

    async def handle(self, request: ControlRequest) -> ControlReply: ...


async def dispatch(
    handler: ControlHandler, request: ControlRequest, warnings: WarningLimiter
) -> tuple[ControlReply, str]:
    """The handler's reply and ``"ok"``, or a reply made up here and ``"error"``.

    A handler's ``HafloatdError`` is a warning, through ``warnings`` (limited per peer uid)."""
    timeout = asyncio.timeout(request.deadline().remaining())
    try:
        async with timeout:
            # Typed as object: a handler outside mypy's reach may return anything.
            reply: object = await handler.handle(request)
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
        log.error("event=control_handler_error op=%s error=%s", request.op, describe(exc))
        return ControlReply.failure(OCF_ERR_GENERIC, f"timeout: {exc or 'no detail'}"), "error"
    except HafloatdError as exc:
        warnings.warn(
            request.peer.uid,
            "control_handler_failed",
            "op=%s ip=%s ocf=%d error=%r",
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
            describe(exc),
        )
        return (
            ControlReply.failure(OCF_ERR_GENERIC, f"internal error: {type(exc).__name__}: {exc}"),
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


async def send_reply(writer: asyncio.StreamWriter, reply: ControlReply, timeout_s: float) -> bool:
    """Write one reply line; False when the client has gone or stopped reading."""
    try:
        data = reply.to_json_line()
    except (TypeError, ValueError) as exc:
        log.error("event=control_reply_unserialisable error=%s", describe(exc))
        data = ControlReply.failure(
            OCF_ERR_GENERIC, "internal error: reply not serialisable"
        ).to_json_line()
    try:
        writer.write(data)
        async with asyncio.timeout(timeout_s):
            await writer.drain()
    except (ConnectionError, TimeoutError):
        return False
    return True


async def send_final(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    reply: ControlReply,
    timeout_s: float,
    discard_bytes: int,
) -> None:
    """Send a last reply, half-close, and let the client finish writing before closing.

    Closing at once would make a client that has not yet sent its request fail with
    EPIPE instead of reading why it was turned away. The wait is short, and at most
    ``discard_bytes`` of what the client still sends are read (and dropped).
    """
    if not await send_reply(writer, reply, timeout_s):
        return
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError, asyncio.LimitOverrunError):
        async with asyncio.timeout(_LINGER_S):
            while discard_bytes > 0:
                chunk = await reader.read(min(65536, discard_bytes))
                if not chunk:
                    break
                discard_bytes -= len(chunk)


class HangUps:
    """Closes connections; one whose client has not read every reply is aborted after a grace.

    ``StreamWriter.close()`` alone waits until the unread replies are written, which is
    forever for a client that pipelines requests and never reads: the server no longer counts
    the connection (max_connections), yet its socket stays open, an fd per such client.
    """

    def __init__(self) -> None:
        self._unread: dict[asyncio.WriteTransport, asyncio.TimerHandle] = {}

    def hang_up(self, writer: asyncio.StreamWriter, grace_s: float) -> None:
        """Close ``writer``; abort it ``grace_s`` later if replies are still unread then."""
        writer.close()
        transport = writer.transport
        if transport.get_write_buffer_size() == 0:
            return

        def abort() -> None:
            self._unread.pop(transport, None)
            transport.abort()

        self._unread[transport] = asyncio.get_running_loop().call_later(grace_s, abort)

    def abort_all(self) -> None:
        """Abort every connection still waiting for its client to read (at shutdown)."""
        unread, self._unread = self._unread, {}
        for transport, handle in unread.items():
            handle.cancel()
            transport.abort()


def describe(exc: BaseException | None) -> str:
    """``'Type: message at file.py:123'``, quoted for a log value: the innermost frame for bugs."""
    return "None" if exc is None else repr(logs.describe(exc, where=True))
