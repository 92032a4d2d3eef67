"""Scenarios validate themselves; the rate limiter's windows slide on its clock."""

from __future__ import annotations

from typing import Any

import pytest

from hafloatd.lab.sim import (
    ScenarioError,
    SimDroplet,
    SimReservedIp,
    SimScenario,
    scenario_from_mapping,
)
from hafloatd.lab.sim.ratelimit import RateLimiter

NODE1 = SimDroplet(id=1001, name="node1", region="nyc3")
NODE3 = SimDroplet(id=1003, name="node3", region="sfo3")


@pytest.mark.parametrize(
    ("build", "complaint"),
    [
        (lambda: SimDroplet(id=0, name="x", region="nyc3"), "id: must be a positive integer"),
        (lambda: SimDroplet(id=1, name="x", region="mars1"), "unknown region 'mars1'"),
        (lambda: SimDroplet(id=1, name="x", region="nyc3", backend="nginx"), "host:port"),
        (lambda: SimDroplet(id=1, name="x", region="nyc3", public_ipv4="1.2.3"), "IPv4"),
        (lambda: SimReservedIp(ip="203.0.113.300", region="nyc3"), "IPv4"),
        (lambda: SimScenario(droplets=(NODE1, NODE1)), "duplicate droplet id"),
        (
            lambda: SimScenario(reserved_ips=(SimReservedIp("203.0.113.1", "nyc3", 9),)),
            "droplet_id 9 is not one of",
        ),
        (
            lambda: SimScenario(
                droplets=(NODE3,), reserved_ips=(SimReservedIp("203.0.113.1", "nyc3", 1003),)
            ),
            "reserved to nyc3",
        ),
        (
            lambda: SimScenario(
                droplets=(NODE1,),
                reserved_ips=(
                    SimReservedIp("203.0.113.1", "nyc3", 1001),
                    SimReservedIp("203.0.113.2", "nyc3", 1001),
                ),
            ),
            "one reserved IPv4 per droplet",
        ),
        (lambda: SimScenario(action_delay=-1), "action_delay"),
        (lambda: SimScenario(tokens=(" padded ",)), "tokens[0]"),
        (lambda: SimScenario(rate_limit_per_minute=0), "rate_limit_per_minute"),
        (lambda: SimScenario(api_port=70000), "api_port"),
    ],
)
def test_impossible_scenarios_are_refused_naming_the_field(build: Any, complaint: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        build()
    assert complaint in str(caught.value)


def test_droplet_addresses_are_derived_when_left_out() -> None:
    a, b = (
        SimDroplet(id=1001, name="a", region="nyc3"),
        SimDroplet(id=1002, name="b", region="nyc3"),
    )
    for field in ("private_ipv4", "public_ipv4", "anchor_ipv4"):
        assert getattr(a, field) and getattr(a, field) != getattr(b, field)


def test_yaml_form_builds_the_same_scenario() -> None:
    scenario = scenario_from_mapping(
        {
            "tokens": ["t"],
            "action_delay": 0.5,
            "droplets": [{"id": 1001, "name": "node1", "region": "nyc3", "tags": ["web"]}],
            "reserved_ips": [{"ip": "203.0.113.10", "region": "nyc3", "droplet_id": 1001}],
        }
    )
    assert scenario.tokens == ("t",)
    assert scenario.droplets[0].tags == ("web",)
    assert scenario.reserved_ips[0].droplet_id == 1001


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"droplets": [{"id": 1, "name": "a", "region": "nyc3", "size": "xl"}]}, "droplets[0]"),
        ({"droplets": "node1"}, "droplets: expected a list"),
        ({"reserved_ips": [{"ip": "203.0.113.1"}]}, "reserved_ips[0]"),
    ],
)
def test_yaml_errors_name_the_key_path(data: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        scenario_from_mapping(data)
    assert complaint in str(caught.value)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_minute_burst_refuses_with_retry_after_until_the_oldest_request_expires() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 100, clock=clock)
    assert limiter.check("t").allowed
    clock.now += 10
    assert limiter.check("t").allowed
    refused = limiter.check("t")
    assert (refused.allowed, refused.reason, refused.retry_after_s) == (False, "minute", 50)
    clock.now += 50
    assert limiter.check("t").allowed


def test_hourly_quota_reports_remaining_and_reset() -> None:
    clock = FakeClock()
    limiter = RateLimiter(100, 2, clock=clock)
    first = limiter.check("t")
    assert (first.remaining, first.reset_at) == (1, 1_700_003_600)
    limiter.check("t")
    refused = limiter.check("t")
    assert (refused.allowed, refused.reason, refused.remaining) == (False, "hour", 0)
    assert "retry-after" not in refused.headers()
    assert limiter.peek("other").remaining == 2
    clock.now += 3600
    assert limiter.check("t").allowed
