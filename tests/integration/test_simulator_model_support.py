"""What a model-based test of the controller reads and drives: the holder timeline, slow
actions, the metadata lag at run time, out-of-band moves and assign POSTs by droplet."""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from hafloatd.lab.sim import SimApiError, Simulator
from tests.sim_fixtures import (
    DEFAULT_TOKEN,
    IP_NYC,
    IP_SFO,
    MakeSimulator,
    default_scenario,
    move_ip,
)

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
TIMEOUT = aiohttp.ClientTimeout(total=5)
UNKNOWN_IP = "198.51.100.1"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH, timeout=TIMEOUT) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, sim: Simulator, ip: str, body: dict[str, Any]
) -> tuple[int, Any]:
    async with http.post(f"{sim.api_url}/v2/reserved_ips/{ip}/actions", json=body) as response:
        return response.status, await response.json()


async def get_ip(http: aiohttp.ClientSession, sim: Simulator, ip: str) -> Any:
    async with http.get(f"{sim.api_url}/v2/reserved_ips/{ip}") as response:
        assert response.status == 200
        return (await response.json())["reserved_ip"]


# --- the holder timeline --------------------------------------------------------------------


async def test_holder_history_starts_with_the_initial_holder_and_records_each_change(
    simulator: Simulator,
) -> None:
    assert [holder for _, holder in simulator.holder_history(IP_SFO)] == [1003]
    ((started_at, initial),) = simulator.holder_history(IP_NYC)
    assert initial is None
    await move_ip(simulator, IP_NYC, 1001)
    await move_ip(simulator, IP_NYC, 1002)
    simulator.move_out_of_band(IP_NYC, None)
    await simulator.wait_holder(IP_NYC, None)

    history = simulator.holder_history(IP_NYC)
    assert [holder for _, holder in history] == [None, 1001, 1002, None]
    times = [at for at, _ in history]
    assert times == sorted(times)
    assert times[0] == started_at
    for at, holder in history:
        assert simulator.holder_at(IP_NYC, at) == holder
    assert simulator.holder_at(IP_NYC, started_at - 3600) is None  # before start: the initial
    assert simulator.holder_at(IP_NYC, time.monotonic()) is None
    # One clock with the recorded exchanges: each move lands after the POST that asked for it.
    first, second = simulator.posts(IP_NYC)
    assert first.received_monotonic <= times[1] and second.received_monotonic <= times[2]
    assert simulator.holder_at(IP_NYC, first.received_monotonic) is None
    assert simulator.holder_at(IP_NYC, second.received_monotonic) == 1001


async def test_holder_history_ignores_a_move_to_the_same_holder(simulator: Simulator) -> None:
    simulator.force_holder(IP_SFO, 1003)
    assert [holder for _, holder in simulator.holder_history(IP_SFO)] == [1003]
    simulator.force_holder(IP_SFO, None)
    assert [holder for _, holder in simulator.holder_history(IP_SFO)] == [1003, None]


async def test_holder_history_of_an_unknown_ip_is_a_key_error(simulator: Simulator) -> None:
    with pytest.raises(KeyError, match=re.escape(UNKNOWN_IP)):
        simulator.holder_history(UNKNOWN_IP)
    with pytest.raises(KeyError, match=re.escape(UNKNOWN_IP)):
        simulator.holder_at(UNKNOWN_IP, time.monotonic())


# --- slow actions ---------------------------------------------------------------------------


