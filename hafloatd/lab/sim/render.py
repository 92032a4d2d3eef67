"""DigitalOcean's JSON shapes for the simulator's objects: region, droplet, reserved IP, action.

Shapes follow the OpenAPI subset in ``shared/do-api`` (every required field present, formats
respected: RFC 3339 times, UUID project ids, dotted-quad addresses) and what the field shows
that the spec does not: a droplet holding a reserved IP lists it as a second public v4 network,
an action's ``resource_id`` is the IP as an integer, ``resource_type`` follows the path family.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from hafloatd.lab.sim.actions import ResourceType, SimAction, resource_id
from hafloatd.lab.sim.scenario import REGION_NAMES
from hafloatd.lab.sim.state import SimState

SIZE_SLUGS = (
    "s-1vcpu-512mb-10gb",
    "s-1vcpu-1gb",
    "s-1vcpu-2gb",
    "s-2vcpu-2gb",
    "s-2vcpu-4gb",
    "s-4vcpu-8gb",
    "s-8vcpu-16gb",
)
REGION_FEATURES = (
    "backups",
    "ipv6",
    "metadata",
    "install_agent",
    "storage",
    "image_transfer",
)
# Regions the spec's image.regions enum allows; a droplet image lists those.
IMAGE_REGIONS = (
    "ams3", "blr1", "fra1", "lon1", "nyc1", "nyc2", "nyc3", "sfo2", "sfo3", "sgp1", "tor1",
)  # fmt: skip
ACCOUNT_VPC_NAMESPACE = "hafloatd-sim-vpc"


def iso(ts: float) -> str:
    """Unix time -> DigitalOcean's ``2020-07-21T18:37:44Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def region_json(slug: str) -> dict[str, Any]:
    return {
        "name": REGION_NAMES[slug],
        "slug": slug,
        "features": list(REGION_FEATURES),
        "available": True,
        "sizes": list(SIZE_SLUGS),
    }


def droplet_json(state: SimState, droplet_id: int) -> dict[str, Any]:
    runtime = state.droplets[droplet_id]
    spec = runtime.spec
    v4: list[dict[str, Any]] = [
        {
            "ip_address": spec.private_ipv4,
            "netmask": "255.255.240.0",
            "gateway": _gateway(spec.private_ipv4),
            "type": "private",
        },
        {
            "ip_address": spec.public_ipv4,
            "netmask": "255.255.240.0",
            "gateway": _gateway(spec.public_ipv4),
            "type": "public",
        },
    ]
    held = state.held_by(droplet_id)
    if held is not None:
        # Observed in the field (flipop relies on it): a reserved IP shows up as the
        # droplet's second public v4 network.
        v4.append(
            {"ip_address": held, "netmask": "255.255.255.255", "gateway": "", "type": "public"}
        )
    created = iso(state.created_at - 86400)
    return {
        "id": spec.id,
        "name": spec.name,
        "memory": 1024,
        "vcpus": 1,
        "disk": 25,
        "disk_info": [{"type": "local", "size": {"amount": 25, "unit": "gib"}}],
        "locked": state.droplet_busy(droplet_id),
        "status": "active",
        "kernel": None,
        "created_at": created,
        "features": ["monitoring", "droplet_agent", "private_networking"],
        "backup_ids": [],
        "next_backup_window": None,
        "snapshot_ids": [],
        "image": {
            "id": 161_451_264,
            "name": "12 x64",
            "distribution": "Debian",
            "slug": "debian-12-x64",
            "public": True,
            "regions": list(IMAGE_REGIONS),
            "created_at": "2024-06-11T15:18:31Z",
            "type": "base",
            "min_disk_size": 15,
            "size_gigabytes": 1.17,
            "description": "Debian 12 x64",
            "tags": [],
            "status": "available",
            "error_message": "",
        },
        "volume_ids": [],
        "size": {
            "slug": "s-1vcpu-1gb",
            "memory": 1024,
            "vcpus": 1,
            "disk": 25,
            "transfer": 1.0,
            "price_monthly": 6.0,
            "price_hourly": 0.00893,
            "regions": sorted(REGION_NAMES),
            "available": True,
            "description": "Basic",
        },
        "size_slug": "s-1vcpu-1gb",
        "networks": {"v4": v4, "v6": []},
        "region": region_json(spec.region),
        "tags": list(spec.tags),
        "vpc_uuid": _vpc_uuid(spec.region),
    }


def reserved_ip_json(state: SimState, ip: str) -> dict[str, Any]:
    runtime = state.ips[ip]
    holder = runtime.holder
    return {
        "ip": ip,
        "region": region_json(runtime.spec.region),
        "droplet": droplet_json(state, holder) if holder is not None else None,
        "locked": runtime.pending_action_id is not None,
        "project_id": runtime.spec.project_id,
    }


def action_json(
    action: SimAction,
    *,
    resource_type: ResourceType | None = None,
    project_id: str | None = None,
) -> dict[str, Any]:
    """The action object; ``resource_type`` defaults to the family it was created on."""
    body: dict[str, Any] = {
        "id": action.id,
        "status": action.status,
        "type": action.type,
        "started_at": iso(action.started_at),
        "completed_at": iso(action.completed_at) if action.completed_at is not None else None,
        "resource_id": resource_id(action.ip),
        "resource_type": resource_type or action.resource_type,
        "region": region_json(action.region),
        "region_slug": action.region,
    }
    if project_id is not None:
        body["project_id"] = project_id
    return body


def _gateway(address: str) -> str:
    head, _, _ = address.rpartition(".")
    return f"{head}.1"


def _vpc_uuid(region: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{ACCOUNT_VPC_NAMESPACE}/{region}"))
