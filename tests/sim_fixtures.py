"""Pytest fixtures running the DigitalOcean simulator, with a contract check at teardown.

``simulator``       the default scenario (below), started; stopped after the test.
``tls_simulator``   the same over HTTPS with a test CA (``sim.ca_file``).
``make_simulator``  ``await make_simulator(scenario=None)`` starts any scenario.

Default scenario: droplets 1001 ``node1`` and 1002 ``node2`` in nyc3, 1003 ``node3`` in sfo3;
reserved IP 203.0.113.10 (nyc3, unassigned) and 203.0.113.20 (sfo3, held by 1003); token
``test-token``; ``action_delay`` 0.05 s. ``default_scenario(**changes)`` builds variants.

Every exchange of every simulator these fixtures start is validated against DigitalOcean's
OpenAPI spec when the test ends (``tests/contract.py``): a client sending a request the real
API would not accept, or the simulator answering what the real API would not, fails the test.
Deliberately malformed requests go inside ``with sim.expect_invalid_requests("why"):``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from hafloatd.lab.sim import SimDroplet, SimReservedIp, SimScenario, Simulator
from tests.contract import check_exchanges

__all__ = [
    "DEFAULT_TOKEN",
    "IP_NYC",
    "IP_SFO",
    "MakeSimulator",
    "default_scenario",
    "make_simulator",
    "move_ip",
    "simulator",
    "tls_simulator",
]

DEFAULT_TOKEN = "test-token"
IP_NYC = "203.0.113.10"  # unassigned at start, nyc3
IP_SFO = "203.0.113.20"  # held by 1003 at start, sfo3
DEFAULT_ACTION_DELAY = 0.05

MakeSimulator = Callable[..., Awaitable[Simulator]]


def default_scenario(**changes: Any) -> SimScenario:
    """The fixtures' scenario; keyword arguments replace fields (``action_delay=0``...)."""
    base = SimScenario(
        tokens=(DEFAULT_TOKEN,),
        droplets=(
            SimDroplet(
                id=1001,
                name="node1",
                region="nyc3",
                private_ipv4="10.10.0.1",
                public_ipv4="192.0.2.11",
            ),
            SimDroplet(
                id=1002,
                name="node2",
                region="nyc3",
                private_ipv4="10.10.0.2",
                public_ipv4="192.0.2.12",
            ),
            SimDroplet(
                id=1003,
                name="node3",
                region="sfo3",
                private_ipv4="10.20.0.3",
                public_ipv4="192.0.2.13",
            ),
        ),
        reserved_ips=(
            SimReservedIp(ip=IP_NYC, region="nyc3", droplet_id=None),
            SimReservedIp(ip=IP_SFO, region="sfo3", droplet_id=1003),
        ),
        action_delay=DEFAULT_ACTION_DELAY,
    )
    return dataclasses.replace(base, **changes)


async def move_ip(
    sim: Simulator, ip: str, droplet_id: int, *, family: str = "reserved_ips", timeout: float = 5.0
) -> None:
    """Assign ``ip`` to ``droplet_id`` through the API (as a client would) and wait for it."""
    headers = {"Authorization": f"Bearer {sim.scenario.tokens[0]}"}
    url = f"{sim.api_url}/v2/{family}/{ip}/actions"
    body = {"type": "assign", "droplet_id": droplet_id}
    async with (
        aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session,
        session.post(url, json=body, ssl=sim.client_ssl_context() or True) as response,
    ):
        if response.status != 201:
            raise AssertionError(
                f"assign {ip} -> {droplet_id}: {response.status} {await response.text()}"
            )
    await sim.wait_holder(ip, droplet_id, timeout)


@pytest.fixture
async def make_simulator() -> AsyncIterator[MakeSimulator]:
    started: list[Simulator] = []

    async def factory(scenario: SimScenario | None = None) -> Simulator:
        sim = Simulator(scenario if scenario is not None else default_scenario())
        started.append(sim)
        await sim.start()
        return sim

    yield factory
    for sim in reversed(started):
        await sim.stop()
    exchanges = [e for sim in started for e in sim.all_exchanges]
    # openapi-core is CPU-bound and loads the spec from disk once: keep it off the loop.
    violations = await asyncio.to_thread(check_exchanges, exchanges)
    if violations:
        listing = "\n".join(f"  - {v}" for v in violations)
        pytest.fail(
            f"{len(violations)} exchange(s) violate DigitalOcean's OpenAPI spec:\n{listing}",
            pytrace=False,
        )


@pytest.fixture
async def simulator(make_simulator: MakeSimulator) -> Simulator:
    return await make_simulator()


@pytest.fixture
async def tls_simulator(make_simulator: MakeSimulator) -> Simulator:
    return await make_simulator(default_scenario(tls=True))
