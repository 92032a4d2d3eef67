"""HealthProbe against a real aiohttp server on 127.0.0.1 whose answers the tests switch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace

import pytest
from aiohttp import web
from blockbuster import blockbuster_ctx
from prometheus_client import CollectorRegistry

import hafloatd.probe as probe_module
from hafloatd.config import HealthConfig
from hafloatd.metrics import Metrics
from hafloatd.probe import CheckResult, HealthProbe, HealthState, _next_slot

WAIT_S = 5.0  # upper bound for any awaited condition; tests finish far sooner


@pytest.fixture(autouse=True)
def _no_blocking_calls() -> Iterator[None]:
    with blockbuster_ctx():
        yield


@dataclass
class FakeWeb:
    """A stand-in for nginx: answers from a script, then from ``status``/``body``."""

    status: int = 200
    body: str = "ok"
    script: list[int] = field(default_factory=list)
    slow: bool = False
    delay_s: float = 0.0
    hits: int = 0
    hit_times: list[float] = field(default_factory=list)
    redirect_target_hits: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hit: asyncio.Event = field(default_factory=asyncio.Event)
    script_done: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.hit_times.append(asyncio.get_running_loop().time())
        self.hit.set()
        if self.slow:
            await self.release.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # server-side latency, part of the behaviour
        if self.script:
            status = self.script.pop(0)
            if not self.script:
                self.script_done.set()
            return web.Response(status=status, text=self.body)
        if self.status in (301, 302):
            return web.Response(status=self.status, headers={"Location": "/target"})
        return web.Response(status=self.status, text=self.body)

    async def target(self, request: web.Request) -> web.StreamResponse:
        self.redirect_target_hits += 1
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self.handle)
        app.router.add_get("/health", self.handle)
        app.router.add_get("/target", self.target)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await self.listen()

    async def listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        if not self.port:
            self.port = int(self._runner.addresses[0][1])
            self.url = f"http://127.0.0.1:{self.port}/"

    async def stop_listening(self) -> None:
        assert self._site is not None
        await self._site.stop()
        self._site = None

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def fake_web() -> AsyncIterator[FakeWeb]:
    server = FakeWeb()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@dataclass
class Seen:
    old: HealthState
    new: HealthState
    consecutive_ok: int
    consecutive_fail: int
    checks_total: int
    last_error: str | None


class Transitions:
    """Records on_change calls (with the probe's counters at that instant) for awaiting."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.changed = asyncio.Event()
        self.probe: HealthProbe | None = None

    def __call__(self, old: HealthState, new: HealthState) -> None:
        probe = self.probe
        assert probe is not None
        self.seen.append(
            Seen(
                old,
                new,
                probe.consecutive_ok,
                probe.consecutive_fail,
                probe.checks_total,
                probe.last_error,
            )
        )
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = WAIT_S) -> list[Seen]:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.seen

    def pairs(self) -> list[tuple[HealthState, HealthState]]:
        return [(s.old, s.new) for s in self.seen]


def make_probe(
    config: HealthConfig, metrics: Metrics | None = None
) -> tuple[HealthProbe, Transitions]:
    transitions = Transitions()
    probe = HealthProbe(config, metrics=metrics, on_change=transitions)
    transitions.probe = probe
    return probe, transitions


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def health(url: str, **overrides: object) -> HealthConfig:
    base = HealthConfig(url=url, interval=0.05, timeout=0.045, rise=2, fall=3)
    return replace(base, **overrides)  # type: ignore[arg-type]


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


async def test_unknown_becomes_up_after_exactly_rise_successes(
    fake_web: FakeWeb, metrics: Metrics
) -> None:
    probe, transitions = make_probe(health(fake_web.url, rise=3, fall=2), metrics)
    assert probe.state is HealthState.UNKNOWN
    assert sample(metrics, "hafloatd_probe_up") == -1
    await probe.start()
    try:
        seen = await transitions.wait_for(1)
    finally:
        await probe.stop()
    assert transitions.pairs() == [(HealthState.UNKNOWN, HealthState.UP)]
    assert seen[0].consecutive_ok == 3
    assert seen[0].checks_total == 3
    assert sample(metrics, "hafloatd_probe_up") == 1
    assert sample(metrics, "hafloatd_probe_transitions_total", {"to": "up"}) == 1
    assert sample(metrics, "hafloatd_probe_transitions_total", {"to": "down"}) is None


