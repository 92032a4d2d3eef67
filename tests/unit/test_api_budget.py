"""The API request budget's pieces that need no network: the sliding hour of requests, the
API session's socket and pool settings, and how ``hafloatd status`` shows the budget."""

from __future__ import annotations

import socket

import pytest

from hafloatd.config import ApiConfig
from hafloatd.doapi.session import (
    KEEPCNT,
    KEEPIDLE_S,
    KEEPINTVL_S,
    keepalive_socket,
    pool_keepalive_s,
)
from hafloatd.doapi.window import SlidingCount
from hafloatd.status import render

HOUR = 3600.0
MINUTE = 60.0

# -- the sliding hour ----------------------------------------------------------------------------


def test_an_empty_window_counts_nothing() -> None:
    assert SlidingCount().count(1000.0) == 0


def test_requests_within_the_hour_are_all_counted() -> None:
    window = SlidingCount()
    start = 10 * HOUR
    for minute in range(59):
        window.add(start + minute * MINUTE)
        window.add(start + minute * MINUTE + 30)
    assert window.count(start + 58 * MINUTE + 59) == 118


def test_a_request_leaves_the_window_an_hour_later_to_the_minute() -> None:
    window = SlidingCount()
    sent = 10 * HOUR + 15.0  # 15 s into a minute
    window.add(sent)
    assert window.count(sent + HOUR - MINUTE) == 1  # 59 minutes on: still counted
    assert window.count(sent + HOUR - 16.0) == 1  # its minute is the oldest one counted
    assert window.count(sent + HOUR - 15.0) == 0  # the whole minute dropped out
    assert window.count(sent + 5 * HOUR) == 0


def test_a_slot_reused_an_hour_later_starts_from_zero() -> None:
    window = SlidingCount()
    first = 10 * HOUR
    for _ in range(5):
        window.add(first)
    window.add(first + HOUR)  # the same slot of the ring, one hour on
    assert window.count(first + HOUR) == 1


def test_a_slot_not_reused_is_not_counted_once_it_is_old() -> None:
    window = SlidingCount()
    window.add(10 * HOUR, events=7)
    window.add(10 * HOUR + 30 * MINUTE, events=2)
    assert window.count(10 * HOUR + 30 * MINUTE) == 9
    assert window.count(11 * HOUR + 10 * MINUTE) == 2  # the first minute left, not its slot


def test_memory_stays_constant_however_many_requests() -> None:
    window = SlidingCount()
    for second in range(0, int(5 * HOUR), 3):
        window.add(float(second))
    assert len(window._counts) == 60  # the bound is the point of the test
    assert window.count(5 * HOUR - 1) == 1200  # one every 3 s for the last hour


def test_other_spans_and_nonsense() -> None:
    window = SlidingCount(span_s=10.0, buckets=10)
    window.add(0.5)
    window.add(9.5)
    assert window.count(9.9) == 2
    assert window.count(10.0) == 1
    with pytest.raises(ValueError):
        SlidingCount(span_s=0)
    with pytest.raises(ValueError):
        SlidingCount(buckets=0)


# -- the session's sockets and pool --------------------------------------------------------------


def test_api_sockets_have_tcp_keepalive_on() -> None:
    info = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 443))
    with keepalive_socket(info) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPIDLE_S
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPINTVL_S
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPCNT
    # Probes start well inside common NAT/firewall idle timeouts (5 minutes and more).
    assert KEEPIDLE_S + KEEPINTVL_S * KEEPCNT <= 300


@pytest.mark.parametrize(
    ("holder_check", "keepalive"), [(120.0, 300.0), (600.0, 300.0), (0.2, 1.0), (3600.0, 3600.0)]
)
def test_an_idle_connection_outlives_the_quiet_gap_at_rest(
    holder_check: float, keepalive: float
) -> None:
    config = ApiConfig(holder_check_interval=holder_check, keepalive_interval=keepalive)
    assert pool_keepalive_s(config) > min(holder_check, keepalive) + config.request_timeout


# -- hafloatd status -----------------------------------------------------------------------------


def test_status_shows_requests_spent_against_the_budget() -> None:
    status = {
        "version": "x",
        "droplet": {"id": 1001},
        "api": {"requests_last_hour": 27, "hourly_budget": 30, "connections_opened": 1},
        "ips": [],
    }
    text = render(status)
    assert "api budget 27 requests in the last hour (budget 30/hour idle)" in text
    assert "connections opened 1" in text
    unknown = render({"version": "x", "api": {}, "ips": []})
    assert "api budget - requests in the last hour (budget -/hour idle)" in unknown
