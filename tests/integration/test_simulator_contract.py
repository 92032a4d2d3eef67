"""The contract check itself: it must accept what DigitalOcean accepts and flag what it does not.

These tests run simulators directly (not through the fixtures) because they make deliberate
violations, which the fixtures would report at teardown.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from hafloatd.lab.sim import Exchange, Simulator
from tests import contract
from tests.contract import check_exchange, check_exchanges, spec_path
from tests.sim_fixtures import DEFAULT_TOKEN, IP_NYC, IP_SFO, default_scenario

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}


def fabricated(status: int, body: object, *, path: str = f"/v2/reserved_ips/{IP_NYC}") -> Exchange:
    return Exchange(
        seq=1,
        received_at=0.0,
        received_monotonic=0.0,
        connection_id=1,
        method="GET",
        path=path,
        query_string="",
        request_headers=CIMultiDictProxy(CIMultiDict(AUTH)),
        request_body=b"",
        endpoint="get_reserved_ip",
        ip=IP_NYC,
        status=status,
        response_headers=CIMultiDictProxy(
            CIMultiDict({"Content-Type": "application/json; charset=utf-8"})
        ),
        response_body=json.dumps(body).encode(),
    )


async def test_a_broad_session_against_the_simulator_conforms() -> None:
    async with Simulator(default_scenario(action_delay=0)) as sim:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            for method, path, body in [
                ("GET", "/v2/reserved_ips?page=1&per_page=1", None),
                ("GET", "/v2/floating_ips", None),
                ("GET", f"/v2/reserved_ips/{IP_SFO}", None),
                ("GET", f"/v2/floating_ips/{IP_NYC}", None),
                (
                    "POST",
                    f"/v2/reserved_ips/{IP_NYC}/actions",
                    {"type": "assign", "droplet_id": 1001},
                ),
                ("POST", f"/v2/floating_ips/{IP_SFO}/actions", {"type": "unassign"}),
                ("GET", f"/v2/reserved_ips/{IP_NYC}/actions", None),
                ("GET", f"/v2/floating_ips/{IP_NYC}/actions/2300000001", None),
                ("GET", "/v2/actions/2300000001", None),
                ("GET", "/v2/droplets/1001", None),
                ("GET", "/v2/droplets/1003", None),
                (
                    "POST",
                    f"/v2/reserved_ips/{IP_NYC}/actions",
                    {"type": "assign", "droplet_id": 1003},
                ),
            ]:
                async with http.request(method, sim.api_url + path, json=body) as response:
                    await response.read()
            await sim.wait_idle(2)
        assert len(sim.all_exchanges) == 12
        assert check_exchanges(sim.all_exchanges) == []


async def test_a_request_body_the_spec_refuses_is_flagged() -> None:
    async with Simulator(default_scenario()) as sim:
        async with (
            aiohttp.ClientSession(headers=AUTH) as http,
            http.post(
                f"{sim.api_url}/v2/reserved_ips/{IP_NYC}/actions", json={"droplet_id": 1001}
            ) as response,
        ):
            assert response.status == 422
        (violation,) = check_exchanges(sim.all_exchanges)
    assert violation.part == "request"
    assert "'type' is a required property" in violation.message


@pytest.mark.parametrize("droplet_id", ["1002", 1002.0, True, None])
async def test_an_assign_whose_droplet_id_is_not_an_integer_is_flagged(droplet_id: object) -> None:
    # The spec's anyOf leaves droplet_id unconstrained in its first branch; the contract holds
    # our clients to the integer its second branch names, though the simulator accepts "1002"
    # as DigitalOcean did (defect 13).
    async with Simulator(default_scenario(action_delay=0)) as sim:
        async with (
            aiohttp.ClientSession(headers=AUTH) as http,
            http.post(
                f"{sim.api_url}/v2/reserved_ips/{IP_NYC}/actions",
                json={"type": "assign", "droplet_id": droplet_id},
            ) as response,
        ):
            assert response.status == (201 if droplet_id == "1002" else 422)
        await sim.wait_idle(2)
        (violation,) = check_exchanges(sim.all_exchanges)
    assert violation.part == "request"
    assert "droplet_id" in violation.message
    assert "integer" in violation.message


async def test_a_query_out_of_the_spec_range_is_flagged() -> None:
    async with Simulator(default_scenario()) as sim:
        async with (
            aiohttp.ClientSession(headers=AUTH) as http,
            http.get(f"{sim.api_url}/v2/reserved_ips?per_page=500") as response,
        ):
            assert response.status == 200  # the simulator caps it, as DigitalOcean does
        (violation,) = check_exchanges(sim.all_exchanges)
    assert violation.part == "request"
    assert "per_page" in violation.message


def test_a_response_the_spec_refuses_is_flagged() -> None:
    bad = fabricated(200, {"reserved_ip": {"ip": "not-an-ip", "locked": "yes"}})
    violations = check_exchange(bad)
    assert [v.part for v in violations] == ["response"]
    assert "locked" in violations[0].message or "ipv4" in violations[0].message


def test_an_action_status_outside_the_enum_is_flagged() -> None:
    body = {"action": {"id": 1, "status": "done", "type": "assign_ip"}}
    exchange = fabricated(200, body, path="/v2/actions/1")
    (violation,) = check_exchange(exchange)
    assert "done" in violation.message


async def test_a_missing_token_is_waived_only_because_the_answer_is_401() -> None:
    async with Simulator(default_scenario()) as sim:
        async with (
            aiohttp.ClientSession() as anonymous,
            anonymous.get(f"{sim.api_url}/v2/reserved_ips") as response,
        ):
            assert response.status == 401
        assert check_exchanges(sim.all_exchanges) == []
        answered_401 = sim.all_exchanges[0]
    answered_200 = fabricated(200, {"reserved_ips": [], "links": {}, "meta": {"total": 0}})
    answered_200.request_headers = answered_401.request_headers
    answered_200.path = "/v2/reserved_ips"
    (violation,) = check_exchange(answered_200)
    assert (violation.part, "Security" in violation.message) == ("request", True)


async def test_marked_invalid_requests_skip_the_request_check_but_not_the_response() -> None:
    async with Simulator(default_scenario()) as sim:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            with sim.expect_invalid_requests("bad body on purpose"):
                async with http.post(
                    f"{sim.api_url}/v2/reserved_ips/{IP_NYC}/actions", json={"type": "reboot"}
                ) as response:
                    assert response.status == 422
        exchange = sim.all_exchanges[0]
    assert exchange.contract_exempt == "bad body on purpose"
    assert check_exchange(exchange) == []
    exchange.response_body = b'{"message": "no id"}'
    (violation,) = check_exchange(exchange)
    assert violation.part == "response"


async def test_admin_paths_are_never_checked() -> None:
    admin = fabricated(200, {"anything": True}, path="/_sim/state")
    assert check_exchange(admin) == []


async def test_cleared_exchanges_are_still_checked() -> None:
    async with Simulator(default_scenario()) as sim:
        async with (
            aiohttp.ClientSession(headers=AUTH) as http,
            http.get(f"{sim.api_url}/v2/reserved_ips?per_page=0") as response,
        ):
            assert response.status == 400
        sim.clear_exchanges()
        assert sim.exchanges == []
        assert len(check_exchanges(sim.all_exchanges)) == 1


def test_spec_path_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(contract.SPEC_ENV, raising=False)
    assert spec_path() == contract.DEFAULT_SPEC
    assert contract.DEFAULT_SPEC.name == "digitalocean-api-subset.openapi.yaml"
    elsewhere = tmp_path / "spec.yaml"
    monkeypatch.setenv(contract.SPEC_ENV, str(elsewhere))
    assert spec_path() == elsewhere
    with pytest.raises(FileNotFoundError, match=contract.SPEC_ENV):
        contract.load_spec(elsewhere)