async def test_unknown_becomes_down_after_exactly_fall_failures(
    fake_web: FakeWeb, metrics: Metrics
) -> None:
    fake_web.status = 503
    probe, transitions = make_probe(health(fake_web.url, rise=2, fall=4), metrics)
    await probe.start()
    try:
        seen = await transitions.wait_for(1)
    finally:
        await probe.stop()
    assert transitions.pairs() == [(HealthState.UNKNOWN, HealthState.DOWN)]
    assert seen[0].consecutive_fail == 4
    assert seen[0].checks_total == 4
    assert seen[0].last_error == "status 503 not in expected [200]"
    assert sample(metrics, "hafloatd_probe_up") == 0
    assert sample(metrics, "hafloatd_probe_transitions_total", {"to": "down"}) == 1


async def test_up_goes_down_after_fall_failures_and_back_up_after_rise_successes(
    fake_web: FakeWeb, metrics: Metrics
) -> None:
    # rise=2: UP after checks 1-2; three 500s (fall=3): DOWN at check 5; then 200s: UP at 7.
    fake_web.script = [200, 200, 500, 500, 500, 200, 200]
    probe, transitions = make_probe(health(fake_web.url, rise=2, fall=3), metrics)
    await probe.start()
    try:
        seen = await transitions.wait_for(3)
        await asyncio.wait_for(fake_web.script_done.wait(), WAIT_S)
    finally:
        await probe.stop()
    assert transitions.pairs() == [
        (HealthState.UNKNOWN, HealthState.UP),
        (HealthState.UP, HealthState.DOWN),
        (HealthState.DOWN, HealthState.UP),
    ]
    assert [s.checks_total for s in seen] == [2, 5, 7]
    assert seen[1].consecutive_fail == 3
    assert seen[2].consecutive_ok == 2
    assert sample(metrics, "hafloatd_probe_transitions_total", {"to": "up"}) == 2
    assert sample(metrics, "hafloatd_probe_transitions_total", {"to": "down"}) == 1
    assert sample(metrics, "hafloatd_probe_up") == 1
    assert sample(metrics, "hafloatd_probe_duration_seconds_count") == probe.checks_total


async def test_failures_shorter_than_fall_do_not_flap(fake_web: FakeWeb) -> None:
    fake_web.script = [200, 200, 500, 500, 200, 500, 500, 200, 500, 200, 200]
    probe, transitions = make_probe(health(fake_web.url, rise=2, fall=3))
    await probe.start()
    try:
        await asyncio.wait_for(fake_web.script_done.wait(), WAIT_S)
    finally:
        await probe.stop()
    assert transitions.pairs() == [(HealthState.UNKNOWN, HealthState.UP)]
    assert probe.checks_total >= 11


async def test_successes_shorter_than_rise_do_not_bring_it_up(fake_web: FakeWeb) -> None:
    fake_web.script = [500, 500, 200, 200, 500, 200, 200, 500, 500]
    probe, transitions = make_probe(health(fake_web.url, rise=3, fall=2))
    await probe.start()
    try:
        await asyncio.wait_for(fake_web.script_done.wait(), WAIT_S)
    finally:
        await probe.stop()
    assert transitions.pairs() == [(HealthState.UNKNOWN, HealthState.DOWN)]


async def test_body_without_expected_substring_is_a_failure(fake_web: FakeWeb) -> None:
    fake_web.body = "502 upstream gone"
    probe, transitions = make_probe(health(fake_web.url, body_contains="ok", fall=1))
    await probe.start()
    try:
        seen = await transitions.wait_for(1)
        fake_web.body = "all ok"
        await transitions.wait_for(2)
    finally:
        await probe.stop()
    assert seen[0].new is HealthState.DOWN
    assert seen[0].last_error == "body does not contain 'ok'"
    assert transitions.pairs()[1] == (HealthState.DOWN, HealthState.UP)


async def test_expected_statuses_other_than_200_count_as_success(fake_web: FakeWeb) -> None:
    fake_web.status = 204
    probe, transitions = make_probe(health(fake_web.url, expected_statuses=(200, 204), rise=1))
    await probe.start()
    try:
        await transitions.wait_for(1)
    finally:
        await probe.stop()
    assert transitions.pairs() == [(HealthState.UNKNOWN, HealthState.UP)]
    assert probe.last_status == 204


async def test_slow_answer_times_out_and_counts_as_failure(fake_web: FakeWeb) -> None:
    fake_web.slow = True
    probe, transitions = make_probe(health(fake_web.url, timeout=0.03, fall=2))
    await probe.start()
    try:
        seen = await transitions.wait_for(1)
    finally:
        await probe.stop()
    assert seen[0].new is HealthState.DOWN
    assert seen[0].last_error == "timeout after 0.03s"
    assert not fake_web.release.is_set()  # the server never answered: the timeout ended it
    # The duration recorded is the check's, which lasted at least its timeout.
    assert probe.last_duration_s is not None and probe.last_duration_s >= 0.03


