"""The per-peer limit on the control server's warnings (``hafloatd.control.warnlimit``)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from hafloatd.control.warnlimit import WarningLimiter
from hafloatd.metrics import Metrics

ROOT, NOBODY = 0, 65534
INVALID, DENIED = "control_request_invalid", "control_peer_denied"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def limiter(clock: Clock, metrics: Metrics) -> WarningLimiter:
    return WarningLimiter(metrics, burst=3, window_s=60.0, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hafloatd.control"]


def suppressed(metrics: Metrics, event: str) -> float:
    value = metrics.registry.get_sample_value(
        "hafloatd_control_warnings_suppressed_total", {"event": event}
    )
    return value or 0.0


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [line for line in lines(caplog) if "event=control_warnings_suppressed" in line]


def test_a_peer_gets_its_burst_then_is_counted_not_logged(
    limiter: WarningLimiter, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        written = [limiter.warn(ROOT, INVALID, "pid=%d error=%r", 7, "bad") for _ in range(1000)]

    assert written == [True] * 3 + [False] * 997
    assert lines(caplog) == ["event=control_request_invalid pid=7 error='bad'"] * 3
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert suppressed(metrics, INVALID) == 997
    assert limiter.pending() == 997


def test_peers_have_budgets_of_their_own(
    limiter: WarningLimiter, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        for _ in range(50):
            limiter.warn(NOBODY, DENIED, "uid=%d", NOBODY)
        root_lines = [limiter.warn(ROOT, INVALID, "uid=%d", ROOT) for _ in range(3)]

    assert root_lines == [True, True, True]  # nobody's flood costs root nothing
    assert lines(caplog).count(f"event={DENIED} uid={NOBODY}") == 3
    assert suppressed(metrics, DENIED) == 47
    assert suppressed(metrics, INVALID) == 0


def test_the_next_window_sums_up_the_last_one_and_gives_a_new_budget(
    limiter: WarningLimiter, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        for _ in range(10):
            limiter.allow(ROOT, INVALID)
        limiter.allow(ROOT, DENIED)
        clock.now += 59.9
        assert limiter.allow(ROOT, INVALID) is False  # still the first window
        assert summaries(caplog) == []
        clock.now += 0.1
        assert limiter.allow(ROOT, INVALID) is True

    assert summaries(caplog) == [
        "event=control_warnings_suppressed peer_uid=0 count=9 window_s=60 "
        f"events={DENIED}:1,{INVALID}:8"
    ]
    assert limiter.pending() == 0


def test_roll_over_sums_up_a_peer_that_went_quiet_and_only_once(
    limiter: WarningLimiter, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        for _ in range(5):
            limiter.allow(NOBODY, DENIED)
        clock.now += 30
        for _ in range(4):
            limiter.allow(ROOT, INVALID)
        clock.now += 30
        limiter.roll_over()  # nobody's window is over, root's is not
        limiter.roll_over()

        assert summaries(caplog) == [
            f"event=control_warnings_suppressed peer_uid={NOBODY} count=2 window_s=60 "
            f"events={DENIED}:2"
        ]
        clock.now += 30
        limiter.roll_over()

    assert summaries(caplog)[1:] == [
        f"event=control_warnings_suppressed peer_uid=0 count=1 window_s=60 events={INVALID}:1"
    ]


def test_a_window_without_suppression_writes_no_summary(
    limiter: WarningLimiter, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        for _ in range(3):
            limiter.allow(ROOT, INVALID)
        clock.now += 120
        limiter.roll_over()
        limiter.flush()

    assert summaries(caplog) == []


def test_flush_sums_up_running_windows_at_once(
    limiter: WarningLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        for uid in (ROOT, NOBODY):
            for _ in range(4):
                limiter.allow(uid, INVALID)
        limiter.flush()
        limiter.flush()

    assert sorted(summaries(caplog)) == [
        f"event=control_warnings_suppressed peer_uid={uid} count=1 window_s=60 events={INVALID}:1"
        for uid in (ROOT, NOBODY)
    ]
    assert limiter.pending() == 0


def test_peers_past_the_tracked_maximum_share_one_budget(
    clock: Clock, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = WarningLimiter(metrics, burst=2, window_s=60.0, max_peers=3, clock=clock)
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        written = [limiter.warn(uid, DENIED) for uid in range(100)]
        limiter.flush()

    # uids 0, 1 and 2 are tracked (one line each); the other 97 share one budget of 2.
    assert written == [True] * 5 + [False] * 95
    assert summaries(caplog) == [
        f"event=control_warnings_suppressed peer_uid=other count=95 window_s=60 events={DENIED}:95"
    ]


def test_an_unknown_peer_is_uid_minus_one(
    limiter: WarningLimiter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        for _ in range(4):
            limiter.warn(-1, DENIED, "reason=%s", "no-credentials")
        limiter.flush()

    assert summaries(caplog) == [
        f"event=control_warnings_suppressed peer_uid=-1 count=1 window_s=60 events={DENIED}:1"
    ]


def test_without_metrics_it_still_limits(clock: Clock) -> None:
    limiter = WarningLimiter(burst=1, clock=clock)

    assert [limiter.allow(ROOT, INVALID) for _ in range(3)] == [True, False, False]


async def test_run_writes_summaries_as_windows_end_until_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = WarningLimiter(burst=1, window_s=0.06)  # the real clock: run() sleeps on it
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        for _ in range(5):
            limiter.allow(ROOT, INVALID)
        task = asyncio.create_task(limiter.run())
        async with asyncio.timeout(5):
            while not summaries(caplog):
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert summaries(caplog) == [
        f"event=control_warnings_suppressed peer_uid=0 count=4 window_s=0.06 events={INVALID}:4"
    ]
    assert limiter.pending() == 0


async def test_close_stops_the_summary_task_and_writes_what_is_pending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = WarningLimiter(burst=1, window_s=60.0)
    limiter.start()
    limiter.start()  # idempotent: one task
    names = [t.get_name() for t in asyncio.all_tasks()]
    assert names.count("hafloatd-control-warning-summaries") == 1
    with caplog.at_level(logging.WARNING, logger="hafloatd.control"):
        for _ in range(3):
            limiter.allow(ROOT, INVALID)
        await limiter.close()

    assert summaries(caplog) == [
        f"event=control_warnings_suppressed peer_uid=0 count=2 window_s=60 events={INVALID}:2"
    ]
    assert "hafloatd-control-warning-summaries" not in {t.get_name() for t in asyncio.all_tasks()}
