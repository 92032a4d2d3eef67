"""``crm_mon -1 --output-as=xml --include=all``, parsed: what the tests and the lab assert on.

Nodes and whether each is online, the DC, where each resource is active (and whether
Pacemaker marks it failed or blocked), fail-counts per node, failed actions with their exit
reasons, and location constraints (``crm_resource --move`` leaves ``cli-prefer-*`` ones).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from hafloatd.lab.cluster.clusterconf import RESOURCE_ID


@dataclass(frozen=True)
class FailedAction:
    op_key: str  # FloatIP_monitor_10000, FloatIP_asyncmon_0 (crm_resource --fail), ...
    node: str
    exit_status: str  # "not running", "error", ...
    exit_reason: str
    task: str
    interval_ms: int
    status: str = ""  # "complete", "Timed Out", ... (how the operation ended)


@dataclass
class ResourceState:
    active_on: list[str] = field(default_factory=list)
    role: str = ""
    failed: bool = False
    blocked: bool = False
    managed: bool = True


@dataclass
class ClusterStatus:
    xml: str
    nodes: dict[str, bool] = field(default_factory=dict)
    dc: str | None = None
    resources: dict[str, ResourceState] = field(default_factory=dict)
    fail_counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (node, rsc)
    failures: list[FailedAction] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)  # constraint ids

    def all_online(self, count: int) -> bool:
        return len(self.nodes) == count and all(self.nodes.values())

    def online(self) -> list[str]:
        return sorted(name for name, up in self.nodes.items() if up)

    def active_nodes(self, resource: str = RESOURCE_ID) -> list[str]:
        state = self.resources.get(resource)
        return list(state.active_on) if state else []

    def started_on(self, node: str, resource: str = RESOURCE_ID) -> bool:
        """Active on ``node`` alone, not failed, not blocked: settled there."""
        state = self.resources.get(resource)
        return (
            state is not None
            and state.active_on == [node]
            and state.role == "Started"
            and not state.failed
            and not state.blocked
        )

    def fail_count(self, node: str, resource: str = RESOURCE_ID) -> int:
        return self.fail_counts.get((node, resource), 0)

    def total_fail_count(self, resource: str = RESOURCE_ID) -> int:
        return sum(v for (_node, rsc), v in self.fail_counts.items() if rsc == resource)

    def summary(self) -> str:
        """One line for error messages: nodes, DC, resource placement, failures."""
        nodes = " ".join(f"{n}={'online' if up else 'OFFLINE'}" for n, up in self.nodes.items())
        rscs = " ".join(
            f"{rid}:{s.role or '-'}@{','.join(s.active_on) or 'nowhere'}"
            + (" FAILED" if s.failed else "")
            + (" BLOCKED" if s.blocked else "")
            for rid, s in self.resources.items()
        )
        counts = " ".join(f"failcount[{n}]={v}" for (n, _r), v in self.fail_counts.items())
        fails = "; ".join(
            f"{f.op_key} on {f.node}: {f.exit_status} ({f.exit_reason})" for f in self.failures
        )
        return (
            f"nodes[{nodes}] dc={self.dc} {rscs} {counts} failures[{fails}] "
            f"constraints[{' '.join(self.constraints)}]"
        )


def parse_crm_mon(text: str) -> ClusterStatus:
    root = ET.fromstring(text)  # noqa: S314 - crm_mon's own output, run by us as root
    status = ClusterStatus(text)
    nodes = root.find("nodes")
    for node in nodes.iter("node") if nodes is not None else ():
        status.nodes[node.get("name", "")] = node.get("online") == "true"
    dc = root.find("summary/current_dc")
    if dc is not None and dc.get("present") == "true":
        status.dc = dc.get("name")
    resources = root.find("resources")
    for rsc in resources.iter("resource") if resources is not None else ():
        status.resources[rsc.get("id", "")] = ResourceState(
            active_on=[n.get("name", "") for n in rsc.findall("node")],
            role=rsc.get("role", ""),
            failed=rsc.get("failed") == "true",
            blocked=rsc.get("blocked") == "true",
            managed=rsc.get("managed") != "false",
        )
    for node in root.findall("node_history/node"):
        for history in node.findall("resource_history"):
            count = history.get("fail-count")
            if count is not None:
                value = 1_000_000 if count == "INFINITY" else int(count)
                status.fail_counts[(node.get("name", ""), history.get("id", ""))] = value
    for failure in root.findall("failures/failure"):
        status.failures.append(
            FailedAction(
                op_key=failure.get("op_key", ""),
                node=failure.get("node", ""),
                exit_status=failure.get("exitstatus", ""),
                exit_reason=failure.get("exitreason", ""),
                task=failure.get("task", ""),
                interval_ms=int(failure.get("interval", "0") or 0),
                status=failure.get("status", ""),
            )
        )
    for constraint in root.findall("bans/ban"):
        status.constraints.append(constraint.get("id", ""))
    return status