async def test_closed_listener_is_noticed_because_each_check_opens_a_new_connection(
    fake_web: FakeWeb,
) -> None:
    probe, transitions = make_probe(health(fake_web.url, rise=1, fall=2))
    await probe.start()
    try:
        await transitions.wait_for(1)
        await fake_web.stop_listening()
        seen = await transitions.wait_for(2)
        assert seen[1].new is HealthState.DOWN
        assert seen[1].last_error is not None
        assert seen[1].last_error.startswith("connection failed")
        await fake_web.listen()
        await transitions.wait_for(3)
    finally:
        await probe.stop()
    assert transitions.pairs() == [
        (HealthState.UNKNOWN, HealthState.UP),
        (HealthState.UP, HealthState.DOWN),
        (HealthState.DOWN, HealthState.UP),
    ]


async def test_redirect_is_judged_as_is_and_not_followed(fake_web: FakeWeb) -> None:
    fake_web.status = 301
    probe, transitions = make_probe(health(fake_web.url, fall=1))
    await probe.start()
    try:
        seen = await transitions.wait_for(1)
    finally:
        await probe.stop()
    assert seen[0].new is HealthState.DOWN
    assert seen[0].last_error == "status 301 not in expected [200]"
    assert fake_web.redirect_target_hits == 0


async def test_reconfigure_applies_new_url_and_shorter_interval_at_once(
    fake_web: FakeWeb,
) -> None:
    bad_url = f"http://127.0.0.1:{fake_web.port}/missing"
    probe, transitions = make_probe(health(bad_url, interval=60.0, timeout=1.0, rise=1, fall=1))
    await probe.start()
    try:
        await transitions.wait_for(1)
        assert probe.state is HealthState.DOWN
        # The old schedule would wait a minute; the new interval is re-anchored now.
        probe.reconfigure(health(fake_web.url + "health", rise=2, fall=1))
        seen = await transitions.wait_for(2)
    finally:
        await probe.stop()
    assert seen[1].new is HealthState.UP
    assert seen[1].consecutive_ok == 2
    assert probe.snapshot()["url"] == fake_web.url + "health"


async def test_stop_cancels_promptly_during_a_slow_check(
    fake_web: FakeWeb, caplog: pytest.LogCaptureFixture
) -> None:
    fake_web.slow = True  # held until the fixture closes the server
    probe, _transitions = make_probe(health(fake_web.url, interval=120.0, timeout=60.0))
    await probe.start()
    assert probe.running
    await asyncio.wait_for(fake_web.hit.wait(), WAIT_S)
    caplog.set_level(logging.INFO, logger="hafloatd.probe")
    # The check would last its 60 s timeout: stop returning within WAIT_S cancelled it.
    async with asyncio.timeout(WAIT_S):
        await probe.stop()
    assert not probe.running
    assert probe.checks_total == 0  # cancelled in flight, not waited for and recorded
    assert not fake_web.release.is_set()
    # The loop ended when cancelled: stop did not have to give up waiting for it.
    assert "event=probe_stopped" in caplog.text
    assert "probe_stop_timeout" not in caplog.text


