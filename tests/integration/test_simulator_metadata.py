"""The simulated Droplet metadata services: identity, reserved-IP view, faults, refusal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from hafloatd.lab.sim import Simulator
from hafloatd.lab.sim.faults import GARBAGE_BODY
from tests.sim_fixtures import IP_NYC, IP_SFO, MakeSimulator, default_scenario, move_ip

SHORT = aiohttp.ClientTimeout(total=2)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=SHORT) as session:
        yield session


async def get_text(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


@pytest.mark.parametrize(
    ("leaf", "expected"),
    [
        ("id", "1001"),
        ("hostname", "node1"),
        ("region", "nyc3"),
        ("interfaces/private/0/ipv4/address", "10.10.0.1"),
        ("interfaces/public/0/ipv4/address", "192.0.2.11"),
        ("interfaces/public/0/type", "public"),
    ],
)
async def test_identity_answers_are_plain_text(
    simulator: Simulator, http: aiohttp.ClientSession, leaf: str, expected: str
) -> None:
    async with http.get(f"{simulator.metadata_url(1001)}/{leaf}") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert await response.text() == expected


async def test_anchor_ipv4_is_served(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    status, text = await get_text(
        http, f"{simulator.metadata_url(1002)}/interfaces/public/0/anchor_ipv4/address"
    )
    assert status == 200
    assert text == simulator.scenario.droplet(1002).anchor_ipv4


@pytest.mark.parametrize("family", ["reserved_ip", "floating_ip"])
async def test_inactive_reserved_ip_reads_false_and_has_no_address(
    simulator: Simulator, http: aiohttp.ClientSession, family: str
) -> None:
    base = f"{simulator.metadata_url(1001)}/{family}/ipv4"
    assert await get_text(http, f"{base}/active") == (200, "false")
    assert (await get_text(http, f"{base}/ip_address"))[0] == 404
    assert await get_text(http, f"{base}/") == (200, "active")


@pytest.mark.parametrize("family", ["reserved_ip", "floating_ip"])
async def test_metadata_follows_the_ip_when_it_moves(
    simulator: Simulator, http: aiohttp.ClientSession, family: str
) -> None:
    node1 = f"{simulator.metadata_url(1001)}/{family}/ipv4"
    node2 = f"{simulator.metadata_url(1002)}/{family}/ipv4"
    await move_ip(simulator, IP_NYC, 1001)
    assert await get_text(http, f"{node1}/active") == (200, "true")
    assert await get_text(http, f"{node1}/ip_address") == (200, IP_NYC)
    assert await get_text(http, f"{node2}/active") == (200, "false")
    await move_ip(simulator, IP_NYC, 1002)
    assert await get_text(http, f"{node1}/active") == (200, "false")
    assert await get_text(http, f"{node2}/ip_address") == (200, IP_NYC)


async def test_v1_json_has_everything(simulator: Simulator, http: aiohttp.ClientSession) -> None:
    url = simulator.metadata_url(1003).removesuffix("/v1") + "/v1.json"
    async with http.get(url) as response:
        assert response.status == 200
        document = await response.json()
    assert document["droplet_id"] == 1003
    assert document["hostname"] == "node3"
    assert document["region"] == "sfo3"
    assert document["reserved_ip"] == {"ipv4": {"active": True, "ip_address": IP_SFO}}
    assert document["floating_ip"] == document["reserved_ip"]
    public = document["interfaces"]["public"][0]
    assert public["ipv4"]["ip_address"] == "192.0.2.13"
    assert "anchor_ipv4" in public
    assert document["interfaces"]["private"][0]["ipv4"]["ip_address"] == "10.20.0.3"
    assert simulator.metadata_view(1003) == document


async def test_v1_json_says_inactive_when_nothing_is_assigned(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    url = simulator.metadata_url(1001).removesuffix("/v1") + "/v1.json"
    async with http.get(url) as response:
        document = await response.json()
    assert document["reserved_ip"] == {"ipv4": {"active": False}}


async def test_index_lists_entries_and_directories(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    status, text = await get_text(http, simulator.metadata_url(1001) + "/")
    assert status == 200
    entries = text.splitlines()
    assert {"id", "hostname", "region", "interfaces/", "reserved_ip/", "floating_ip/"} <= set(
        entries
    )
    assert await get_text(http, simulator.metadata_url(1001) + "/interfaces/") == (
        200,
        "public/\nprivate/",
    )


@pytest.mark.parametrize(
    "leaf", ["nope", "id/", "interfaces/public/7/mac", "reserved_ip/ipv6/active"]
)
async def test_unknown_paths_get_404(
    simulator: Simulator, http: aiohttp.ClientSession, leaf: str
) -> None:
    assert (await get_text(http, f"{simulator.metadata_url(1001)}/{leaf}"))[0] == 404


async def test_each_droplet_has_its_own_metadata_port(simulator: Simulator) -> None:
    urls = {simulator.metadata_url(d) for d in (1001, 1002, 1003)}
    assert len(urls) == 3
    assert all(u.startswith("http://127.0.0.1:") and u.endswith("/metadata/v1") for u in urls)


async def test_metadata_lag_keeps_showing_the_previous_holder_for_a_while(
    make_simulator: MakeSimulator, http: aiohttp.ClientSession
) -> None:
    sim = await make_simulator(default_scenario(metadata_lag_s=0.4))
    await move_ip(sim, IP_NYC, 1001)
    assert sim.holder(IP_NYC) == 1001
    url = f"{sim.metadata_url(1001)}/reserved_ip/ipv4/active"
    assert await get_text(http, url) == (200, "false")
    async with asyncio.timeout(3):
        while (await get_text(http, url))[1] != "true":
            await asyncio.sleep(0.05)


# --- faults and refusal -------------------------------------------------------------------


async def test_metadata_down_resets_connections_until_cleared(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    fault = simulator.faults.metadata_down(droplet_id=1001)
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_text(http, f"{simulator.metadata_url(1001)}/id")
    assert await get_text(http, f"{simulator.metadata_url(1002)}/id") == (200, "1002")
    simulator.faults.remove(fault)
    assert await get_text(http, f"{simulator.metadata_url(1001)}/id") == (200, "1001")


async def test_metadata_slow_answers_after_the_delay(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.metadata_slow(1.0, droplet_id=1001, count=1)
    impatient = aiohttp.ClientTimeout(total=0.3)
    with pytest.raises(TimeoutError):
        async with http.get(f"{simulator.metadata_url(1001)}/id", timeout=impatient) as response:
            await response.text()
    assert await get_text(http, f"{simulator.metadata_url(1001)}/id") == (200, "1001")


async def test_stopping_ends_a_slow_answer_whose_client_gave_up(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    fault_used = asyncio.Event()
    simulator.faults.subscribe(lambda: fault_used.set() if not simulator.faults.active() else None)
    before = asyncio.all_tasks()
    simulator.faults.metadata_slow(60, droplet_id=1001, count=1)
    client = asyncio.create_task(get_text(http, f"{simulator.metadata_url(1001)}/id"))
    await asyncio.wait_for(fault_used.wait(), 5)  # the service took it: the answer is held
    client.cancel()
    held = [t for t in asyncio.all_tasks() - before if not t.done() and t is not client]
    assert held  # the service still works on the abandoned request
    await simulator.stop_metadata(1001)
    assert [t for t in held if not t.done()] == []


async def test_metadata_empty_answers_200_with_nothing(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.metadata_empty(count=2)
    assert await get_text(http, f"{simulator.metadata_url(1003)}/reserved_ip/ipv4/active") == (
        200,
        "",
    )
    assert await get_text(http, f"{simulator.metadata_url(1001)}/id") == (200, "")
    assert await get_text(http, f"{simulator.metadata_url(1001)}/id") == (200, "1001")


async def test_metadata_garbage_answers_200_with_the_garbage_body_on_every_path(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.metadata_garbage(droplet_id=1001, count=3)
    for path in ("/id", "/reserved_ip/ipv4/active", ".json"):
        async with http.get(f"{simulator.metadata_url(1001)}{path}") as response:
            assert response.status == 200
            assert await response.read() == GARBAGE_BODY
    assert await get_text(http, f"{simulator.metadata_url(1001)}/id") == (200, "1001")
    assert await get_text(http, f"{simulator.metadata_url(1002)}/id") == (200, "1002")


async def test_metadata_error_answers_the_status(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    simulator.faults.metadata_error(status=503, droplet_id=1002, count=1)
    assert (await get_text(http, f"{simulator.metadata_url(1002)}/id"))[0] == 503
    assert (await get_text(http, f"{simulator.metadata_url(1002)}/id"))[0] == 200


async def test_stopped_metadata_refuses_connections_and_restarts_on_the_same_port(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    url = simulator.metadata_url(1001)
    await simulator.stop_metadata(1001)
    with pytest.raises(aiohttp.ClientConnectorError):
        await get_text(http, f"{url}/id")
    await simulator.start_metadata(1001)
    assert simulator.metadata_url(1001) == url
    assert await get_text(http, f"{url}/id") == (200, "1001")
