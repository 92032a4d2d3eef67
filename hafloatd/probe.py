"""Health probe of the local web server: HTTP GET, rise/fall like keepalived and HAProxy.

One owned background task runs a check every ``interval`` seconds, measured start-to-start on
the loop clock so the schedule never drifts; a check that overruns skips the slots it missed
rather than bunching checks together. Each check opens a fresh connection (the connector
force-closes after every response): a probe must notice a listener that died or stopped
accepting, which a pooled keep-alive connection can hide. Redirects are not followed (a 301 is
judged as a 301) and proxy environment variables are ignored.

    UNKNOWN --rise ok--> UP --fall failed--> DOWN --rise ok--> UP
    UNKNOWN --fall failed--> DOWN

Every transition logs one line, counts in ``probe_transitions_total{to}``, sets ``probe_up``
(1 up, 0 down, -1 unknown) and calls ``on_change(old, new)`` synchronously. The loop never
blocks and never dies: an unexpected exception is logged and counted as a failed check.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from hafloatd import __version__
from hafloatd.config import HealthConfig
from hafloatd.httpio import read_limited
from hafloatd.logs import kv
from hafloatd.metrics import Metrics

log = logging.getLogger("hafloatd.probe")

# Enough for any health page; a probe never buffers an unbounded body.
MAX_BODY_BYTES = 1 << 20
_STOP_TIMEOUT_S = 2.0


class HealthState(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one HTTP check."""

    ok: bool
    duration_s: float
    status: int | None = None
    error: str | None = None


class HealthProbe:
    """Runs the health checks and holds the rise/fall state."""

    def __init__(
        self,
        config: HealthConfig,
        *,
        metrics: Metrics | None = None,
        on_change: Callable[[HealthState, HealthState], None] | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._on_change = on_change
        self.state = HealthState.UNKNOWN
        self.consecutive_ok = 0
        self.consecutive_fail = 0
        self.last_error: str | None = None
        self.last_status: int | None = None
        self.last_duration_s: float | None = None
        self.last_check_monotonic: float | None = None
        self.last_transition_monotonic: float | None = None
        self.checks_total = 0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._reanchor = False
        self._cycle_start = 0.0
        if metrics is not None:
            metrics.probe_up.set(-1)

    @property
    def config(self) -> HealthConfig:
        return self._config

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The check loop, once started: the daemon supervises it (a loop that dies is a bug)."""
        return self._task

    async def start(self) -> None:
        """Open the probe's own HTTP session and start the check loop (idempotent)."""
        if self.running:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=2),
            headers={"User-Agent": f"hafloatd-probe/{__version__}"},
            trust_env=False,  # never route a loopback health check through $http_proxy
            raise_for_status=False,
        )
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="hafloatd-health-probe"
        )
        log.info(
            "event=probe_started url=%s interval_s=%g timeout_s=%g rise=%d fall=%d",
            self._config.url,
            self._config.interval,
            self._config.timeout,
            self._config.rise,
            self._config.fall,
        )

    async def stop(self) -> None:
        """Cancel the loop and close the session, within a bounded time."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel("probe stopping")
            done, _pending = await asyncio.wait({task}, timeout=_STOP_TIMEOUT_S)
            if not done:
                log.error("event=probe_stop_timeout waited_s=%g", _STOP_TIMEOUT_S)
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await session.close()
        log.info("event=probe_stopped state=%s", self.state.value)

    def reconfigure(self, config: HealthConfig) -> None:
        """Apply a reloaded ``health:`` section from the next check on.

        The state and counters are kept (a reload is not evidence about health); a new
        interval is re-anchored on the start of the current cycle, so shortening it takes
        effect at once rather than after the old, longer wait.
        """
        if config == self._config:
            return
        old = self._config
        self._config = config
        log.info(
            "event=probe_reconfigured url=%s interval_s=%g timeout_s=%g rise=%d fall=%d",
            config.url,
            config.interval,
            config.timeout,
            config.rise,
            config.fall,
        )
        if config.interval != old.interval:
            self._reanchor = True
            self._wake.set()

    async def check_once(self) -> CheckResult:
        """Run one HTTP check now (does not touch the rise/fall state)."""
        session = self._session
        if session is None:
            raise RuntimeError("HealthProbe.check_once() needs start() first")
        return await _http_check(session, self._config)

    def snapshot(self) -> dict[str, object]:
        """The probe's state for ``status`` replies (JSON-ready)."""
        now = time.monotonic()
        config = self._config
        return {
            "state": self.state.value,
            "running": self.running,
            "url": config.url,
            "interval_s": config.interval,
            "timeout_s": config.timeout,
            "rise": config.rise,
            "fall": config.fall,
            "consecutive_ok": self.consecutive_ok,
            "consecutive_fail": self.consecutive_fail,
            "checks_total": self.checks_total,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_duration_ms": (
                None if self.last_duration_s is None else round(self.last_duration_s * 1000, 1)
            ),
            "last_check_age_s": (
                None
                if self.last_check_monotonic is None
                else round(now - self.last_check_monotonic, 3)
            ),
            "state_age_s": (
                None
                if self.last_transition_monotonic is None
                else round(now - self.last_transition_monotonic, 3)
            ),
        }

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_start = loop.time()
        while True:
            self._cycle_start = loop.time()
            self._reanchor = False
            result = await self._guarded_check()
            try:
                self._record(result)
            except Exception as exc:  # keep probing whatever went wrong in bookkeeping
                log.error("event=probe_record_failed error=%r", f"{type(exc).__name__}: {exc}")
            interval = self._config.interval
            next_start = _next_slot(next_start, interval, loop.time())
            while (delay := next_start - loop.time()) > 0:
                self._wake.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    break
                if self._reanchor:
                    self._reanchor = False
                    next_start = self._cycle_start + self._config.interval

    async def _guarded_check(self) -> CheckResult:
        session = self._session
        config = self._config
        started = time.monotonic()
        try:
            assert session is not None
            return await _http_check(session, config)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug or an aiohttp surprise must not kill the loop: it is a failed check.
            log.error(
                "event=probe_error url=%s error=%r", config.url, f"{type(exc).__name__}: {exc}"
            )
            return CheckResult(
                ok=False,
                duration_s=time.monotonic() - started,
                error=f"probe error: {type(exc).__name__}: {exc}",
            )

    def _record(self, result: CheckResult) -> None:
        self.checks_total += 1
        self.last_check_monotonic = time.monotonic()
        self.last_duration_s = result.duration_s
        self.last_status = result.status
        if self._metrics is not None:
            self._metrics.probe_duration_seconds.observe(result.duration_s)
        config = self._config
        if result.ok:
            self.consecutive_ok += 1
            self.consecutive_fail = 0
            self.last_error = None
            if self.state is not HealthState.UP and self.consecutive_ok >= config.rise:
                self._transition(HealthState.UP)
        else:
            self.consecutive_fail += 1
            self.consecutive_ok = 0
            self.last_error = result.error
            log.debug(
                "event=probe_check_failed url=%s consecutive_fail=%d error=%r",
                config.url,
                self.consecutive_fail,
                result.error,
            )
            if self.state is not HealthState.DOWN and self.consecutive_fail >= config.fall:
                self._transition(HealthState.DOWN)

    def _transition(self, new: HealthState) -> None:
        old, self.state = self.state, new
        self.last_transition_monotonic = time.monotonic()
        level = logging.INFO if new is HealthState.UP else logging.WARNING
        log.log(
            level,
            "event=probe_transition from=%s to=%s url=%s consecutive_ok=%d consecutive_fail=%d "
            "last_status=%s last_error=%s",
            old.value,
            new.value,
            kv(self._config.url),
            self.consecutive_ok,
            self.consecutive_fail,
            self.last_status,
            kv(self.last_error or ""),
        )
        if self._metrics is not None:
            self._metrics.probe_up.set(1 if new is HealthState.UP else 0)
            self._metrics.probe_transitions_total.labels(to=new.value).inc()
        if self._on_change is not None:
            try:
                self._on_change(old, new)
            except Exception as exc:
                log.error(
                    "event=probe_on_change_failed from=%s to=%s error=%r",
                    old.value,
                    new.value,
                    f"{type(exc).__name__}: {exc}",
                )


