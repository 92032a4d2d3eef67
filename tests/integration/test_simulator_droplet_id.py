"""Defect 13: the ``droplet_id`` of an assign, in the forms DigitalOcean accepted and refused.

The classic recipe's ``assign-ip`` sends ``{"type":"assign","droplet_id":"1002"}`` (a string)
and the tutorial's transcript shows DigitalOcean answering ``Moving IP address: in-progress``:
the API read a string of decimal digits as the integer. The simulator must do the same, with
the same answer and the same rules, and keep refusing everything else with a 422.

The spec says ``integer``: our own client must send one (``tests/contract.py`` flags a string),
so every string form here is sent inside ``expect_invalid_requests``.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from hafloatd.lab.sim import SimReservedIp, Simulator
from tests.sim_fixtures import DEFAULT_TOKEN, IP_NYC, MakeSimulator, default_scenario

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
RECIPE_REASON = "the recipe sends droplet_id as a string, as DO accepted"
MSG_BAD_DROPLET_ID = "droplet_id must be the integer id of a Droplet to assign the floating IP to."


async def post_action(sim: Simulator, body: bytes) -> tuple[int, Any, str]:
    """POST raw bytes as the recipe's curl does; returns (status, JSON body, x-request-id)."""
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.post(
            f"{sim.api_url}/v2/reserved_ips/{IP_NYC}/actions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        return response.status, await response.json(), response.headers["x-request-id"]


def assign_body(droplet_id: object) -> bytes:
    return json.dumps({"type": "assign", "droplet_id": droplet_id}).encode()


async def test_the_recipes_string_droplet_id_assigns_exactly_like_an_integer(
    make_simulator: MakeSimulator,
) -> None:
    # Two identical accounts, one told "1002", one told 1002: same answer, same behaviour. The
    # actions are held in progress (stuck) so the locked window is observed without timing.
    by_string = await make_simulator()
    by_integer = await make_simulator()
    for sim in (by_string, by_integer):
        sim.faults.stuck_actions(1)
    with by_string.expect_invalid_requests(RECIPE_REASON):
        status, body, _ = await post_action(by_string, b'{"type":"assign","droplet_id":"1002"}')
    int_status, int_body, _ = await post_action(by_integer, assign_body(1002))

    assert (status, body["action"]["status"]) == (201, "in-progress")  # "Moving IP address"
    assert status == int_status
    volatile = {"started_at"}
    assert {k: v for k, v in body["action"].items() if k not in volatile} == {
        k: v for k, v in int_body["action"].items() if k not in volatile
    }
    for sim in (by_string, by_integer):
        assert sim.locked(IP_NYC)
        assert sim.holder(IP_NYC) is None  # moves only when the action completes
        assert sim.finish_stuck_actions("completed") == 1
        await sim.wait_holder(IP_NYC, 1002, timeout=5)
        assert not sim.locked(IP_NYC)
        assert sim.metadata_view(1002)["reserved_ip"]["ipv4"] == {
            "active": True,
            "ip_address": IP_NYC,
        }
        (action,) = [a for a in sim.actions(IP_NYC) if a.origin == "api"]
        assert (action.type, action.droplet_id, action.status) == ("assign_ip", 1002, "completed")
        assert sim.posts(IP_NYC, droplet_id=1002)[0].state_changed


@pytest.mark.parametrize("droplet_id", [1003, 424242, 1002])
async def test_a_string_droplet_id_meets_the_same_rules_as_an_integer(
    make_simulator: MakeSimulator, droplet_id: int
) -> None:
    """Other region (422), unknown droplet (404), already the holder (422): same answers."""
    held = SimReservedIp(ip=IP_NYC, region="nyc3", droplet_id=1002)
    scenario = default_scenario(reserved_ips=(held, *default_scenario().reserved_ips[1:]))
    by_string = await make_simulator(scenario)
    by_integer = await make_simulator(scenario)
    with by_string.expect_invalid_requests(RECIPE_REASON):
        status, body, _ = await post_action(by_string, assign_body(str(droplet_id)))
    int_status, int_body, _ = await post_action(by_integer, assign_body(droplet_id))
    assert status >= 400
    assert (status, body["id"], body["message"]) == (
        int_status,
        int_body["id"],
        int_body["message"],
    )


@pytest.mark.parametrize(
    "droplet_id",
    [
        "node2", "1002abc", " 1002", "1002 ", "+1002", "-1002", "1_002", "1e3", "1002.0",
        "0x3ea", "\u0661\u0660\u0660\u0662", "\u00b2", "", "0", "9" * 400,
        1002.0, 1002.5, True, False, -1002, 0, None, [1002], {"id": 1002},
    ],
)  # fmt: skip
async def test_anything_but_a_positive_integer_or_digit_string_is_refused_with_422(
    simulator: Simulator, droplet_id: object
) -> None:
    actions_before = len(simulator.actions(IP_NYC))
    with simulator.expect_invalid_requests("a droplet_id DigitalOcean refuses, on purpose"):
        status, body, request_id = await post_action(simulator, assign_body(droplet_id))
    assert status == 422
    assert body == {
        "id": "unprocessable_entity",
        "message": MSG_BAD_DROPLET_ID,
        "request_id": request_id,
    }
    assert simulator.holder(IP_NYC) is None
    assert not simulator.locked(IP_NYC)
    assert len(simulator.actions(IP_NYC)) == actions_before


async def test_an_assign_without_droplet_id_is_refused_with_422(simulator: Simulator) -> None:
    with simulator.expect_invalid_requests("no droplet_id, on purpose"):
        status, body, _ = await post_action(simulator, b'{"type":"assign"}')
    assert (status, body["id"], body["message"]) == (
        422,
        "unprocessable_entity",
        MSG_BAD_DROPLET_ID,
    )
