"""The simulated API over TLS with a throw-away test CA."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest

from hafloatd.lab.sim import Simulator
from tests.sim_fixtures import DEFAULT_TOKEN, IP_NYC, IP_SFO, default_scenario, move_ip

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}


async def test_tls_api_is_https_and_trusts_only_the_test_ca(tls_simulator: Simulator) -> None:
    assert tls_simulator.api_url.startswith("https://127.0.0.1:")
    assert tls_simulator.ca_file is not None
    pem = await asyncio.to_thread(Path(tls_simulator.ca_file).read_text)
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    # What a client does with a configured CA file (file I/O: off the loop).
    context = await asyncio.to_thread(ssl.create_default_context, cafile=tls_simulator.ca_file)
    async with (
        aiohttp.ClientSession(headers=AUTH) as session,
        session.get(f"{tls_simulator.api_url}/v2/reserved_ips/{IP_SFO}", ssl=context) as response,
    ):
        assert response.status == 200
        assert (await response.json())["reserved_ip"]["droplet"]["id"] == 1003


async def test_tls_api_fails_verification_without_the_ca(tls_simulator: Simulator) -> None:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with session.get(f"{tls_simulator.api_url}/v2/reserved_ips") as response:
                await response.read()
    assert tls_simulator.exchanges == []  # the handshake failed before any request


async def test_tls_session_reuses_one_connection_for_many_requests(
    tls_simulator: Simulator,
) -> None:
    context = tls_simulator.client_ssl_context()
    assert context is not None
    connector = aiohttp.TCPConnector(ssl=context, limit=1)
    async with aiohttp.ClientSession(headers=AUTH, connector=connector) as session:
        for _ in range(5):
            async with session.get(f"{tls_simulator.api_url}/v2/reserved_ips") as response:
                assert response.status == 200
    assert tls_simulator.counters.connections == 1
    assert len({e.connection_id for e in tls_simulator.exchanges}) == 1


async def test_actions_work_over_tls_and_metadata_stays_plain_http(
    tls_simulator: Simulator,
) -> None:
    await move_ip(tls_simulator, IP_NYC, 1002)
    assert tls_simulator.metadata_url(1002).startswith("http://")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{tls_simulator.metadata_url(1002)}/reserved_ip/ipv4/ip_address") as response,
    ):
        assert await response.text() == IP_NYC


async def test_the_ca_directory_is_removed_on_stop() -> None:
    sim = Simulator(default_scenario(tls=True))
    await sim.start()
    ca_file = sim.ca_file
    assert ca_file is not None
    assert await asyncio.to_thread(Path(ca_file).exists)
    await sim.stop()
    assert not await asyncio.to_thread(Path(ca_file).exists)
