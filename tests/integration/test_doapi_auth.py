"""DoApiClient auth, TLS, the warm connection and keeping the token secret."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from hafloatd.config import ApiConfig
from hafloatd.deadline import Deadline
from hafloatd.doapi import DoApiClient
from hafloatd.doapi.transport import tls_disagreement
from hafloatd.errors import ApiAuthError, ApiError, ApiUnavailable, HafloatdError
from hafloatd.lab.sim import Simulator
from hafloatd.metrics import Metrics
from hafloatd.token import ApiToken
from tests.integration.test_doapi_support import api_client, sample
from tests.sim_fixtures import DEFAULT_TOKEN, IP_NYC, IP_SFO, MakeSimulator, default_scenario

WRONG_TOKEN = "dop_v1_wrong0123456789abcdef0123456789abcdef0123456789abcdef01234567"
READ_ONLY_TOKEN = "dop_v1_readonly0123456789abcdef0123456789abcdef0123456789abcdef0123"

# --- 401 / 403 -------------------------------------------------------------------------------


async def test_wrong_token_fails_at_once_with_actionable_401(simulator: Simulator) -> None:
    metrics = Metrics(CollectorRegistry())
    async with api_client(simulator, token=WRONG_TOKEN, metrics=metrics) as api:
        with pytest.raises(ApiAuthError) as info:
            await api.get_reserved_ip(IP_NYC, Deadline.after(5))
        assert api.token_valid is False
    message = str(info.value)
    assert "401" in message
    assert "token" in message
    assert "do-token" in message  # says where to put a good one
    assert WRONG_TOKEN not in message
    assert info.value.ocf_code == 4
    assert len(simulator.exchanges) == 1  # never retried
    assert sample(metrics, "hafloatd_api_token_valid") == 0


async def test_token_without_write_scope_gets_403_naming_reserved_ip_update(
    make_simulator: MakeSimulator,
) -> None:
    sim = await make_simulator(default_scenario(read_only_tokens=(READ_ONLY_TOKEN,)))
    async with api_client(sim, token=READ_ONLY_TOKEN) as api:
        view = await api.get_reserved_ip(IP_NYC, Deadline.after(5))
        assert api.token_valid is True
        with pytest.raises(ApiAuthError) as info:
            await api.assign(IP_NYC, 1001, Deadline.after(5))
        assert api.token_valid is False
    assert view.droplet_id is None
    message = str(info.value)
    assert "403" in message
    assert "reserved_ip:update" in message
    assert READ_ONLY_TOKEN not in message
    assert len(sim.posts(IP_NYC)) == 1
    assert sim.holder(IP_NYC) is None


async def test_token_valid_is_unknown_until_the_first_answer(simulator: Simulator) -> None:
    metrics = Metrics(CollectorRegistry())
    async with api_client(simulator, metrics=metrics) as api:
        assert api.token_valid is None
        assert sample(metrics, "hafloatd_api_token_valid") == -1
        await api.keep_warm(Deadline.after(5))
        assert api.token_valid is True
    assert sample(metrics, "hafloatd_api_token_valid") == 1


async def test_token_valid_is_not_decided_by_server_errors(simulator: Simulator) -> None:
    simulator.faults.server_errors(None, endpoint="list_reserved_ips")
    async with api_client(simulator) as api:
        with pytest.raises(ApiUnavailable):
            await api.keep_warm(Deadline.after(0.5))
        assert api.token_valid is None


# --- the warm connection ----------------------------------------------------------------------


async def test_keep_warm_and_requests_reuse_one_connection(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        for _ in range(5):
            await api.keep_warm(Deadline.after(5))
        await api.get_reserved_ip(IP_SFO, Deadline.after(5))
        result = await api.assign(IP_NYC, 1001, Deadline.after(5))
        assert result.action is not None
        await api.wait_action(result.action.id, Deadline.after(5), ip=IP_NYC)
        opened = api.connections_opened
    assert opened == 1
    assert simulator.counters.connections == 1
    assert len({e.connection_id for e in simulator.exchanges}) == 1
    warm = simulator.requests("list_reserved_ips")
    assert len(warm) == 5
    assert all(e.method == "GET" and e.query["per_page"] == "1" for e in warm)


async def test_requests_carry_bearer_token_user_agent_and_accept(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        await api.keep_warm(Deadline.after(5))
    [exchange] = simulator.exchanges
    assert exchange.request_headers["Authorization"] == f"Bearer {DEFAULT_TOKEN}"
    assert exchange.request_headers["User-Agent"].startswith("hafloatd/")
    assert exchange.request_headers["Accept"] == "application/json"


async def test_custom_user_agent_is_sent_as_configured(simulator: Simulator) -> None:
    async with api_client(simulator, user_agent="acme-ha/2.1") as api:
        await api.keep_warm(Deadline.after(5))
    assert simulator.exchanges[0].request_headers["User-Agent"] == "acme-ha/2.1"


async def test_closed_client_refuses_new_requests(simulator: Simulator) -> None:
    async with api_client(simulator) as api:
        pass
    with pytest.raises(ApiError, match="closed"):
        await api.get_reserved_ip(IP_NYC, Deadline.after(5))
    assert simulator.exchanges == []


# --- TLS -------------------------------------------------------------------------------------


async def test_tls_with_the_simulator_ca_works(tls_simulator: Simulator) -> None:
    assert tls_simulator.api_url.startswith("https://")
    assert tls_simulator.ca_file is not None
    async with api_client(tls_simulator, ca_file=tls_simulator.ca_file) as api:
        for _ in range(3):
            view = await api.get_reserved_ip(IP_SFO, Deadline.after(5))
        opened = api.connections_opened
    assert view.droplet_id == 1003
    assert opened == 1  # one TLS handshake for all three
    assert tls_simulator.counters.connections == 1


async def test_tls_verification_stays_on_without_the_ca(tls_simulator: Simulator) -> None:
    metrics = Metrics(CollectorRegistry())
    async with api_client(tls_simulator, ca_file=None, metrics=metrics) as api:
        with pytest.raises(ApiError) as info:
            await api.get_reserved_ip(IP_NYC, Deadline.after(5))
    # A verification failure is final: one attempt, no retry.
    labels = {"endpoint": "get_reserved_ip"}
    assert sample(metrics, "hafloatd_api_requests_total", code="0", **labels) == 1
    retry_reasons = ("timeout", "connection_error", "server_error", "rate_limited")
    for reason in retry_reasons:
        assert sample(metrics, "hafloatd_api_retries_total", reason=reason, **labels) == 0
    message = str(info.value)
    assert "TLS certificate verification failed" in message
    assert "api.ca_file" in message
    assert tls_simulator.exchanges == []  # nothing was sent over the unverified channel


async def test_https_to_a_server_without_tls_fails_at_once_naming_base_url(
    simulator: Simulator,
) -> None:
    """Found by the fault matrix: the handshake's "wrong version number" was retried as a
    connection error until the deadline, then blamed on connectivity."""
    metrics = Metrics(CollectorRegistry())
    https_url = simulator.api_url.replace("http://", "https://")
    async with api_client(simulator, base_url=https_url, metrics=metrics) as api:
        with pytest.raises(ApiError) as info:
            await api.get_reserved_ip(IP_NYC, Deadline.after(5))
    assert not isinstance(info.value, ApiUnavailable)
    labels = {"endpoint": "get_reserved_ip"}
    assert sample(metrics, "hafloatd_api_requests_total", code="0", **labels) == 1
    assert sample(metrics, "hafloatd_api_retries_total", reason="connection_error", **labels) == 0
    message = str(info.value)
    assert "does not speak TLS" in message and "api.base_url" in message
    assert simulator.exchanges == []


async def test_a_handshake_cut_by_the_server_is_retried(simulator: Simulator) -> None:
    """A connection closed during the handshake is a transport failure: retried, not final."""
    accepted = 0

    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with api_client(simulator, base_url=f"https://127.0.0.1:{port}") as api:
            with pytest.raises(ApiUnavailable):
                await api.get_reserved_ip(IP_NYC, Deadline.after(1.5))
    finally:
        server.close()
        await server.wait_closed()
    assert accepted >= 2


@pytest.mark.parametrize(
    ("os_error", "final"),
    [
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), True),
        (ssl.SSLError(1, "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] handshake failure"), True),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), False),
        (ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"), False),
        (ssl.SSLSyscallError(5, "Some I/O error occurred"), False),
    ],
)
def test_only_a_tls_disagreement_is_final(os_error: ssl.SSLError, final: bool) -> None:
    key = SimpleNamespace(host="127.0.0.1", port=443, ssl=True)
    exc = aiohttp.ClientConnectorSSLError(key, os_error)  # type: ignore[arg-type]
    assert tls_disagreement(exc) is final


async def test_unreadable_ca_file_names_the_key(tmp_path: Path) -> None:
    config = ApiConfig(base_url="https://127.0.0.1:9", ca_file=str(tmp_path / "missing-ca.pem"))
    client = DoApiClient(config, ApiToken(DEFAULT_TOKEN))
    with pytest.raises(ApiError, match=r"^api.ca_file: cannot load .*missing-ca.pem"):
        await client.start()
    await client.close()


# --- the token stays secret ------------------------------------------------------------------


async def test_token_never_appears_in_logs_errors_or_reprs(
    make_simulator: MakeSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = await make_simulator()
    errors: list[HafloatdError] = []
    sim.faults.server_errors(1, endpoint="get_reserved_ip")
    sim.faults.drop_connections(1, endpoint="post_action")
    sim.faults.rate_limit_storm(1, endpoint="list_reserved_ips", retry_after_s=0)
    async with api_client(sim) as api:
        await api.get_reserved_ip(IP_NYC, Deadline.after(5))
        await api.assign(IP_NYC, 1001, Deadline.after(5))
        await api.keep_warm(Deadline.after(5))
        with pytest.raises(ApiError) as rejected:
            await api.assign(IP_NYC, 1003, Deadline.after(5))
        errors.append(rejected.value)
        texts = [repr(api), str(api.rate_limit)]
    async with api_client(sim, token=WRONG_TOKEN) as wrong:
        with pytest.raises(ApiAuthError) as refused:
            await wrong.assign(IP_NYC, 1002, Deadline.after(5))
        errors.append(refused.value)
        texts.append(repr(wrong))
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    for secret in (DEFAULT_TOKEN, WRONG_TOKEN):
        assert secret not in caplog.text
        for text in texts:
            assert secret not in text
    assert "api_retry" in caplog.text  # the log did cover the failure paths
    assert "api_post_fate_unknown" in caplog.text
