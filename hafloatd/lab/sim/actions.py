"""A simulated DigitalOcean action on a reserved IP (``SimAction``) and its vocabulary.

Plain data: ``state`` creates, schedules and finishes actions; ``render`` turns them into
DigitalOcean's JSON. ``origin`` says who started one: a client of the API, an out-of-band move
(``Simulator.move_out_of_band``, a person in the control panel), or the account history the
simulator seeds at start.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

# DO action ids are past 2**31 these days; starting there catches int32 bugs in clients.
FIRST_ACTION_ID = 2_300_000_001

ActionStatus = Literal["in-progress", "completed", "errored"]
ActionOutcome = Literal["completed", "errored", "stuck"]
ActionOrigin = Literal["api", "out_of_band", "seed"]
ResourceType = Literal["reserved_ip", "floating_ip"]


@dataclass
class SimAction:
    """One action. ``droplet_id`` is the target of an assign, the old holder of an unassign."""

    id: int
    type: str  # assign_ip | unassign_ip | reserve_ip
    ip: str
    region: str
    resource_type: ResourceType
    droplet_id: int | None
    previous_holder: int | None
    started_at: float  # unix time
    status: ActionStatus = "in-progress"
    completed_at: float | None = None
    outcome: ActionOutcome = "completed"
    origin: ActionOrigin = "api"

    @property
    def pending(self) -> bool:
        return self.status == "in-progress"

    def involves(self, droplet_id: int) -> bool:
        return droplet_id in (self.droplet_id, self.previous_holder)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "ip": self.ip,
            "status": self.status,
            "outcome": self.outcome,
            "origin": self.origin,
            "droplet_id": self.droplet_id,
            "previous_holder": self.previous_holder,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
        }


def resource_id(ip: str) -> int:
    """DigitalOcean reports a reserved IP action's resource_id as the IPv4 address as integer."""
    return int(ipaddress.IPv4Address(ip))
