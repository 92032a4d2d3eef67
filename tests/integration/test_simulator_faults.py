"""Fault injection, switched at run time through the ``/_sim`` admin endpoints (and Python)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from hafloatd.lab.sim import FaultError, FaultInjector, Simulator
from tests.sim_fixtures import DEFAULT_TOKEN, IP_NYC, IP_SFO, MakeSimulator, default_scenario

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
TIMEOUT = aiohttp.ClientTimeout(total=5)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH, timeout=TIMEOUT) as session:
        yield session


@pytest.fixture
async def admin() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:  # /_sim needs no token
        yield session


async def add_fault(admin: aiohttp.ClientSession, sim: Simulator, **fault: Any) -> dict[str, Any]:
    async with admin.post(f"{sim.api_url}/_sim/faults", json=fault) as response:
        body = await response.json()
        assert response.status == 201, body
        return dict(body["fault"])


async def get(http: aiohttp.ClientSession, sim: Simulator, path: str) -> tuple[int, Any, Any]:
    async with http.get(sim.api_url + path) as response:
        return response.status, await response.json(), response.headers


async def post_assign(
    http: aiohttp.ClientSession, sim: Simulator, ip: str, droplet_id: int
) -> tuple[int, Any]:
    async with http.post(
        f"{sim.api_url}/v2/reserved_ips/{ip}/actions",
        json={"type": "assign", "droplet_id": droplet_id},
    ) as response:
        return response.status, await response.json()


async def test_latency_holds_the_matching_request_only(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    # Behaviour, not a stopwatch: the delayed request is still unanswered while others (another
    # endpoint, then the same one once count=1 is used up) are answered. (A lower bound on the
    # elapsed time could flake: under uvloop a sleep may end ~1 ms early, its timers being
    # millisecond-grained.)
    fault_used = asyncio.Event()
    simulator.faults.subscribe(lambda: fault_used.set() if not simulator.faults.active() else None)
    await add_fault(
        admin, simulator, kind="latency", endpoint="get_reserved_ip", delay_s=60, count=1
    )
    held = asyncio.create_task(get(http, simulator, f"/v2/reserved_ips/{IP_NYC}"))
    try:
        await asyncio.wait_for(fault_used.wait(), 5)  # the server took it: the request is held
        assert (await get(http, simulator, "/v2/reserved_ips"))[0] == 200
        assert (await get(http, simulator, f"/v2/reserved_ips/{IP_NYC}"))[0] == 200
        assert [e.fault for e in simulator.exchanges] == [None, None]
        assert not held.done()
    finally:
        held.cancel()
    await simulator.stop()  # ends the held handler: its exchange is recorded
    (delayed,) = [e for e in simulator.exchanges if e.fault == "latency"]
    assert (delayed.path, delayed.status) == (f"/v2/reserved_ips/{IP_NYC}", None)


async def test_server_error_burst_answers_the_next_n_then_recovers(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    await add_fault(admin, simulator, kind="server_error", count=2, status=503)
    answers = [await get(http, simulator, "/v2/reserved_ips") for _ in range(3)]
    assert [a[0] for a in answers] == [503, 503, 200]
    assert answers[0][1]["id"] == "service_unavailable"
    assert "ratelimit-remaining" in answers[0][2]
    assert [e.fault for e in simulator.exchanges] == ["server_error", "server_error", None]


async def test_server_error_message_replaces_the_text_and_nothing_else(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    fault = await add_fault(
        admin, simulator, kind="server_error", status=401, count=1, message="bad token: x"
    )
    assert fault["message"] == "bad token: x"
    status, body, headers = await get(http, simulator, "/v2/reserved_ips")
    assert (status, body["id"], body["message"]) == (401, "unauthorized", "bad token: x")
    assert body["request_id"] == headers["x-request-id"]
    simulator.faults.server_errors(1, status=503)
    assert (await get(http, simulator, "/v2/reserved_ips"))[1]["message"] == (
        "Service temporarily unavailable"
    )


async def test_server_error_fault_can_make_action_lookups_404_like_byoip(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    status, body = await post_assign(http, simulator, IP_NYC, 1001)
    assert status == 201
    await add_fault(
        admin, simulator, kind="server_error", endpoint="get_action,get_ip_action", status=404
    )
    status, body, _ = await get(http, simulator, f"/v2/actions/{body['action']['id']}")
    assert (status, body["id"]) == (404, "not_found")
    assert (await get(http, simulator, f"/v2/reserved_ips/{IP_NYC}"))[0] == 200
    await simulator.wait_idle(2)


async def test_rate_limit_storm_answers_429_with_retry_after(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    await add_fault(admin, simulator, kind="rate_limit_storm", count=2, retry_after_s=2)
    status, body, headers = await get(http, simulator, f"/v2/reserved_ips/{IP_NYC}")
    assert (status, body["id"]) == (429, "too_many_requests")
    assert headers["retry-after"] == "2"
    assert headers["ratelimit-remaining"] == "0"
    assert int(headers["ratelimit-reset"]) >= int(time.time()) + 1
    assert (await get(http, simulator, "/v2/reserved_ips"))[0] == 429
    assert (await get(http, simulator, "/v2/reserved_ips"))[0] == 200


async def test_dropped_get_closes_the_connection_without_an_answer(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    # No count: aiohttp itself retries an idempotent request once after a disconnect.
    fault = await add_fault(admin, simulator, kind="drop_connection", endpoint="get_reserved_ip")
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, simulator, f"/v2/reserved_ips/{IP_NYC}")
    dropped = simulator.exchanges
    assert dropped and all(e.dropped and e.status is None for e in dropped)
    assert len({e.connection_id for e in dropped}) == len(dropped)  # each on a fresh connection
    async with admin.delete(f"{simulator.api_url}/_sim/faults/{fault['id']}"):
        pass
    assert (await get(http, simulator, f"/v2/reserved_ips/{IP_NYC}"))[0] == 200


async def test_dropped_post_still_starts_the_action_a_post_of_unknown_fate(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    await add_fault(admin, simulator, kind="drop_connection", endpoint="post_action", count=1)
    with pytest.raises(aiohttp.ClientConnectionError):
        await post_assign(http, simulator, IP_NYC, 1001)
    post = simulator.posts(IP_NYC)[-1]
    assert (post.dropped, post.state_changed) == (True, True)
    await simulator.wait_idle(2)
    assert simulator.holder(IP_NYC) == 1001
    assert simulator.counters.posts_per_ip[IP_NYC] == 1
    assert simulator.counters.actions_created_per_ip[IP_NYC] == 1  # though no 201 arrived


async def test_a_drop_after_state_change_waits_for_a_post_that_reaches_the_operation(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.rate_limit_storm(1, endpoint="post_action")
    simulator.faults.drop_connections(1, endpoint="post_action")
    assert (await post_assign(http, simulator, IP_NYC, 1001))[0] == 429
    with pytest.raises(aiohttp.ClientConnectionError):
        await post_assign(http, simulator, IP_NYC, 1001)
    assert [(e.status, e.dropped) for e in simulator.posts(IP_NYC)] == [(429, False), (None, True)]
    await simulator.wait_holder(IP_NYC, 1001, 2)


async def test_drop_before_handling_leaves_a_post_without_effect(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    await add_fault(
        admin, simulator, kind="drop_connection", endpoint="post_action", count=1,
        after_state_change=False,
    )  # fmt: skip
    with pytest.raises(aiohttp.ClientConnectionError):
        await post_assign(http, simulator, IP_NYC, 1001)
    assert simulator.posts(IP_NYC)[-1].state_changed is False
    assert not simulator.locked(IP_NYC)
    assert simulator.holder(IP_NYC) is None


async def test_errored_action_leaves_the_holder_unchanged_and_unlocks(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    await add_fault(admin, simulator, kind="action_errored", count=1)
    status, body = await post_assign(http, simulator, IP_NYC, 1001)
    assert (status, body["action"]["status"]) == (201, "in-progress")
    await simulator.wait_idle(2)
    _, action, _ = await get(http, simulator, f"/v2/actions/{body['action']['id']}")
    assert action["action"]["status"] == "errored"
    assert action["action"]["completed_at"] is not None
    assert simulator.holder(IP_NYC) is None
    assert not simulator.locked(IP_NYC)
    status, _ = await post_assign(http, simulator, IP_NYC, 1001)  # the next one works
    assert status == 201
    await simulator.wait_idle(2)
    assert simulator.holder(IP_NYC) == 1001


async def test_stuck_action_keeps_the_ip_locked_until_released(
    simulator: Simulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    await add_fault(admin, simulator, kind="action_stuck", count=1)
    _, body = await post_assign(http, simulator, IP_NYC, 1001)
    action_id = body["action"]["id"]
    await simulator.wait_idle(1)  # stuck actions do not count as pending work
    _, view, _ = await get(http, simulator, f"/v2/reserved_ips/{IP_NYC}")
    assert view["reserved_ip"]["locked"] is True
    assert (await post_assign(http, simulator, IP_NYC, 1002))[0] == 422
    _, action, _ = await get(http, simulator, f"/v2/reserved_ips/{IP_NYC}/actions/{action_id}")
    assert action["action"]["status"] == "in-progress"
    async with admin.post(
        f"{simulator.api_url}/_sim/actions/finish-stuck", json={"status": "completed"}
    ) as response:
        assert (await response.json()) == {"finished": 1}
    assert simulator.holder(IP_NYC) == 1001
    assert not simulator.locked(IP_NYC)


async def test_metadata_faults_are_switchable_over_http(
    simulator: Simulator, admin: aiohttp.ClientSession
) -> None:
    fault = await add_fault(admin, simulator, kind="metadata_empty", droplet_id=1003)
    async with admin.get(f"{simulator.metadata_url(1003)}/reserved_ip/ipv4/active") as response:
        assert (response.status, await response.text()) == (200, "")
    async with admin.delete(f"{simulator.api_url}/_sim/faults/{fault['id']}") as response:
        assert response.status == 200
    async with admin.get(f"{simulator.metadata_url(1003)}/reserved_ip/ipv4/active") as response:
        assert await response.text() == "true"
    await add_fault(admin, simulator, kind="metadata_down", droplet_id=1003)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with admin.get(f"{simulator.metadata_url(1003)}/id") as response:
            await response.text()


async def test_faults_can_be_listed_removed_and_cleared(
    simulator: Simulator, admin: aiohttp.ClientSession
) -> None:
    first = await add_fault(admin, simulator, kind="latency", delay_s=0.01)
    await add_fault(admin, simulator, kind="server_error", endpoint="post_action", ip=IP_SFO)
    async with admin.get(f"{simulator.api_url}/_sim/faults") as response:
        listed = (await response.json())["faults"]
    assert [f["kind"] for f in listed] == ["latency", "server_error"]
    assert listed[1]["endpoint"] == "post_action"
    async with admin.delete(f"{simulator.api_url}/_sim/faults/{first['id']}") as response:
        assert response.status == 200
    async with admin.delete(f"{simulator.api_url}/_sim/faults/{first['id']}") as response:
        assert response.status == 404
    async with admin.delete(f"{simulator.api_url}/_sim/faults") as response:
        assert await response.json() == {"removed": 1}
    assert simulator.faults.active() == []


@pytest.mark.parametrize(
    ("fault", "complaint"),
    [
        ({"kind": "meteor"}, "unknown fault kind"),
        ({"kind": "server_error", "endpoint": "get_everything"}, "unknown endpoint"),
        ({"kind": "server_error", "status": 200}, "status"),
        ({"kind": "latency"}, "delay_s"),
        ({"kind": "server_error", "count": 0}, "count"),
        ({"kind": "server_error", "colour": "red"}, "unknown field"),
        ({"kind": "latency", "delay_s": 1, "message": "x"}, "message"),
        ({"kind": "server_error", "message": 7}, "message"),
    ],
)
async def test_bad_fault_requests_get_400_naming_the_field(
    simulator: Simulator, admin: aiohttp.ClientSession, fault: dict[str, Any], complaint: str
) -> None:
    async with admin.post(f"{simulator.api_url}/_sim/faults", json=fault) as response:
        assert response.status == 400
        assert complaint in (await response.json())["error"]


async def test_faults_target_one_ip_when_asked(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.server_errors(None, ip=IP_SFO)
    assert (await get(http, simulator, f"/v2/reserved_ips/{IP_SFO}"))[0] == 500
    assert (await get(http, simulator, f"/v2/reserved_ips/{IP_NYC}"))[0] == 200


def test_python_fault_api_validates_arguments() -> None:
    faults = FaultInjector()
    with pytest.raises(FaultError, match="metadata_down lasts until removed"):
        faults.add("metadata_down", count=1)
    fault = faults.rate_limit_storm(1, retry_after_s=3)
    assert faults.take("rate_limit_storm", endpoint="get_action") is fault
    assert faults.active() == []  # a count of one is used up by one hit


async def test_admin_state_reports_holders_locks_and_counters_without_tokens(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession, admin: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(default_scenario(action_delay=0.5))
    await post_assign(http, sim, IP_NYC, 1001)
    async with admin.get(f"{sim.api_url}/_sim/state") as response:
        raw = await response.text()
    assert DEFAULT_TOKEN not in raw
    state = json.loads(raw)
    assert state["reserved_ips"][IP_NYC]["locked"] is True
    assert state["reserved_ips"][IP_SFO]["holder"] == 1003
    assert state["droplets"]["1001"]["busy"] is True
    assert state["counters"]["posts_per_ip"] == {IP_NYC: 1}
    async with admin.post(f"{sim.api_url}/_sim/wait-idle?timeout=3") as response:
        assert response.status == 200
    async with admin.get(f"{sim.api_url}/_sim/exchanges?since=0") as response:
        exchanges = (await response.json())["exchanges"]
    assert [e["endpoint"] for e in exchanges] == ["post_action"]
    assert exchanges[0]["request_headers"]["Authorization"] == "***"


async def test_admin_moves_the_ip_and_sets_backends(
    simulator: Simulator, admin: aiohttp.ClientSession
) -> None:
    async with admin.put(
        f"{simulator.api_url}/_sim/reserved_ips/{IP_NYC}/holder", json={"droplet_id": 1002}
    ) as response:
        assert response.status == 200
    assert simulator.holder(IP_NYC) == 1002
    async with admin.put(
        f"{simulator.api_url}/_sim/reserved_ips/{IP_NYC}/holder", json={"droplet_id": 1003}
    ) as response:
        assert response.status == 409  # another region
    async with admin.put(
        f"{simulator.api_url}/_sim/droplets/1002/backend", json={"backend": "127.0.0.1:8081"}
    ) as response:
        assert response.status == 200
    assert simulator.state_snapshot()["droplets"]["1002"]["backend"] == "127.0.0.1:8081"
    assert simulator.exchanges == []  # admin traffic is not recorded
