"""Under a real two-node Pacemaker: where FloatIP starts, planned moves, API faults during a
move, a node crash and its rejoin, a dead nginx without notification. One cluster for the
module; each test starts from a healthy baseline (``healthy``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hafloatd.lab.cluster import Cluster, ClusterSpec, HealthSpec
from tests.cluster.helpers import (
    accepted,
    answered_by,
    api_post,
    assign_targets,
    client,
    posts,
    wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module")]

CLUSTER_SPEC = ClusterSpec(health=HealthSpec(interval_s=1.0, timeout_s=0.5, rise=2, fall=2))


async def test_resource_starts_on_one_node_the_ip_points_there_and_pacemaker_agrees(
    healthy: Cluster,
) -> None:
    cluster = healthy
    status = await cluster.status()
    [where] = status.active_nodes()
    node = cluster.node(where)
    assert status.started_on(where), status.summary()
    assert cluster.holder() is node
    assert status.failures == [] and status.total_fail_count() == 0, status.summary()
    # The module's first test: the cluster's first start cost exactly one assign POST.
    assert assign_targets(posts(cluster)) == [node.droplet_id]
    async with client(cluster) as traffic:
        first = await answered_by(traffic, node)
        await wait_until(lambda: len([s for s in traffic.samples if s.at >= first]) >= 10, 10,
                         "ten requests through the reserved IP")  # fmt: skip
        answers = {s.answer for s in traffic.samples if s.at >= first}
    assert answers == {node.page}
    # Every other node agrees (no split view).
    for other in cluster.nodes:
        assert (await cluster.status(other)).started_on(where)


async def test_pcs_describes_the_agent_and_created_the_documented_resource(
    healthy: Cluster,
) -> None:
    done = await healthy.crm("pcs", "resource", "describe", "ocf:hafloatd:hafloat")
    assert "ip (required)" in done.stdout
    assert "socket:" in done.stdout
    cib = await healthy.crm("cibadmin", "-Q", "-o", "resources")
    for fragment in (
        'name="resource-stickiness" value="100"',
        'name="migration-threshold" value="1"',
        'name="failure-timeout" value="120s"',
        'name="monitor" interval="10s" timeout="20s"',
    ):
        assert fragment in cib.stdout


async def test_move_and_back_cost_one_post_each_and_clear_leaves_no_constraint(
    healthy: Cluster,
) -> None:
    cluster = healthy
    [where] = (await cluster.status()).active_nodes()
    first, second = cluster.node(where), cluster.other(cluster.node(where))
    since = len(posts(cluster))
    async with client(cluster) as traffic:
        for target in (second, first):
            await cluster.move(target)
            await cluster.wait_for(lambda s, t=target: s.started_on(t.name), 30,
                                   f"FloatIP moved to {target.name}")  # fmt: skip
            assert cluster.holder() is target
            await answered_by(traffic, target)
            assert "cli-prefer-FloatIP" in await cluster.constraints()
            await cluster.clear()
            assert await cluster.constraints() == []
            await cluster.crm("crm_resource", "--wait", "--timeout=30s")
            status = await cluster.status()
            assert status.started_on(target.name), "stickiness keeps it after --clear"
    assert assign_targets(posts(cluster, since)) == [second.droplet_id, first.droplet_id]
    assert len(posts(cluster, since)) == 2
    assert status.failures == [] and status.total_fail_count() == 0, status.summary()


def _server_errors(faults: Any) -> None:
    faults.server_errors(3, endpoint="post_action", status=503)


def _rate_limit_storm(faults: Any) -> None:
    faults.rate_limit_storm(3, endpoint="post_action", retry_after_s=1)


@pytest.mark.parametrize(
    "inject", [_server_errors, _rate_limit_storm], ids=["5xx-burst", "429-storm"]
)
async def test_a_move_completes_within_the_start_timeout_despite_api_faults(
    healthy: Cluster, inject: object
) -> None:
    cluster = healthy
    [where] = (await cluster.status()).active_nodes()
    target = cluster.other(cluster.node(where))
    since = len(posts(cluster))
    assert callable(inject)
    inject(cluster.simulator.faults)
    began = time.monotonic()
    await cluster.move(target)
    status = await cluster.wait_for(lambda s: s.started_on(target.name),
                                    cluster.spec.resource.start_timeout_s + 15,
                                    f"FloatIP started on {target.name}")  # fmt: skip
    assert cluster.holder() is target
    assert status.failures == [] and status.total_fail_count() == 0, status.summary()
    assert assign_targets(posts(cluster, since)) == [target.droplet_id]
    faulted = [e for e in posts(cluster, since) if e.fault]
    assert faulted, "the fault was never hit: the test proved nothing"
    print(f"move with {len(faulted)} faulted POSTs took {time.monotonic() - began:.2f}s")
    await cluster.clear()


async def test_a_move_waits_out_a_pending_event_within_the_start_timeout(
    healthy: Cluster,
) -> None:
    """Someone else's action on the IP is in progress when the start comes: the daemon waits
    for it (the IP is locked: in flux; or its POST met 422 "pending event") and assigns once
    it is over."""
    cluster = healthy
    sim = cluster.simulator
    [where] = (await cluster.status()).active_nodes()
    target = cluster.other(cluster.node(where))
    since = len(posts(cluster))
    sim.faults.stuck_actions(1, ip=cluster.ip)
    assert await api_post(cluster, {"type": "unassign"}) == 201
    assert sim.locked(cluster.ip)
    gets_before = len(sim.requests("get_reserved_ip", ip=cluster.ip))

    def start_is_waiting() -> bool:
        refused = any(e.status == 422 for e in posts(cluster, since))
        polling = len(sim.requests("get_reserved_ip", ip=cluster.ip)) >= gets_before + 2
        return refused or polling

    await cluster.move(target)
    await wait_until(start_is_waiting, 20, "the start waiting for the pending action")
    assert sim.finish_stuck_actions() == 1
    status = await cluster.wait_for(lambda s: s.started_on(target.name),
                                    cluster.spec.resource.start_timeout_s + 15,
                                    f"FloatIP started on {target.name}")  # fmt: skip
    assert cluster.holder() is target
    assert status.failures == [] and status.total_fail_count() == 0, status.summary()
    assigns = [e for e in accepted(posts(cluster, since)) if e.request_json()["type"] == "assign"]
    assert [e.request_json()["droplet_id"] for e in assigns] == [target.droplet_id]
    await cluster.clear()


async def test_node_crash_moves_the_ip_once_and_the_rejoined_node_does_not_take_it_back(
    healthy: Cluster,
) -> None:
    cluster = healthy
    [where] = (await cluster.status()).active_nodes()
    crashed = cluster.node(where)
    survivor = cluster.other(crashed)
    since = len(posts(cluster))
    async with client(cluster) as traffic:
        await cluster.crash(crashed)
        status = await cluster.wait_for(lambda s: s.started_on(survivor.name), 60,
                                        f"FloatIP on {survivor.name}", node=survivor)  # fmt: skip
        await answered_by(traffic, survivor)
    assert cluster.holder() is survivor
    assert len(posts(cluster, since)) == 1
    assert assign_targets(posts(cluster, since)) == [survivor.droplet_id]
    assert status.fail_count(survivor.name) == 0 and status.failures == [], status.summary()

    await cluster.restart_node(crashed)
    await cluster.crm("crm_resource", "--wait", "--timeout=60s")
    status = await cluster.status()
    assert status.started_on(survivor.name), "stickiness: the rejoined node does not take it"
    assert cluster.holder() is survivor
    assert len(posts(cluster, since)) == 1, "the rejoin cost no POST"
    assert status.failures == [] and status.total_fail_count() == 0, status.summary()


async def test_nginx_stopped_moves_the_ip_at_the_next_monitor_without_notification(
    healthy: Cluster,
) -> None:
    cluster = healthy
    [where] = (await cluster.status()).active_nodes()
    broken = cluster.node(where)
    target = cluster.other(broken)
    since = len(posts(cluster))
    health = cluster.spec.health
    assert health is not None
    bound = cluster.spec.resource.monitor_interval_s + health.fall * health.interval_s + 30
    async with client(cluster) as traffic:
        await cluster.stop_web(broken)
        status = await cluster.wait_for(lambda s: s.started_on(target.name), bound,
                                        f"FloatIP moved to {target.name}")  # fmt: skip
        await answered_by(traffic, target)
    assert cluster.holder() is target
    assert assign_targets(posts(cluster, since)) == [target.droplet_id]
    assert len(posts(cluster, since)) == 1
    [failure] = status.failures
    assert failure.node == broken.name
    assert failure.op_key == "FloatIP_monitor_10000", "found by the recurring monitor"
    assert "health" in failure.exit_reason
    assert status.fail_count(target.name) == 0
