"""``hafloatd status``'s table and the notes under it (what the table cannot show)."""

from __future__ import annotations

from typing import Any

from hafloatd.status import render

IP = "203.0.113.10"


def status_with(**ip_fields: Any) -> dict[str, Any]:
    ip = {
        "ip": IP,
        "role": "started",
        "held_here": True,
        "holder_droplet_id": 1001,
        "holder_source": "api",
        "health": "up",
        "role_persisted": True,
        "failure_notification": "armed (FloatIP on node1)",
        **ip_fields,
    }
    return {"version": "x", "droplet": {"id": 1001}, "api": {}, "ips": [ip]}


def test_a_role_that_could_not_be_written_is_shouted() -> None:
    text = render(status_with(role_persisted=False, role_persist_error="cannot write /run/x"))
    assert f"{IP}: ROLE NOT PERSISTED" in text
    assert "cannot write /run/x" in text
    assert "ROLE NOT PERSISTED" not in render(status_with())


def test_failure_notification_state_is_shown() -> None:
    assert f"{IP}: failure notification armed (FloatIP on node1)" in render(status_with())
    text = render(status_with(failure_notification="not armed: no Pacemaker resource/node"))
    assert "failure notification not armed" in text


def test_a_locked_ip_and_an_unknown_holder_say_why() -> None:
    locked = render(status_with(held_here=None, holder_locked=True))
    assert "locked" in locked
    unknown = render(status_with(held_here=None, holder_why="no fresh answer from the API"))
    assert "holder unknown: no fresh answer from the API" in unknown
    assert "in progress" in render(status_with(in_flight="start"))
