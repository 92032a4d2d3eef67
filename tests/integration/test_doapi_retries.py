"""DoApiClient retry classes against the simulator's faults: 429, 5xx, timeouts, drops.

Timing assertions are lower bounds taken from what the simulator recorded (a wait the client
must have made; load can only lengthen it). That a call ends within its deadline is shown by
events: it ends before a held answer arrives, or it ends at all where the fault would keep a
client that ignored the deadline retrying forever (a guard of ten times the deadline fails
it). No test sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import socket

import pytest
from prometheus_client import CollectorRegistry

from hafloatd.config import ApiConfig
from hafloatd.deadline import Deadline
from hafloatd.doapi import AssignResult, DoApiClient
from hafloatd.errors import ApiUnavailable, DeadlineExceeded
from hafloatd.lab.sim import Simulator
from hafloatd.metrics import Metrics
from hafloatd.token import ApiToken
from tests.integration.test_doapi_support import WaitWatch, api_client, sample
from tests.sim_fixtures import DEFAULT_TOKEN, IP_NYC, IP_SFO, MakeSimulator, default_scenario

# An injected latency longer than any test runs (the simulator ends held requests when it stops).
HELD_S = 600.0


def guard_for(deadline_s: float) -> float:
    """How long a call under a ``deadline_s`` deadline may take before the test calls it hung:
    ten times the deadline, never a measure of how promptly it ended."""
    return 10 * deadline_s


# --- 429 -------------------------------------------------------------------------------------


async def test_429_retry_after_is_honoured_with_exactly_one_retry(simulator: Simulator) -> None:
    simulator.faults.rate_limit_storm(1, endpoint="get_reserved_ip", retry_after_s=1)
    metrics = Metrics(CollectorRegistry())
    async with api_client(simulator, metrics=metrics) as api:
        view = await api.get_reserved_ip(IP_SFO, Deadline.after(5))
    assert view.droplet_id == 1003
    refused, retried = simulator.requests("get_reserved_ip")
    assert refused.status == 429
    assert refused.response_headers["retry-after"] == "1"
    assert retried.status == 200
    assert retried.received_monotonic - refused.received_monotonic >= 1.0
    assert (
        sample(
            metrics, "hafloatd_api_retries_total", endpoint="get_reserved_ip", reason="rate_limited"
        )
        == 1
    )
    assert (
        sample(metrics, "hafloatd_api_requests_total", endpoint="get_reserved_ip", code="429") == 1
    )


async def test_429_whose_retry_after_passes_the_deadline_fails_at_once(
    simulator: Simulator,
) -> None:
    simulator.faults.rate_limit_storm(1, endpoint="get_reserved_ip", retry_after_s=30)
    metrics = Metrics(CollectorRegistry())
    async with api_client(simulator, metrics=metrics) as api:
        with pytest.raises(ApiUnavailable) as info:
            await api.get_reserved_ip(IP_NYC, Deadline.after(3))
    # Gave up on the 429 itself: no retry wait was entered (each is counted as it starts).
    retries = sample(
        metrics, "hafloatd_api_retries_total", endpoint="get_reserved_ip", reason="rate_limited"
    )
    assert retries == 0
    message = str(info.value)
    assert "not waiting" in message
    assert "retry-after 30s" in message
    assert "deadline" in message
    assert info.value.status == 429
    assert len(simulator.exchanges) == 1


async def test_post_refused_with_429_is_sent_again_after_retry_after(
    simulator: Simulator,
) -> None:
    simulator.faults.rate_limit_storm(1, endpoint="post_action", retry_after_s=1)
    async with api_client(simulator) as api:
        result = await api.assign(IP_NYC, 1001, Deadline.after(5))
    assert result.action is not None
    refused, accepted = simulator.posts(IP_NYC)
    assert (refused.status, accepted.status) == (429, 201)
    assert accepted.received_monotonic - refused.received_monotonic >= 1.0
    # A 429 is a refusal before any work: no holder check needed in between.
    assert [e.endpoint for e in simulator.exchanges] == ["post_action", "post_action"]


async def test_exhausted_hourly_quota_waits_for_ratelimit_reset(
    make_simulator: MakeSimulator,
) -> None:
    sim = await make_simulator(
        default_scenario(rate_limit_per_hour=2, rate_limit_hour_window_s=1.0)
    )
    metrics = Metrics(CollectorRegistry())
    async with api_client(sim, metrics=metrics) as api:
        deadline = Deadline.after(8)
        for _ in range(3):
            await api.get_reserved_ip(IP_NYC, deadline)
        rate_limit = api.rate_limit
    statuses = [e.status for e in sim.exchanges]
    assert statuses.count(200) == 3
    refusals = [e for e in sim.exchanges if e.status == 429]
    assert refusals
    first_refusal = refusals[0]
    assert "retry-after" not in first_refusal.response_headers
    assert first_refusal.response_headers["ratelimit-remaining"] == "0"
    reset_at = int(first_refusal.response_headers["ratelimit-reset"])
    after = sim.exchanges[sim.exchanges.index(first_refusal) + 1]
    assert after.received_at >= reset_at  # waited for the reset, not a blind backoff
    assert rate_limit.limit == 2
    assert sample(metrics, "hafloatd_api_ratelimit_limit") == 2


async def test_rate_limit_state_and_gauges_follow_every_response(simulator: Simulator) -> None:
    metrics = Metrics(CollectorRegistry())
    async with api_client(simulator, metrics=metrics) as api:
        assert api.rate_limit.remaining is None
        for _ in range(3):
            await api.get_reserved_ip(IP_NYC, Deadline.after(5))
        rate_limit = api.rate_limit
    last = simulator.exchanges[-1].response_headers
    assert rate_limit.limit == int(last["ratelimit-limit"]) == 5000
    assert rate_limit.remaining == int(last["ratelimit-remaining"]) == 4997
    assert rate_limit.reset_at == float(last["ratelimit-reset"])
    assert sample(metrics, "hafloatd_api_ratelimit_remaining") == 4997
    assert sample(metrics, "hafloatd_api_ratelimit_limit") == 5000


# --- 5xx -------------------------------------------------------------------------------------


async def test_5xx_burst_is_retried_then_succeeds(simulator: Simulator) -> None:
    simulator.faults.server_errors(3, endpoint="get_reserved_ip", status=503)
    metrics = Metrics(CollectorRegistry())
    async with api_client(simulator, metrics=metrics) as api:
        view = await api.get_reserved_ip(IP_SFO, Deadline.after(10))
    assert view.droplet_id == 1003
    assert [e.status for e in simulator.exchanges] == [503, 503, 503, 200]
    labels = {"endpoint": "get_reserved_ip"}
    assert sample(metrics, "hafloatd_api_requests_total", code="503", **labels) == 3
    assert sample(metrics, "hafloatd_api_requests_total", code="200", **labels) == 1
    assert sample(metrics, "hafloatd_api_retries_total", reason="server_error", **labels) == 3
    assert sample(metrics, "hafloatd_api_request_duration_seconds_count", **labels) == 4
    # Backoff grows: the gap before the third retry exceeds the gap before the first.
    times = [e.received_monotonic for e in simulator.exchanges]
    assert times[1] - times[0] >= 0.1
    assert times[3] - times[2] >= 0.4


async def test_5xx_forever_raises_api_unavailable_before_the_deadline(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator.faults.server_errors(None, endpoint="get_reserved_ip", status=500)
    watch = WaitWatch(monkeypatch)
    async with api_client(simulator) as api:
        # 500s forever: only the deadline can end the retries.
        async with asyncio.timeout(guard_for(1.5)):
            with pytest.raises(ApiUnavailable) as info:
                await api.get_reserved_ip(IP_NYC, watch.deadline(1.5))
    # It backed off between attempts and gave up rather than wait past the deadline.
    assert len(watch.waits) >= 2
    assert watch.waits_past_the_deadline() == []
    assert "500" in str(info.value)
    assert "deadline" in str(info.value)  # gave up for want of time, saying so
    assert "request_id=" in str(info.value)
    assert len(simulator.exchanges) >= 3


async def test_post_5xx_checks_the_holder_before_posting_again(simulator: Simulator) -> None:
    simulator.faults.server_errors(2, endpoint="post_action", status=502)
    async with api_client(simulator) as api:
        result = await api.assign(IP_NYC, 1001, Deadline.after(10))
    assert result.action is not None
    assert [e.status for e in simulator.posts(IP_NYC)] == [502, 502, 201]
    assert [e.endpoint for e in simulator.exchanges] == [
        "post_action",
        "get_reserved_ip",
        "post_action",
        "get_reserved_ip",
        "post_action",
    ]


# --- timeouts and dropped connections ----------------------------------------------------------


async def test_slow_answer_times_out_and_is_retried(simulator: Simulator) -> None:
    # The slow answer is held far past the deadline: the call can only succeed without it.
    simulator.faults.latency(HELD_S, endpoint="get_reserved_ip", count=1)
    metrics = Metrics(CollectorRegistry())
    async with api_client(
        simulator, metrics=metrics, request_timeout=0.3, connect_timeout=0.3
    ) as api:
        view = await api.get_reserved_ip(IP_SFO, Deadline.after(5))
        # The simulator has answered only the retry; the slow request is still held (unrecorded
        # until it ends) or, had it been cut off, recorded without a status.
        requests = simulator.requests("get_reserved_ip")
        answered = [e.status for e in requests if e.status is not None]
    assert answered == [200]
    assert view.droplet_id == 1003
    labels = {"endpoint": "get_reserved_ip"}
    assert sample(metrics, "hafloatd_api_requests_total", code="0", **labels) == 1
    assert sample(metrics, "hafloatd_api_requests_total", code="200", **labels) == 1
    assert sample(metrics, "hafloatd_api_retries_total", reason="timeout", **labels) == 1
    await simulator.wait_idle(5)


async def test_timeouts_until_the_deadline_raise_api_unavailable_in_time(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every answer is held past the test: each attempt times out, so only the deadline can
    # end the retries.
    simulator.faults.latency(HELD_S, endpoint="get_reserved_ip")
    watch = WaitWatch(monkeypatch)
    async with api_client(simulator, request_timeout=0.3, connect_timeout=0.3) as api:
        async with asyncio.timeout(guard_for(1.0)):
            with pytest.raises(ApiUnavailable, match="timeout"):
                await api.get_reserved_ip(IP_NYC, watch.deadline(1.0))
    assert watch.waits  # retried after a timeout
    assert watch.waits_past_the_deadline() == []


async def test_request_never_outlives_the_deadline_even_with_long_request_timeout(
    simulator: Simulator,
) -> None:
    # The answer comes after 4 s, well within request_timeout: a request that was not cut
    # off at the deadline would get it and succeed.
    simulator.faults.latency(4.0, endpoint="get_reserved_ip")
    async with api_client(simulator, request_timeout=10.0) as api:
        with pytest.raises(ApiUnavailable):
            await api.get_reserved_ip(IP_NYC, Deadline.after(0.4))
        assert simulator.requests("get_reserved_ip") == []  # nothing answered yet


async def test_dropped_post_that_took_effect_is_not_posted_again(simulator: Simulator) -> None:
    simulator.faults.drop_connections(1, endpoint="post_action")  # after the action started
    metrics = Metrics(CollectorRegistry())
    async with api_client(simulator, metrics=metrics) as api:
        result = await api.assign(IP_NYC, 1001, Deadline.after(5))
    assert result == AssignResult(action=None, already_held=True)
    [post] = simulator.posts(IP_NYC)
    assert post.dropped and post.state_changed
    assert simulator.holder(IP_NYC) == 1001
    assert simulator.requests("get_reserved_ip")  # the holder check
    labels = {"endpoint": "post_action"}
    assert sample(metrics, "hafloatd_api_retries_total", reason="unknown_fate", **labels) == 1
    assert sample(metrics, "hafloatd_api_requests_total", code="0", **labels) == 1


async def test_dropped_post_that_did_not_take_effect_is_posted_again(
    simulator: Simulator,
) -> None:
    simulator.faults.drop_connections(1, endpoint="post_action", after_state_change=False)
    async with api_client(simulator) as api:
        result = await api.assign(IP_NYC, 1001, Deadline.after(5))
    assert result.action is not None
    dropped, accepted = simulator.posts(IP_NYC)
    assert dropped.dropped and not dropped.state_changed
    assert accepted.status == 201
    between = simulator.exchanges[
        simulator.exchanges.index(dropped) + 1 : simulator.exchanges.index(accepted)
    ]
    assert [e.endpoint for e in between] == ["get_reserved_ip"]


async def test_dropped_unassign_that_took_effect_returns_none(simulator: Simulator) -> None:
    simulator.faults.drop_connections(1, endpoint="post_action")
    async with api_client(simulator) as api:
        assert await api.unassign(IP_SFO, Deadline.after(5)) is None
    assert len(simulator.posts(IP_SFO)) == 1
    assert simulator.holder(IP_SFO) is None


async def test_dropped_get_is_retried(simulator: Simulator) -> None:
    simulator.faults.drop_connections(2, endpoint="get_reserved_ip")
    async with api_client(simulator) as api:
        view = await api.get_reserved_ip(IP_SFO, Deadline.after(5))
    assert view.droplet_id == 1003
    assert [e.dropped for e in simulator.exchanges] == [True, True, False]


async def test_connection_refused_raises_api_unavailable_naming_the_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    config = ApiConfig(base_url=base_url, connect_timeout=0.2, request_timeout=0.5)
    watch = WaitWatch(monkeypatch)
    async with DoApiClient(config, ApiToken(DEFAULT_TOKEN)) as api:
        # Refused forever: only the deadline can end the retries.
        async with asyncio.timeout(guard_for(1.0)):
            with pytest.raises(ApiUnavailable) as info:
                await api.get_reserved_ip(IP_NYC, watch.deadline(1.0))
    assert watch.waits  # retried after a refusal
    assert watch.waits_past_the_deadline() == []
    assert base_url in str(info.value)
    assert "connection error" in str(info.value)


async def test_each_retry_is_logged_as_one_key_value_line(
    simulator: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hafloatd.doapi")
    simulator.faults.server_errors(1, endpoint="get_reserved_ip")
    async with api_client(simulator) as api:
        await api.get_reserved_ip(IP_NYC, Deadline.after(5))
    [line] = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("event=api_retry ")
    ]
    assert "\n" not in line
    assert line.startswith(
        "event=api_retry endpoint=get_reserved_ip attempt=1 reason=server_error "
    )
    fields = dict(part.split("=", 1) for part in shlex.split(line)[1:])
    assert int(fields["wait_ms"]) >= 100
    assert fields["detail"] == "500 server_error"
    assert DEFAULT_TOKEN not in caplog.text


async def test_post_dropped_every_time_backs_off_and_gives_up_before_the_deadline(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator.faults.drop_connections(None, endpoint="post_action", after_state_change=False)
    watch = WaitWatch(monkeypatch)
    async with api_client(simulator) as api:
        # Dropped forever: only the deadline can end the retries.
        async with asyncio.timeout(guard_for(1.5)):
            with pytest.raises((ApiUnavailable, DeadlineExceeded)):
                await api.assign(IP_NYC, 1001, watch.deadline(1.5))
    assert watch.waits_past_the_deadline() == []
    posts = simulator.posts(IP_NYC)
    assert 2 <= len(posts) <= 8  # re-posted after each holder check, with backoff between
    assert simulator.holder(IP_NYC) is None
