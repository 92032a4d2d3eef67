"""DoApiClient against the simulator: lookups, assign/unassign, actions, both path families.

Every exchange is also validated against DigitalOcean's OpenAPI spec by the fixtures.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from hafloatd.deadline import Deadline
from hafloatd.doapi import Action, AssignResult, ReservedIp
from hafloatd.errors import (
    ActionFailed,
    ApiError,
    ApiNotFound,
    ApiRejected,
    DeadlineExceeded,
)
from hafloatd.lab.sim import Simulator
from hafloatd.metrics import Metrics
from tests.integration.test_doapi_support import WaitWatch, api_client, sample
from tests.sim_fixtures import IP_NYC, IP_SFO, MakeSimulator, default_scenario

# Deadline tests: a deadline, waits between polls far longer than it, and a guard that fails
# a client which started such a wait anyway (ten times the deadline; the honest client gives
# up at once).
SHORT_DEADLINE_S = 2.0
LONG_POLL_S = 60.0
WAIT_PAST_DEADLINE_GUARD_S = 10 * SHORT_DEADLINE_S

# --- lookups ---------------------------------------------------------------------------------


async def test_get_reserved_ip_reports_unassigned_ip_with_region(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        view = await api.get_reserved_ip(IP_NYC, Deadline.after(5))
    assert view == ReservedIp(ip=IP_NYC, droplet_id=None, region="nyc3", locked=False)
    [exchange] = simulator.exchanges
    assert (exchange.method, exchange.path) == ("GET", f"/v2/reserved_ips/{IP_NYC}")


async def test_get_reserved_ip_reports_holder(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        view = await api.get_reserved_ip(IP_SFO, Deadline.after(5))
    assert view == ReservedIp(ip=IP_SFO, droplet_id=1003, region="sfo3", locked=False)


async def test_unknown_reserved_ip_is_not_found_with_actionable_message(
    simulator: Simulator,
) -> None:
    async with api_client(simulator) as api:
        with pytest.raises(ApiNotFound) as info:
            await api.get_reserved_ip("203.0.113.99", Deadline.after(5))
    message = str(info.value)
    assert "203.0.113.99" in message
    assert "404" in message
    assert "request_id=" in message
    assert info.value.ocf_code == 6
    assert len(simulator.exchanges) == 1  # a 404 is not retried


async def test_address_that_is_not_ipv4_is_refused_before_any_request(
    simulator: Simulator,
) -> None:
    async with api_client(simulator) as api:
        with pytest.raises(ApiError, match="not an IPv4 address"):
            await api.get_reserved_ip("../droplets/1001", Deadline.after(5))
    assert simulator.exchanges == []


async def test_expired_deadline_fails_before_sending(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        with pytest.raises(DeadlineExceeded):
            await api.get_reserved_ip(IP_NYC, Deadline.after(0))
    assert simulator.exchanges == []


# --- assign ----------------------------------------------------------------------------------


async def test_assign_posts_once_and_action_completes_with_ip_moved(simulator: Simulator) -> None:
    events: list[str] = []
    deadline = Deadline.after(5)
    async with api_client(simulator) as api:
        result = await api.assign(IP_NYC, 1001, deadline, on_event=events.append)
        assert result.action is not None
        assert not result.already_held
        assert result.action.type == "assign_ip"
        assert result.action.pending
        done = await api.wait_action(
            result.action.id, deadline, ip=IP_NYC, expected_droplet_id=1001
        )
        confirmed = await api.get_reserved_ip(IP_NYC, deadline)
    assert events == ["post_sent", "api_accepted"]
    assert done.completed and done.id == result.action.id
    assert done.completed_at is not None
    assert confirmed.droplet_id == 1001
    assert simulator.holder(IP_NYC) == 1001
    [post] = simulator.posts(IP_NYC)
    assert post.request_json() == {"type": "assign", "droplet_id": 1001}
    assert post.request_headers["Content-Type"].startswith("application/json")


async def test_assign_moves_ip_between_droplets(simulator: Simulator) -> None:
    deadline = Deadline.after(5)
    async with api_client(simulator) as api:
        first = await api.assign(IP_NYC, 1001, deadline)
        assert first.action is not None
        await api.wait_action(first.action.id, deadline, ip=IP_NYC, expected_droplet_id=1001)
        second = await api.assign(IP_NYC, 1002, deadline)
        assert second.action is not None
        await api.wait_action(second.action.id, deadline, ip=IP_NYC, expected_droplet_id=1002)
    assert simulator.holder(IP_NYC) == 1002
    assert len(simulator.posts(IP_NYC)) == 2


async def test_assign_when_already_held_is_success_without_action(simulator: Simulator) -> None:
    events: list[str] = []
    async with api_client(simulator) as api:
        result = await api.assign(IP_SFO, 1003, Deadline.after(5), on_event=events.append)
    assert result == AssignResult(action=None, already_held=True)
    # DigitalOcean answers 422 when the droplet already has the IP; a GET proves it is ours.
    assert [e.status for e in simulator.posts(IP_SFO)] == [422]
    assert [e.endpoint for e in simulator.exchanges] == ["post_action", "get_reserved_ip"]
    assert events == ["post_sent"]


async def test_check_first_skips_the_post_when_already_held(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        result = await api.assign(IP_SFO, 1003, Deadline.after(5), check_first=True)
    assert result == AssignResult(action=None, already_held=True)
    assert simulator.posts() == []
    assert [e.endpoint for e in simulator.exchanges] == ["get_reserved_ip"]


async def test_check_first_posts_when_held_elsewhere(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        result = await api.assign(IP_NYC, 1001, Deadline.after(5), check_first=True)
    assert result.action is not None
    assert [e.endpoint for e in simulator.exchanges] == ["get_reserved_ip", "post_action"]


async def test_assign_to_droplet_in_another_region_is_rejected_with_do_message(
    simulator: Simulator,
) -> None:
    async with api_client(simulator) as api:
        with pytest.raises(ApiRejected) as info:
            await api.assign(IP_NYC, 1003, Deadline.after(5))
    message = str(info.value)
    assert "same region" in message  # DigitalOcean's own words
    assert "nyc3" in message
    assert info.value.status == 422
    assert len(simulator.posts(IP_NYC)) == 1
    assert simulator.holder(IP_NYC) is None


async def test_assign_to_unknown_droplet_is_not_found(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        with pytest.raises(ApiNotFound):
            await api.assign(IP_NYC, 4242, Deadline.after(5))


async def test_assign_refuses_non_positive_droplet_id_without_request(
    simulator: Simulator,
) -> None:
    async with api_client(simulator) as api:
        with pytest.raises(ApiRejected, match="droplet id"):
            await api.assign(IP_NYC, 0, Deadline.after(5))
    assert simulator.exchanges == []


async def test_pending_event_422_waits_for_the_action_then_succeeds(
    make_simulator: MakeSimulator,
) -> None:
    sim = await make_simulator(default_scenario(action_delay=0.3))
    deadline = Deadline.after(10)
    metrics = Metrics(CollectorRegistry())
    async with api_client(sim, metrics=metrics) as api:
        first = await api.assign(IP_NYC, 1001, deadline)
        assert first.action is not None
        # The first action still runs: the IP is locked and DigitalOcean answers 422.
        second = await api.assign(IP_NYC, 1002, deadline)
        assert second.action is not None
        await api.wait_action(second.action.id, deadline, ip=IP_NYC, expected_droplet_id=1002)
    assert sim.holder(IP_NYC) == 1002
    statuses = [e.status for e in sim.posts(IP_NYC)]
    assert statuses[0] == 201
    assert statuses[-1] == 201
    assert 422 in statuses[1:-1]
    pending = [e for e in sim.posts(IP_NYC) if e.status == 422]
    assert "pending event" in pending[0].response_json()["message"]
    # Between the 422 and the successful POST the client looked at the lock.
    after_422 = sim.exchanges[sim.exchanges.index(pending[0]) + 1]
    assert after_422.endpoint == "get_reserved_ip"
    assert (
        sample(
            metrics, "hafloatd_api_retries_total", endpoint="post_action", reason="pending_event"
        )
        >= 1
    )


async def test_pending_event_that_outlasts_the_deadline_raises_deadline_exceeded(
    simulator: Simulator,
) -> None:
    simulator.faults.stuck_actions(1, ip=IP_NYC)
    # Each wait between polls of the locked IP is longer than the deadline: a client that
    # started one would sleep far past the deadline (and the guard would fail the test).
    async with api_client(simulator, action_poll_interval=LONG_POLL_S) as api:
        first = await api.assign(IP_NYC, 1001, Deadline.after(5))
        assert first.action is not None
        async with asyncio.timeout(WAIT_PAST_DEADLINE_GUARD_S):
            with pytest.raises(DeadlineExceeded, match="pending action"):
                await api.assign(IP_NYC, 1002, Deadline.after(SHORT_DEADLINE_S))
    # It gave up on seeing the IP locked, rather than sleep past the deadline.
    assert simulator.locked(IP_NYC)
    assert [e.endpoint for e in simulator.exchanges[-2:]] == ["post_action", "get_reserved_ip"]
    simulator.finish_stuck_actions()


# --- unassign --------------------------------------------------------------------------------


async def test_unassign_returns_action_and_ip_ends_unassigned(simulator: Simulator) -> None:
    deadline = Deadline.after(5)
    async with api_client(simulator) as api:
        action = await api.unassign(IP_SFO, deadline)
        assert action is not None
        assert action.type == "unassign_ip"
        await api.wait_action(action.id, deadline, ip=IP_SFO, expected_droplet_id=None)
    assert simulator.holder(IP_SFO) is None
    [post] = simulator.posts(IP_SFO)
    assert post.request_json() == {"type": "unassign"}


async def test_unassign_of_unassigned_ip_returns_none(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        assert await api.unassign(IP_NYC, Deadline.after(5)) is None
    assert [e.status for e in simulator.posts(IP_NYC)] == [422]


# --- actions ---------------------------------------------------------------------------------


async def test_get_action_by_global_and_per_ip_path(simulator: Simulator) -> None:
    deadline = Deadline.after(5)
    async with api_client(simulator) as api:
        result = await api.assign(IP_NYC, 1001, deadline)
        assert result.action is not None
        await simulator.wait_idle(5)
        by_id = await api.get_action(result.action.id, deadline)
        by_ip = await api.get_action(result.action.id, deadline, ip=IP_NYC)
    assert by_id.completed and by_ip.completed
    assert by_id.id == by_ip.id == result.action.id
    paths = [e.path for e in simulator.requests("get_action")]
    paths += [e.path for e in simulator.requests("get_ip_action")]
    assert f"/v2/actions/{result.action.id}" in paths
    assert f"/v2/reserved_ips/{IP_NYC}/actions/{result.action.id}" in paths


async def test_errored_action_raises_action_failed_with_action_id(simulator: Simulator) -> None:
    simulator.faults.errored_actions(1, ip=IP_NYC)
    deadline = Deadline.after(5)
    async with api_client(simulator) as api:
        result = await api.assign(IP_NYC, 1001, deadline)
        assert result.action is not None
        with pytest.raises(ActionFailed) as info:
            await api.wait_action(result.action.id, deadline, ip=IP_NYC, expected_droplet_id=1001)
    assert info.value.action_id == result.action.id
    assert str(result.action.id) in str(info.value)
    assert "errored" in str(info.value)
    assert simulator.holder(IP_NYC) is None


async def test_stuck_action_raises_deadline_exceeded_within_the_deadline(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polls of a stuck action: the deadline ends the wait. With fast polls, it stops polling
    # (it never sends a poll the deadline leaves no time for); with polls spaced wider than the
    # deadline, it gives up at the first poll still in progress instead of starting a wait
    # that would end past the deadline (the guard would fail a client that slept).
    watch = WaitWatch(monkeypatch)
    for poll_interval in (0.02, LONG_POLL_S):
        simulator.force_holder(IP_NYC, None)
        simulator.faults.stuck_actions(1, ip=IP_NYC)
        async with api_client(simulator, action_poll_interval=poll_interval) as api:
            result = await api.assign(IP_NYC, 1001, Deadline.after(5))
            assert result.action is not None
            async with asyncio.timeout(WAIT_PAST_DEADLINE_GUARD_S):
                with pytest.raises(DeadlineExceeded) as info:
                    await api.wait_action(
                        result.action.id,
                        watch.deadline(SHORT_DEADLINE_S),
                        ip=IP_NYC,
                        expected_droplet_id=1001,
                    )
        simulator.finish_stuck_actions()
        assert str(result.action.id) in str(info.value)  # it says which action
    assert "(status 'in-progress')" in str(info.value)  # and, polls spaced wide, why at once
    assert len(watch.waits) >= 2  # the fast polls waited between polls
    assert watch.waits_past_the_deadline() == []  # never a wait the deadline had no room for


async def test_action_lookup_404_falls_back_to_the_holder(simulator: Simulator) -> None:
    # BYOIP: the action cannot be looked up; the reserved IP itself tells the truth.
    simulator.faults.server_errors(None, endpoint="get_action,get_ip_action", status=404)
    deadline = Deadline.after(5)
    async with api_client(simulator) as api:
        result = await api.assign(IP_NYC, 1001, deadline)
        assert result.action is not None
        done = await api.wait_action(
            result.action.id, deadline, ip=IP_NYC, expected_droplet_id=1001
        )
    assert done == Action(result.action.id, "completed", "assign_ip", None, None)
    assert simulator.holder(IP_NYC) == 1001
    assert simulator.requests("get_reserved_ip")


async def test_action_lookup_404_with_wrong_holder_is_action_failed(simulator: Simulator) -> None:
    simulator.faults.server_errors(None, endpoint="get_action,get_ip_action", status=404)
    simulator.faults.errored_actions(1, ip=IP_NYC)
    deadline = Deadline.after(5)
    async with api_client(simulator) as api:
        result = await api.assign(IP_NYC, 1001, deadline)
        assert result.action is not None
        with pytest.raises(ActionFailed) as info:
            await api.wait_action(result.action.id, deadline, ip=IP_NYC, expected_droplet_id=1001)
    assert info.value.action_id == result.action.id
    assert "404" in str(info.value)


async def test_action_lookup_404_without_ip_is_not_found(simulator: Simulator) -> None:
    simulator.faults.server_errors(1, endpoint="get_action", status=404)
    async with api_client(simulator) as api:
        with pytest.raises(ApiNotFound):
            await api.wait_action(2_300_000_001, Deadline.after(5))


# --- path families ---------------------------------------------------------------------------


async def test_floating_ips_path_family_uses_the_older_paths(simulator: Simulator) -> None:
    deadline = Deadline.after(5)
    async with api_client(simulator, path_family="floating_ips") as api:
        view = await api.get_reserved_ip(IP_SFO, deadline)
        result = await api.assign(IP_NYC, 1001, deadline)
        assert result.action is not None
        await api.wait_action(result.action.id, deadline, ip=IP_NYC, expected_droplet_id=1001)
        unassigned = await api.unassign(IP_SFO, deadline)
        await api.keep_warm(deadline)
    assert view.droplet_id == 1003
    assert unassigned is not None
    assert simulator.holder(IP_NYC) == 1001
    paths = [e.path for e in simulator.exchanges]
    assert all(p.startswith("/v2/floating_ips") for p in paths), paths
    assert f"/v2/floating_ips/{IP_NYC}/actions" in paths


async def test_floating_ips_family_handles_already_held(simulator: Simulator) -> None:
    async with api_client(simulator, path_family="floating_ips") as api:
        result = await api.assign(IP_SFO, 1003, Deadline.after(5))
    assert result == AssignResult(None, True)