async def test_a_slow_action_stays_pending_while_an_ordinary_one_completes(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(default_scenario(action_delay=0))
    fault = sim.faults.slow_actions(30, count=1, ip=IP_NYC)
    status, body = await post(http, sim, IP_NYC, {"type": "assign", "droplet_id": 1001})
    assert status == 201
    # An action on the other IP (action_delay 0) starts later and finishes first.
    sim.move_out_of_band(IP_SFO, None)
    await sim.wait_holder(IP_SFO, None)
    (slow,) = [a for a in sim.actions(IP_NYC) if a.id == body["action"]["id"]]
    assert slow.pending
    assert sim.locked(IP_NYC)
    assert (await get_ip(http, sim, IP_NYC))["locked"] is True
    assert fault.hits == 1
    assert fault not in sim.faults.active()  # count 1: used up


async def test_a_slow_action_completes_after_its_extra_delay(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(default_scenario(action_delay=0))
    sim.faults.slow_actions(0.05, count=2)
    assert (await post(http, sim, IP_NYC, {"type": "assign", "droplet_id": 1001}))[0] == 201
    await sim.wait_holder(IP_NYC, 1001, timeout=5)
    await sim.wait_idle(5)
    assert [a.status for a in sim.actions(IP_NYC)][-1] == "completed"


async def test_a_slow_fault_combines_with_errored_and_is_left_for_after_a_stuck_one(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.stuck_actions(1)
    slow = simulator.faults.slow_actions(0.05, count=1)
    assert (await post(http, simulator, IP_NYC, {"type": "assign", "droplet_id": 1001}))[0] == 201
    assert (slow.hits, slow in simulator.faults.active()) == (0, True)  # stuck: not consumed
    simulator.finish_stuck_actions("completed")
    await simulator.wait_holder(IP_NYC, 1001)
    simulator.faults.errored_actions(1)
    assert (await post(http, simulator, IP_NYC, {"type": "assign", "droplet_id": 1002}))[0] == 201
    assert slow.hits == 1
    await simulator.wait_idle(5)
    assert simulator.actions(IP_NYC)[-1].status == "errored"
    assert simulator.holder(IP_NYC) == 1001


async def test_slow_actions_can_be_installed_over_http(simulator: Simulator) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as admin:
        url = f"{simulator.api_url}/_sim/faults"
        async with admin.post(url, json={"kind": "action_slow", "delay_s": 2}) as response:
            assert response.status == 201
            assert (await response.json())["fault"]["kind"] == "action_slow"
        async with admin.post(url, json={"kind": "action_slow"}) as response:
            assert response.status == 400
            assert "delay_s" in (await response.json())["error"]


# --- the metadata lag at run time ------------------------------------------------------------


async def test_set_metadata_lag_changes_what_the_metadata_shows_at_once(
    simulator: Simulator,
) -> None:
    assert simulator.metadata_lag_s == 0.0
    await move_ip(simulator, IP_NYC, 1001)
    url = f"{simulator.metadata_url(1001)}/reserved_ip/ipv4/active"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.get(url) as response:
            assert await response.text() == "true"
        simulator.set_metadata_lag(3600)  # an hour ago, before the move: stale
        assert simulator.metadata_lag_s == 3600
        async with http.get(url) as response:
            assert await response.text() == "false"
        assert simulator.metadata_view(1001)["reserved_ip"]["ipv4"] == {"active": False}
        simulator.set_metadata_lag(0)
        async with http.get(url) as response:
            assert await response.text() == "true"


@pytest.mark.parametrize(
    ("lag", "error"),
    [(-0.1, ValueError), (math.inf, ValueError), (math.nan, ValueError), ("1", TypeError),
     (True, TypeError)],
)  # fmt: skip
async def test_set_metadata_lag_refuses_what_is_not_a_duration(
    simulator: Simulator, lag: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="metadata lag"):
        simulator.set_metadata_lag(lag)
    assert simulator.metadata_lag_s == 0.0


# --- out-of-band moves ------------------------------------------------------------------------


async def test_an_out_of_band_move_is_an_action_that_locks_the_ip_until_it_completes(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.stuck_actions(1)  # hold it in progress: the locked window without timing
    action = simulator.move_out_of_band(IP_NYC, 1002)
    assert (action.type, action.droplet_id, action.origin) == ("assign_ip", 1002, "out_of_band")
    assert action.pending and simulator.locked(IP_NYC)
    assert (await get_ip(http, simulator, IP_NYC))["locked"] is True
    status, body = await post(http, simulator, IP_NYC, {"type": "assign", "droplet_id": 1001})
    assert (status, body["message"]) == (422, "The floating IP already has a pending event.")
    async with http.get(f"{simulator.api_url}/v2/actions/{action.id}") as response:
        assert (await response.json())["action"]["status"] == "in-progress"

    assert simulator.finish_stuck_actions() == 1
    await simulator.wait_holder(IP_NYC, 1002)
    assert not simulator.locked(IP_NYC)
    assert [e.request_json() for e in simulator.posts(IP_NYC)] == [
        {"type": "assign", "droplet_id": 1001}
    ]  # the move itself sent no HTTP


async def test_an_out_of_band_move_completes_after_the_action_delay(simulator: Simulator) -> None:
    simulator.move_out_of_band(IP_SFO, None)
    await simulator.wait_holder(IP_SFO, None)
    assert [a.type for a in simulator.actions(IP_SFO) if a.origin == "out_of_band"] == [
        "unassign_ip"
    ]


@pytest.mark.parametrize(
    ("ip", "droplet_id", "status", "message"),
    [
        (IP_NYC, 1003, 422, "The floating IP and the Droplet must be in the same region."),
        (IP_NYC, 424242, 404, "The resource you were accessing could not be found."),
        (IP_NYC, None, 422, "The floating IP is not assigned to a Droplet."),
        (IP_SFO, 1003, 422, "Droplet already has a floating IP assigned."),
    ],
)
async def test_an_out_of_band_move_obeys_digitaloceans_rules(
    simulator: Simulator, ip: str, droplet_id: int | None, status: int, message: str
) -> None:
    with pytest.raises(SimApiError) as refused:
        simulator.move_out_of_band(ip, droplet_id)
    assert (refused.value.status, refused.value.message) == (status, message)
    assert not simulator.locked(ip)


async def test_an_out_of_band_move_of_an_unknown_ip_is_a_key_error(simulator: Simulator) -> None:
    with pytest.raises(KeyError, match=re.escape(UNKNOWN_IP)):
        simulator.move_out_of_band(UNKNOWN_IP, 1001)


# --- assign POSTs by droplet ------------------------------------------------------------------


async def test_posts_filter_the_assigns_by_target_droplet_whatever_their_answer(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    def assign(droplet_id: object) -> dict[str, Any]:
        return {"type": "assign", "droplet_id": droplet_id}

    simulator.faults.stuck_actions(1)
    assert (await post(http, simulator, IP_NYC, assign(1001)))[0] == 201
    assert (await post(http, simulator, IP_NYC, assign(1002)))[0] == 422  # locked
    with simulator.expect_invalid_requests("the recipe sends droplet_id as a string, as DO did"):
        assert (await post(http, simulator, IP_NYC, assign("1001")))[0] == 422  # locked
    simulator.finish_stuck_actions()
    await simulator.wait_holder(IP_NYC, 1001)
    assert (await post(http, simulator, IP_NYC, {"type": "unassign"}))[0] == 201

    to_1001 = simulator.posts(IP_NYC, droplet_id=1001)
    assert [(e.status, e.state_changed) for e in to_1001] == [(201, True), (422, False)]
    assert [e.status for e in simulator.posts(droplet_id=1002)] == [422]
    assert simulator.posts(IP_SFO, droplet_id=1001) == []
    assert len(simulator.posts(IP_NYC)) == 4