async def test_exception_in_a_check_counts_as_failure_and_the_loop_survives(
    fake_web: FakeWeb, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_check = probe_module._http_check
    broken = True

    async def flaky_check(session: object, config: HealthConfig) -> CheckResult:
        if broken:
            raise RuntimeError("boom")
        return await real_check(session, config)  # type: ignore[arg-type]

    monkeypatch.setattr(probe_module, "_http_check", flaky_check)
    probe, transitions = make_probe(health(fake_web.url, rise=1, fall=2))
    await probe.start()
    try:
        seen = await transitions.wait_for(1)
        broken = False
        await transitions.wait_for(2)
    finally:
        await probe.stop()
    assert seen[0].new is HealthState.DOWN
    assert seen[0].last_error == "probe error: RuntimeError: boom"
    assert transitions.pairs()[1] == (HealthState.DOWN, HealthState.UP)


async def test_on_change_exception_does_not_stop_the_probe(fake_web: FakeWeb) -> None:
    calls: list[tuple[HealthState, HealthState]] = []
    second = asyncio.Event()

    def on_change(old: HealthState, new: HealthState) -> None:
        calls.append((old, new))
        if len(calls) == 2:
            second.set()
        raise ValueError("callback bug")

    fake_web.script = [200, 500]
    probe = HealthProbe(health(fake_web.url, rise=1, fall=1), on_change=on_change)
    await probe.start()
    try:
        await asyncio.wait_for(second.wait(), WAIT_S)
    finally:
        await probe.stop()
    assert calls == [
        (HealthState.UNKNOWN, HealthState.UP),
        (HealthState.UP, HealthState.DOWN),
    ]


async def test_interval_is_start_to_start_without_drift(
    fake_web: FakeWeb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each check takes ~60 ms of a 100 ms interval. Start-to-start scheduling keeps every
    start on one grid, ``first + k * interval``, each slot computed from the previous slot;
    sleeping an interval after each check would drift by the check's duration every cycle.
    Judged on the slots the loop computes, not on how long anything took: a loaded machine
    may skip slots (the grid absorbs it) but never leaves it."""
    interval = 0.1
    slots: list[tuple[float, float]] = []  # (previous slot it was computed from, new slot)
    real_next_slot = probe_module._next_slot

    def recording_next_slot(previous_start: float, step: float, now: float) -> float:
        assert step == interval
        slot = real_next_slot(previous_start, step, now)
        slots.append((previous_start, slot))
        return slot

    monkeypatch.setattr(probe_module, "_next_slot", recording_next_slot)
    fake_web.delay_s = 0.06
    probe, _transitions = make_probe(health(fake_web.url, interval=interval, timeout=0.09))
    await probe.start()
    try:
        async with asyncio.timeout(WAIT_S):
            while len(fake_web.hit_times) < 10:
                fake_web.hit.clear()
                await fake_web.hit.wait()
    finally:
        await probe.stop()
    assert len(slots) >= 9
    first = slots[0][0]  # the first check's start anchors the grid
    # Each slot computed from the previous slot, not from "now" or the check's end.
    assert [previous for previous, _ in slots[1:]] == [slot for _, slot in slots[:-1]]
    steps = [(slot - first) / interval for _, slot in slots]
    assert steps == sorted(set(steps))  # strictly later each time
    assert [round(k) for k in steps] == pytest.approx(steps, abs=1e-6)  # on the grid
    # And each check starts at its slot, not before.
    for hit_time, (_, slot) in zip(fake_web.hit_times[1:], slots, strict=False):
        assert hit_time >= slot


def test_next_slot_skips_missed_slots_and_keeps_the_phase() -> None:
    assert _next_slot(10.0, 2.0, now=10.5) == 12.0
    # A check that overran by 5 s: the next slot is the first future one on the grid.
    assert _next_slot(10.0, 2.0, now=17.0) == 18.0
    assert _next_slot(10.0, 2.0, now=12.0) == 14.0


async def test_snapshot_reports_state_counters_and_config(fake_web: FakeWeb) -> None:
    probe, transitions = make_probe(health(fake_web.url, rise=1))
    snap = probe.snapshot()
    assert snap["state"] == "unknown"
    assert snap["running"] is False
    assert snap["last_check_age_s"] is None
    await probe.start()
    try:
        await transitions.wait_for(1)
        snap = probe.snapshot()
    finally:
        await probe.stop()
    assert snap["state"] == "up"
    assert snap["running"] is True
    assert snap["url"] == fake_web.url
    assert snap["last_status"] == 200
    assert snap["last_error"] is None
    assert isinstance(snap["consecutive_ok"], int) and snap["consecutive_ok"] >= 1
    assert isinstance(snap["last_check_age_s"], float)
    assert snap["rise"] == 1 and snap["fall"] == 3


async def test_check_once_does_not_touch_rise_fall_state(fake_web: FakeWeb) -> None:
    probe, _transitions = make_probe(health(fake_web.url, interval=60.0))
    await probe.start()
    try:
        await asyncio.wait_for(fake_web.hit.wait(), WAIT_S)
        before = (probe.consecutive_ok, probe.checks_total)
        result = await probe.check_once()
    finally:
        await probe.stop()
    assert result.ok and result.status == 200
    assert (probe.consecutive_ok, probe.checks_total) == before


async def test_connection_refused_before_any_listener_is_a_failure() -> None:
    server = FakeWeb()
    await server.start()
    url = server.url
    await server.close()  # nothing listens on that port any more
    probe, transitions = make_probe(health(url, fall=1))
    await probe.start()
    try:
        seen = await transitions.wait_for(1)
    finally:
        await probe.stop()
    assert seen[0].new is HealthState.DOWN
    assert seen[0].last_error is not None and "connection failed" in seen[0].last_error


async def test_stop_before_start_and_double_stop_are_harmless() -> None:
    probe = HealthProbe(health("http://127.0.0.1:9/"))
    await probe.stop()
    await probe.start()
    await probe.start()  # idempotent
    await probe.stop()
    await probe.stop()
    assert not probe.running
