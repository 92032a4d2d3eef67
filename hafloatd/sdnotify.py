"""sd_notify for a Type=notify service: readiness, status, reload, stop and the watchdog.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace). The socket is
non-blocking: a send never stalls the event loop; a datagram the manager cannot take right
now (EAGAIN) is dropped with a log line, because the next status or watchdog ping supersedes
it. Without ``$NOTIFY_SOCKET`` (run by hand, under a test) every call is a no-op.

The watchdog (``WatchdogSec=`` in the unit) is fed by ``run_watchdog``, a coroutine on the
daemon's own loop: if the loop wedges, pings stop and systemd kills and restarts the daemon.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from hafloatd.logs import one_line

__all__ = ["SdNotifier"]

log = logging.getLogger("hafloatd.sdnotify")

# STATUS= is shown by `systemctl status`; one short line is all it can usefully hold.
MAX_STATUS_CHARS = 512


class SdNotifier:
    """Talks to the service manager; every method is safe to call when it is absent."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _parse_notify_socket(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = _parse_watchdog_usec(env.get("WATCHDOG_USEC"))
        self._watchdog_pid = _parse_watchdog_pid(env.get("WATCHDOG_PID"))
        self._sock: socket.socket | None = None
        if self._address is not None:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            except OSError as exc:
                log.warning(
                    "event=sd_notify_disabled reason=socket_failed errno=%s",
                    _errno_name(exc),
                )
                self._sock = None
        self.enabled: bool = self._sock is not None

    def __repr__(self) -> str:
        return f"SdNotifier(enabled={self.enabled}, watchdog_s={self.watchdog_interval()})"

    def __enter__(self) -> SdNotifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the messages -------------------------------------------------------------------

    def ready(self, status: str | None = None) -> None:
        """READY=1: startup is complete (or a reload finished); optionally a new STATUS."""
        fields = ["READY=1"]
        if status is not None:
            fields.append("STATUS=" + one_line(status, limit=MAX_STATUS_CHARS))
        self._send(fields)

    def status(self, text: str) -> None:
        """STATUS=: the one-line state shown by ``systemctl status``."""
        self._send(["STATUS=" + one_line(text, limit=MAX_STATUS_CHARS)])

    def reloading(self) -> None:
        """RELOADING=1 with MONOTONIC_USEC= (required by Type=notify-reload, harmless before).

        Follow it with ``ready()`` once the new configuration is in force (or rejected).
        """
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(["RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}"])

    def stopping(self) -> None:
        """STOPPING=1: shutdown has begun."""
        self._send(["STOPPING=1"])

    def watchdog_ping(self) -> None:
        """WATCHDOG=1: the service is alive; systemd restarts it if these stop."""
        self._send(["WATCHDOG=1"])

    # -- the watchdog ------------------------------------------------------------------

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``), None when the watchdog is off.

        Off means: no notify socket, no or invalid ``WATCHDOG_USEC``, or ``WATCHDOG_PID``
        naming another process (the variables were inherited, not meant for us).
        """
        if self._address is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    async def run_watchdog(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping every ``watchdog_interval()`` while ``healthy()`` says so; runs until cancelled.

        The daemon owns this task and cancels it on shutdown. Because the pings come from
        the event loop itself, a blocked loop stops them; ``healthy`` adds what the loop
        cannot see (a dead controller task...). A ``healthy`` that raises counts as unhealthy.
        Returns at once when the watchdog is off.
        """
        interval_s = self.watchdog_interval()
        if interval_s is None or not self.enabled:
            log.debug("event=watchdog_off")
            return
        log.info("event=watchdog_on interval_s=%.3f", interval_s)
        loop = asyncio.get_running_loop()
        withheld = False
        last_tick = loop.time()
        while True:
            now = loop.time()
            # A tick far later than planned means the loop was blocked: log it, so stalls
            # that came close to WatchdogSec (and may end in SIGABRT next time) are visible.
            lag_s = now - last_tick - interval_s
            if lag_s > interval_s / 2:
                log.warning("event=watchdog_late lag_s=%.3f interval_s=%.3f", lag_s, interval_s)
            if _is_healthy(healthy):
                if withheld:
                    log.warning("event=watchdog_resumed")
                    withheld = False
                self.watchdog_ping()
            elif not withheld:
                log.error("event=watchdog_withheld reason=unhealthy")
                withheld = True
            last_tick = now
            await asyncio.sleep(interval_s)

    def close(self) -> None:
        """Close the socket; later calls are no-ops. Idempotent."""
        sock, self._sock = self._sock, None
        self.enabled = False
        if sock is not None:
            sock.close()

    # -- internals ---------------------------------------------------------------------

    def _send(self, fields: list[str]) -> bool:
        sock, address = self._sock, self._address
        if sock is None or address is None:
            return False
        payload = ("\n".join(fields) + "\n").encode("utf-8", "replace")
        keys = ",".join(field.partition("=")[0] for field in fields)
        try:
            # sendto every time rather than connect once: the manager may re-create the
            # socket (daemon-reexec) and an address keeps working where a connection would not.
            sock.sendto(payload, address)
        except BlockingIOError:
            log.warning("event=sd_notify_dropped reason=EAGAIN keys=%s", keys)
            return False
        except OSError as exc:
            log.warning("event=sd_notify_failed keys=%s errno=%s", keys, _errno_name(exc))
            return False
        return True


def _is_healthy(healthy: Callable[[], bool] | None) -> bool:
    if healthy is None:
        return True
    try:
        return bool(healthy())
    except Exception as exc:
        log.error("event=watchdog_health_check_failed error=%s", type(exc).__name__)
        return False


def _parse_notify_socket(value: str | None) -> bytes | None:
    """The socket address from ``$NOTIFY_SOCKET``: an absolute path or ``@abstract``."""
    if not value:
        return None
    if value.startswith("@"):
        if len(value) == 1:
            log.warning("event=sd_notify_disabled reason=empty_abstract_name")
            return None
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    # vsock: (systemd 253+ in VMs) and relative paths are not for a host daemon.
    log.warning("event=sd_notify_disabled reason=unsupported_address address=%r", value)
    return None


def _parse_watchdog_usec(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        usec = int(value, 10)
    except ValueError:
        log.warning("event=watchdog_off reason=invalid_WATCHDOG_USEC value=%r", value)
        return None
    if usec <= 0:
        log.warning("event=watchdog_off reason=invalid_WATCHDOG_USEC value=%r", value)
        return None
    return usec


def _parse_watchdog_pid(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        pid = int(value, 10)
    except ValueError:
        pid = -1
    if pid <= 0:
        # A garbled WATCHDOG_PID cannot be ours: treat it as another process's.
        log.warning("event=watchdog_off reason=invalid_WATCHDOG_PID value=%r", value)
        return -1
    return pid


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__
