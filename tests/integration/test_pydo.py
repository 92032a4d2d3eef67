"""DigitalOcean's official client (pydo) against the simulator.

If the simulator's answers satisfy the client DigitalOcean ships, its shapes are right where
that client looks; the fixtures' contract check covers pydo's requests. pydo is synchronous
(azure-core + requests), so it runs in a worker thread while the simulator serves from the
test's event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pydo
import pytest
from azure.core.exceptions import HttpResponseError

from hafloatd.lab.sim import Simulator
from tests.sim_fixtures import DEFAULT_TOKEN, IP_NYC, IP_SFO

HTTP: dict[str, Any] = {
    "enforce_https": False
}  # azure-core refuses a bearer token over plain http otherwise


async def pydo_client(sim: Simulator, token: str = DEFAULT_TOKEN) -> pydo.Client:
    kwargs: dict[str, Any] = {"token": token, "endpoint": sim.api_url, "timeout": 10}
    if sim.ca_file is not None:
        kwargs["connection_verify"] = sim.ca_file
    # Building the client reads platform files (user agent): off the loop like its calls.
    return await asyncio.to_thread(lambda: pydo.Client(**kwargs))


async def test_pydo_gets_assigns_and_reads_the_action_back(simulator: Simulator) -> None:
    client = await pydo_client(simulator)

    def get_and_assign() -> tuple[Any, Any]:
        before = client.reserved_ips.get(IP_NYC, **HTTP)
        posted = client.reserved_ips_actions.post(
            IP_NYC, {"type": "assign", "droplet_id": 1001}, **HTTP
        )
        return before, posted

    before, posted = await asyncio.to_thread(get_and_assign)
    assert before["reserved_ip"]["ip"] == IP_NYC
    assert before["reserved_ip"]["droplet"] is None
    action = posted["action"]
    assert (action["type"], action["status"]) == ("assign_ip", "in-progress")
    await simulator.wait_idle(2)

    def read_back() -> tuple[Any, Any, Any]:
        by_ip = client.reserved_ips_actions.get(IP_NYC, action["id"], **HTTP)
        by_id = client.actions.get(action["id"], **HTTP)
        after = client.reserved_ips.get(IP_NYC, **HTTP)
        return by_ip, by_id, after

    by_ip, by_id, after = await asyncio.to_thread(read_back)
    assert by_ip["action"]["status"] == "completed"
    assert by_id["action"]["id"] == action["id"]
    assert by_id["action"]["completed_at"] is not None
    assert after["reserved_ip"]["droplet"]["id"] == 1001
    posts = simulator.posts(IP_NYC)
    assert len(posts) == 1
    assert posts[0].request_headers["Content-Type"].startswith("application/json")


async def test_pydo_lists_reserved_ips_and_reads_a_droplet(simulator: Simulator) -> None:
    client = await pydo_client(simulator)  # pydo 0.44 no longer has the floating_ips family

    def calls() -> tuple[Any, Any]:
        listed = client.reserved_ips.list(per_page=1, **HTTP)
        droplet = client.droplets.get(1003, **HTTP)
        return listed, droplet

    listed, droplet = await asyncio.to_thread(calls)
    assert [r["ip"] for r in listed["reserved_ips"]] == [IP_NYC]
    assert listed["meta"]["total"] == 2
    assert "next" in listed["links"]["pages"]
    assert droplet["droplet"]["name"] == "node3"


async def test_pydo_over_tls_verifies_the_simulator_ca(tls_simulator: Simulator) -> None:
    client = await pydo_client(tls_simulator)
    answer = await asyncio.to_thread(client.reserved_ips.get, IP_SFO)
    assert answer["reserved_ip"]["droplet"]["id"] == 1003


async def test_pydo_surfaces_the_401_of_a_wrong_token(simulator: Simulator) -> None:
    client = await pydo_client(simulator, token="wrong")
    with pytest.raises(HttpResponseError) as caught:
        await asyncio.to_thread(client.reserved_ips.get, IP_NYC, **HTTP)
    assert caught.value.status_code == 401
    assert DEFAULT_TOKEN not in str(caught.value)