async def _http_check(session: aiohttp.ClientSession, config: HealthConfig) -> CheckResult:
    started = time.monotonic()

    def done(ok: bool, status: int | None = None, error: str | None = None) -> CheckResult:
        return CheckResult(ok=ok, duration_s=time.monotonic() - started, status=status, error=error)

    try:
        # One budget for connect, headers and body: a server that answers headers and then
        # stalls is as unhealthy as one that never answers.
        async with asyncio.timeout(config.timeout):
            async with session.get(
                config.url,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=config.timeout),
            ) as response:
                status = response.status
                if status not in config.expected_statuses:
                    return done(
                        False,
                        status,
                        f"status {status} not in expected {list(config.expected_statuses)}",
                    )
                if config.body_contains is not None:
                    body = await read_limited(response, MAX_BODY_BYTES)
                    if config.body_contains.encode("utf-8") not in body:
                        return done(
                            False,
                            status,
                            f"body does not contain {config.body_contains!r}",
                        )
                return done(True, status)
    except TimeoutError:
        return done(False, error=f"timeout after {config.timeout:g}s")
    except aiohttp.ClientConnectorError as exc:
        return done(False, error=f"connection failed: {exc.os_error.strerror or exc}")
    except aiohttp.ServerDisconnectedError:
        return done(False, error="server closed the connection without a response")
    except aiohttp.ClientError as exc:
        return done(False, error=f"{type(exc).__name__}: {exc}")


def _next_slot(previous_start: float, interval: float, now: float) -> float:
    """The first slot on the ``previous_start + k * interval`` grid that is in the future."""
    next_start = previous_start + interval
    if next_start <= now:
        missed = math.floor((now - next_start) / interval) + 1
        next_start += missed * interval
    return next_start
