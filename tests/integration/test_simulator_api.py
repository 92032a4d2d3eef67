"""The simulated DigitalOcean API: shapes, auth, rate limits, actions and their refusals.

Every exchange here is also validated against DigitalOcean's OpenAPI spec by the fixtures.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from hafloatd.lab.sim import SimDroplet, SimReservedIp, Simulator
from tests.sim_fixtures import DEFAULT_TOKEN, IP_NYC, IP_SFO, MakeSimulator, default_scenario

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    sim: Simulator,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with http.request(method, sim.api_url + path, json=body, headers=headers) as response:
        payload = await response.json() if response.content_length != 0 else None
        return response.status, payload, response.headers


async def assign(http: aiohttp.ClientSession, sim: Simulator, ip: str, droplet_id: int) -> Any:
    return await call(
        http,
        sim,
        "POST",
        f"/v2/reserved_ips/{ip}/actions",
        {"type": "assign", "droplet_id": droplet_id},
    )


# --- shapes -------------------------------------------------------------------------------


async def test_unassigned_reserved_ip_has_null_droplet_and_full_region(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(http, simulator, "GET", f"/v2/reserved_ips/{IP_NYC}")
    assert status == 200
    rip = body["reserved_ip"]
    assert rip["ip"] == IP_NYC
    assert rip["droplet"] is None
    assert rip["locked"] is False
    assert rip["region"]["slug"] == "nyc3"
    assert rip["region"]["name"] == "New York 3"
    assert {"features", "available", "sizes"} <= set(rip["region"])
    uuid.UUID(rip["project_id"])


async def test_held_reserved_ip_embeds_the_full_droplet(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(http, simulator, "GET", f"/v2/reserved_ips/{IP_SFO}")
    assert status == 200
    droplet = body["reserved_ip"]["droplet"]
    assert droplet["id"] == 1003
    assert droplet["name"] == "node3"
    assert droplet["region"]["slug"] == "sfo3"
    assert droplet["status"] == "active"


async def test_droplet_lists_its_reserved_ip_as_a_second_public_network(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(http, simulator, "GET", "/v2/droplets/1003")
    assert status == 200
    public = [n["ip_address"] for n in body["droplet"]["networks"]["v4"] if n["type"] == "public"]
    assert public == ["192.0.2.13", IP_SFO]
    status, body, _ = await call(http, simulator, "GET", "/v2/droplets/1001")
    public = [n["ip_address"] for n in body["droplet"]["networks"]["v4"] if n["type"] == "public"]
    assert public == ["192.0.2.11"]


async def test_list_paginates_with_links_and_meta_total(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, first, _ = await call(http, simulator, "GET", "/v2/reserved_ips?per_page=1")
    assert status == 200
    assert [r["ip"] for r in first["reserved_ips"]] == [IP_NYC]
    assert first["meta"] == {"total": 2}
    pages = first["links"]["pages"]
    assert pages["next"] == f"{simulator.api_url}/v2/reserved_ips?page=2&per_page=1"
    assert pages["last"] == pages["next"]
    assert "prev" not in pages
    status, second, _ = await call(http, simulator, "GET", "/v2/reserved_ips?page=2&per_page=1")
    assert [r["ip"] for r in second["reserved_ips"]] == [IP_SFO]
    assert set(second["links"]["pages"]) == {"first", "prev"}
    status, whole, _ = await call(http, simulator, "GET", "/v2/reserved_ips")
    assert whole["links"] == {}
    assert len(whole["reserved_ips"]) == 2


async def test_floating_ip_family_uses_floating_keys_and_resource_type(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(http, simulator, "GET", "/v2/floating_ips")
    assert status == 200
    assert [r["ip"] for r in body["floating_ips"]] == [IP_NYC, IP_SFO]
    status, body, _ = await call(http, simulator, "GET", f"/v2/floating_ips/{IP_SFO}")
    assert body["floating_ip"]["droplet"]["id"] == 1003
    status, body, _ = await call(
        http,
        simulator,
        "POST",
        f"/v2/floating_ips/{IP_NYC}/actions",
        {"type": "assign", "droplet_id": 1001},
    )
    assert status == 201
    action = body["action"]
    assert (action["type"], action["resource_type"]) == ("assign_ip", "floating_ip")
    await simulator.wait_idle(2)
    status, body, _ = await call(
        http, simulator, "GET", f"/v2/floating_ips/{IP_NYC}/actions/{action['id']}"
    )
    assert (body["action"]["status"], body["action"]["resource_type"]) == (
        "completed",
        "floating_ip",
    )
    status, body, _ = await call(http, simulator, "GET", f"/v2/floating_ips/{IP_NYC}/actions")
    assert body["actions"][0]["id"] == action["id"]
    assert all(a["resource_type"] == "floating_ip" for a in body["actions"])


# --- auth ---------------------------------------------------------------------------------


async def test_missing_token_gets_401_unauthorized_with_request_id(simulator: Simulator) -> None:
    async with aiohttp.ClientSession() as anonymous:
        status, body, headers = await call(
            anonymous, simulator, "GET", f"/v2/reserved_ips/{IP_NYC}"
        )
    assert status == 401
    assert body["id"] == "unauthorized"
    assert body["message"] == "Unable to authenticate you"
    assert body["request_id"] == headers["x-request-id"]


async def test_unknown_token_gets_401(simulator: Simulator) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer wrong"}) as wrong:
        status, body, _ = await call(wrong, simulator, "GET", "/v2/reserved_ips")
    assert (status, body["id"]) == (401, "unauthorized")


async def test_read_only_token_reads_but_gets_403_forbidden_on_post(
    make_simulator: MakeSimulator,
) -> None:
    sim = await make_simulator(default_scenario(read_only_tokens=("read-only",)))
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer read-only"}) as session:
        status, _, _ = await call(session, sim, "GET", f"/v2/reserved_ips/{IP_NYC}")
        assert status == 200
        status, body, _ = await assign(session, sim, IP_NYC, 1001)
    assert (status, body["id"]) == (403, "forbidden")
    assert sim.actions(IP_NYC)[-1].type == "reserve_ip"  # nothing was started


# --- rate limits --------------------------------------------------------------------------


async def test_every_answer_carries_ratelimit_headers_and_a_request_id(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    before = int(time.time())
    for path in (f"/v2/reserved_ips/{IP_NYC}", "/v2/droplets/999999", "/v2/actions/1"):
        _, _, headers = await call(http, simulator, "GET", path)
        assert headers["ratelimit-limit"] == "5000"
        assert int(headers["ratelimit-remaining"]) < 5000
        assert int(headers["ratelimit-reset"]) >= before
        uuid.UUID(headers["x-request-id"])


async def test_ratelimit_remaining_counts_down_per_token(
    make_simulator: MakeSimulator,
) -> None:
    sim = await make_simulator(default_scenario(tokens=("token-a", "token-b")))
    remaining: dict[str, list[int]] = {"token-a": [], "token-b": []}
    for token in ("token-a", "token-a", "token-b"):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
            _, _, headers = await call(s, sim, "GET", "/v2/reserved_ips")
            remaining[token].append(int(headers["ratelimit-remaining"]))
    assert remaining == {"token-a": [4999, 4998], "token-b": [4999]}


async def test_per_minute_burst_gets_429_with_retry_after(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(default_scenario(rate_limit_per_minute=3))
    statuses = []
    for _ in range(4):
        status, body, headers = await call(http, sim, "GET", "/v2/reserved_ips")
        statuses.append(status)
    assert statuses == [200, 200, 200, 429]
    assert body["id"] == "too_many_requests"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["ratelimit-remaining"] == "4997"  # refused requests are not counted


async def test_hourly_quota_exhausted_gets_429_with_reset_and_no_retry_after(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(default_scenario(rate_limit_per_hour=2))
    for _ in range(2):
        status, _, _ = await call(http, sim, "GET", "/v2/reserved_ips")
        assert status == 200
    status, body, headers = await call(http, sim, "GET", "/v2/reserved_ips")
    assert (status, body["id"]) == (429, "too_many_requests")
    assert headers["ratelimit-remaining"] == "0"
    assert "retry-after" not in headers
    assert int(headers["ratelimit-reset"]) > time.time() + 3000


async def test_minute_window_slides_so_a_client_honouring_retry_after_gets_through(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(
        default_scenario(rate_limit_per_minute=1, rate_limit_minute_window_s=0.3)
    )
    assert (await call(http, sim, "GET", "/v2/reserved_ips"))[0] == 200
    status, _, headers = await call(http, sim, "GET", "/v2/reserved_ips")
    assert status == 429
    assert headers["retry-after"] == "1"  # whole seconds, rounded up
    # Poll the condition (a short window, not retry-after's whole second) with a deadline.
    async with asyncio.timeout(5):
        while (await call(http, sim, "GET", "/v2/reserved_ips"))[0] != 200:
            await asyncio.sleep(0.05)


# --- actions ------------------------------------------------------------------------------


async def test_assign_answers_201_in_progress_and_moves_the_ip_only_on_completion(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(default_scenario(action_delay=0.3))
    status, body, _ = await assign(http, sim, IP_NYC, 1001)
    assert status == 201
    action = body["action"]
    assert action["status"] == "in-progress"
    assert action["type"] == "assign_ip"
    assert action["resource_type"] == "reserved_ip"
    assert action["resource_id"] == int(ipaddress.IPv4Address(IP_NYC))
    assert action["completed_at"] is None
    assert action["region_slug"] == "nyc3"
    assert sim.holder(IP_NYC) is None
    _, view, _ = await call(http, sim, "GET", f"/v2/reserved_ips/{IP_NYC}")
    assert view["reserved_ip"]["locked"] is True
    assert view["reserved_ip"]["droplet"] is None
    await sim.wait_idle(3)
    assert sim.holder(IP_NYC) == 1001
    _, view, _ = await call(http, sim, "GET", f"/v2/reserved_ips/{IP_NYC}")
    assert view["reserved_ip"]["locked"] is False
    assert view["reserved_ip"]["droplet"]["id"] == 1001
    _, done, _ = await call(http, sim, "GET", f"/v2/actions/{action['id']}")
    assert done["action"]["status"] == "completed"
    assert done["action"]["completed_at"] >= done["action"]["started_at"]


async def test_failover_moves_the_ip_from_one_node_to_the_other(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    assert (await assign(http, simulator, IP_NYC, 1001))[0] == 201
    await simulator.wait_idle(2)
    assert (await assign(http, simulator, IP_NYC, 1002))[0] == 201
    await simulator.wait_idle(2)
    assert simulator.holder(IP_NYC) == 1002
    _, node1, _ = await call(http, simulator, "GET", "/v2/droplets/1001")
    assert [n for n in node1["droplet"]["networks"]["v4"] if n["ip_address"] == IP_NYC] == []


async def test_action_delay_zero_completes_right_after_the_post(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(default_scenario(action_delay=0))
    status, body, _ = await assign(http, sim, IP_NYC, 1002)
    assert (status, body["action"]["status"]) == (201, "in-progress")
    await sim.wait_idle(1)
    status, body, _ = await call(
        http, sim, "GET", f"/v2/reserved_ips/{IP_NYC}/actions/{body['action']['id']}"
    )
    assert body["action"]["status"] == "completed"
    assert sim.holder(IP_NYC) == 1002


async def test_unassign_leaves_the_ip_reserved_to_nobody(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(
        http, simulator, "POST", f"/v2/reserved_ips/{IP_SFO}/actions", {"type": "unassign"}
    )
    assert (status, body["action"]["type"]) == (201, "unassign_ip")
    await simulator.wait_idle(2)
    assert simulator.holder(IP_SFO) is None


async def test_second_post_while_pending_gets_422_pending_event(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(default_scenario(action_delay=0.5))
    assert (await assign(http, sim, IP_NYC, 1001))[0] == 201
    status, body, _ = await assign(http, sim, IP_NYC, 1002)
    assert status == 422
    assert body == {
        "id": "unprocessable_entity",
        "message": "The floating IP already has a pending event.",
        "request_id": body["request_id"],
    }
    status, body, _ = await call(
        http, sim, "POST", f"/v2/reserved_ips/{IP_NYC}/actions", {"type": "unassign"}
    )
    assert (status, body["message"]) == (422, "The floating IP already has a pending event.")
    await sim.wait_idle(3)
    assert sim.holder(IP_NYC) == 1001


async def test_post_naming_a_droplet_with_a_pending_event_gets_422(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    second_nyc_ip = "203.0.113.11"
    scenario = default_scenario(action_delay=0.5)
    scenario = default_scenario(
        action_delay=0.5,
        reserved_ips=(*scenario.reserved_ips, SimReservedIp(ip=second_nyc_ip, region="nyc3")),
    )
    sim = await make_simulator(scenario)
    assert (await assign(http, sim, IP_NYC, 1001))[0] == 201
    status, body, _ = await assign(http, sim, second_nyc_ip, 1001)
    assert (status, body["message"]) == (422, "Droplet already has a pending event.")
    await sim.wait_idle(3)


async def test_assigning_to_the_current_holder_gets_422(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await assign(http, simulator, IP_SFO, 1003)
    assert (status, body["id"]) == (422, "unprocessable_entity")
    assert body["message"] == "Droplet already has a floating IP assigned."


async def test_assigning_to_a_droplet_in_another_region_gets_422(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await assign(http, simulator, IP_NYC, 1003)
    assert status == 422
    assert body["message"] == "The floating IP and the Droplet must be in the same region."
    assert simulator.holder(IP_NYC) is None


async def test_assigning_to_a_droplet_holding_another_reserved_ip_gets_422(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    scenario = default_scenario()
    scenario = default_scenario(
        reserved_ips=(
            *scenario.reserved_ips,
            SimReservedIp(ip="203.0.113.11", region="nyc3", droplet_id=1001),
        )
    )
    sim = await make_simulator(scenario)
    status, body, _ = await assign(http, sim, IP_NYC, 1001)
    assert (status, body["message"]) == (422, "Droplet already has a floating IP assigned.")


async def test_unassigning_an_unassigned_ip_gets_422(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await call(
        http, simulator, "POST", f"/v2/reserved_ips/{IP_NYC}/actions", {"type": "unassign"}
    )
    assert (status, body["message"]) == (422, "The floating IP is not assigned to a Droplet.")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"type": "reboot", "droplet_id": 1001}, 422, "The action type must be one of"),
        ({"droplet_id": 1001}, 422, "The action type must be one of"),
        ({"type": "assign"}, 422, "droplet_id must be the integer id"),
        ([1, 2], 400, "The request body must be a JSON object."),
    ],
)
async def test_malformed_action_bodies_are_refused(
    simulator: Simulator, http: aiohttp.ClientSession, body: Any, status: int, message: str
) -> None:
    with simulator.expect_invalid_requests("malformed action body on purpose"):
        answer, payload, _ = await call(
            http, simulator, "POST", f"/v2/reserved_ips/{IP_NYC}/actions", body
        )
    assert answer == status
    assert payload["message"].startswith(message)
    assert simulator.holder(IP_NYC) is None


async def test_a_body_that_is_not_json_gets_400(simulator: Simulator) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        with simulator.expect_invalid_requests("not JSON on purpose"):
            async with session.post(
                f"{simulator.api_url}/v2/reserved_ips/{IP_NYC}/actions",
                data=b"type=assign",
                headers={"Content-Type": "application/json"},
            ) as response:
                body = await response.json()
    assert (response.status, body["id"]) == (400, "bad_request")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/reserved_ips/198.51.100.99",
        "/v2/reserved_ips/198.51.100.99/actions",
        f"/v2/reserved_ips/{IP_NYC}/actions/2399999999",
        f"/v2/reserved_ips/{IP_SFO}/actions/2300000001",  # an action of another IP
        "/v2/actions/2399999999",
        "/v2/droplets/424242",
    ],
)
async def test_unknown_resources_get_404_not_found(
    simulator: Simulator, http: aiohttp.ClientSession, path: str
) -> None:
    status, body, _ = await call(http, simulator, "GET", path)
    assert (status, body["id"]) == (404, "not_found")
    assert body["message"] == "The resource you were accessing could not be found."


async def test_assigning_to_an_unknown_droplet_gets_404(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await assign(http, simulator, IP_NYC, 424242)
    assert (status, body["id"]) == (404, "not_found")


async def test_paths_outside_the_api_get_a_json_404(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    with simulator.expect_invalid_requests("paths the spec does not have"):
        status, body, _ = await call(http, simulator, "GET", "/v2/nonsense")
        assert (status, body["id"]) == (404, "not_found")
        status, body, _ = await call(http, simulator, "DELETE", f"/v2/reserved_ips/{IP_NYC}")
        assert (status, body["id"]) == (405, "method_not_allowed")


async def test_action_list_shows_the_reserve_history_newest_first(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    await assign(http, simulator, IP_NYC, 1001)
    await simulator.wait_idle(2)
    status, body, _ = await call(http, simulator, "GET", f"/v2/reserved_ips/{IP_NYC}/actions")
    assert status == 200
    assert [a["type"] for a in body["actions"]] == ["assign_ip", "reserve_ip"]
    assert body["meta"] == {"total": 2}


# --- recording ----------------------------------------------------------------------------


async def test_exchanges_record_bodies_headers_and_one_connection_for_keep_alive(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    await call(http, simulator, "GET", f"/v2/reserved_ips/{IP_NYC}")
    await assign(http, simulator, IP_NYC, 1001)
    await simulator.wait_idle(2)
    get, post = simulator.exchanges
    assert (get.method, get.endpoint, get.status) == ("GET", "get_reserved_ip", 200)
    assert post.request_json() == {"type": "assign", "droplet_id": 1001}
    assert post.response_json()["action"]["type"] == "assign_ip"
    assert post.state_changed is True
    assert post.response_headers["ratelimit-limit"] == "5000"
    assert get.connection_id == post.connection_id
    assert simulator.counters.connections == 1
    assert simulator.counters.posts_per_ip[IP_NYC] == 1
    assert [e.seq for e in simulator.posts(IP_NYC)] == [post.seq]
    assert DEFAULT_TOKEN not in repr(post)
    assert post.token_sent


async def test_new_connections_get_new_connection_ids(simulator: Simulator) -> None:
    for _ in range(2):
        async with aiohttp.ClientSession(headers=AUTH) as session:
            await call(session, simulator, "GET", "/v2/reserved_ips")
    first, second = simulator.exchanges
    assert first.connection_id != second.connection_id
    assert simulator.counters.connections == 2


async def test_out_of_band_move_shows_up_without_an_action(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.force_holder(IP_NYC, 1002)
    _, body, _ = await call(http, simulator, "GET", f"/v2/reserved_ips/{IP_NYC}")
    assert body["reserved_ip"]["droplet"]["id"] == 1002
    assert [a.type for a in simulator.actions(IP_NYC)] == ["reserve_ip"]


async def test_scenario_with_many_droplets_serves_each(make_simulator: MakeSimulator) -> None:
    droplets = tuple(SimDroplet(id=2000 + i, name=f"n{i}", region="ams3") for i in range(5))
    sim = await make_simulator(default_scenario(droplets=droplets, reserved_ips=()))
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for droplet in droplets:
            status, body, _ = await call(session, sim, "GET", f"/v2/droplets/{droplet.id}")
            assert (status, body["droplet"]["name"]) == (200, droplet.name)
