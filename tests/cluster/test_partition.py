"""Partitions with no fencing (stonith-enabled=false, as the tutorial sets up).

Corosync's knet traffic cut between the nodes, each still reaching the API as two droplets
in one region would: both sides start FloatIP, the simulator ends with one holder, the
daemons do not fight over the IP, and after healing Pacemaker converges on one node. One
node isolated entirely (link down, no API either): its start fails within the operation's
timeout with a reason that says why.
"""

from __future__ import annotations

import asyncio

import pytest

from hafloatd.lab.cluster import Cluster, ClusterSpec, HealthSpec
from tests.cluster.helpers import accepted, assign_targets, posts, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module")]

CLUSTER_SPEC = ClusterSpec(health=HealthSpec(interval_s=1.0, timeout_s=0.5, rise=2, fall=2))
FIGHT_WINDOW_S = 30.0


async def test_a_knet_partition_makes_one_holder_no_fight_and_heals_to_one_node(
    healthy: Cluster,
) -> None:
    cluster = healthy
    [where] = (await cluster.status()).active_nodes()
    first = cluster.node(where)
    second = cluster.other(first)
    since = len(posts(cluster))
    await cluster.partition()
    # Each side loses the other and, with no-quorum-policy=ignore and no fencing, runs it.
    await cluster.wait_for(lambda s: s.nodes.get(first.name) is False, 30,
                           f"{second.name} sees {first.name} lost", node=second)  # fmt: skip
    await cluster.wait_for(lambda s: second.name in s.active_nodes(), 60,
                           f"{second.name} started FloatIP on its side", node=second)  # fmt: skip
    await wait_until(lambda: cluster.holder() is second, 30, f"the IP on {second.name}")
    # Both still reach the API: count the assigns over a window (an observation, not a wait).
    await asyncio.sleep(FIGHT_WINDOW_S)
    assert assign_targets(posts(cluster, since)) == [second.droplet_id], "the daemons fought"
    assert cluster.holder() is second
    await cluster.heal()
    for node in cluster.nodes:
        await cluster.wait_for(lambda s: s.all_online(2), 60, "the partition healed", node=node)
    await cluster.crm("crm_resource", "--wait", "--timeout=60s")
    status = await cluster.status()
    [settled] = status.active_nodes()
    holder = cluster.holder()
    assert holder is not None and holder.name == settled, status.summary()
    assert status.started_on(settled), status.summary()
    assert len(accepted(posts(cluster, since))) <= 2, "more than one move after healing"


async def test_an_isolated_node_fails_its_start_within_the_timeout_with_a_reason(
    healthy: Cluster,
) -> None:
    cluster = healthy
    [where] = (await cluster.status()).active_nodes()
    holder = cluster.node(where)
    isolated = cluster.other(holder)
    since = len(posts(cluster))
    await cluster.isolate(isolated)
    timeout_s = cluster.spec.resource.start_timeout_s
    status = await cluster.wait_for(
        lambda s: any(f.op_key == "FloatIP_start_0" for f in s.failures),
        timeout_s + 30, f"the start on isolated {isolated.name} to fail", node=isolated,
    )  # fmt: skip
    [failure] = [f for f in status.failures if f.op_key == "FloatIP_start_0"]
    assert failure.node == isolated.name
    assert failure.status != "Timed Out", "the agent must answer before Pacemaker's timeout"
    assert failure.exit_reason, "no ocf-exit-reason: the user cannot tell why"
    print(f"isolated start failed: {failure.exit_status}: {failure.exit_reason}")
    # The holder's side kept FloatIP, and nothing reached the API from the isolated node.
    assert (await cluster.status(holder)).started_on(holder.name)
    assert cluster.holder() is holder
    assert accepted(posts(cluster, since)) == []
