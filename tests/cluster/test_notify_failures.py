"""``pacemaker.notify_failures``: a dead nginx is reported to Pacemaker at once
(``crm_resource --fail``), so the move does not wait for the next recurring monitor; and
that still holds after the daemon was restarted the way ``systemctl restart`` does it."""

from __future__ import annotations

import signal
import time

import pytest

from hafloatd.lab.cluster import Cluster, ClusterNode, ClusterSpec, HealthSpec
from tests.cluster.helpers import (
    answered_by,
    assign_targets,
    client,
    posts,
    right_after_a_monitor,
)

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module")]

CLUSTER_SPEC = ClusterSpec(
    notify_failures=True, health=HealthSpec(interval_s=1.0, timeout_s=0.5, rise=2, fall=2)
)


async def _stop_nginx_and_expect_a_notified_move(cluster: Cluster, broken: ClusterNode) -> None:
    target = cluster.other(broken)
    since = len(posts(cluster))
    # Right after a monitor: the next one is a whole interval (10 s) away, health falls in
    # fall x interval (2 s), so only the notification can make Pacemaker act before it.
    await right_after_a_monitor(broken)
    stopped_at = time.time()
    async with client(cluster) as traffic:
        await cluster.stop_web(broken)
        status = await cluster.wait_for(lambda s: s.started_on(target.name), 60,
                                        f"FloatIP moved to {target.name}")  # fmt: skip
        await answered_by(traffic, target)
    notified = broken.daemon_events("pacemaker_notified", since=stopped_at)
    assert notified, f"hafloatd on {broken.name} never ran crm_resource --fail"
    [failure] = status.failures
    assert failure.node == broken.name
    assert failure.op_key == "FloatIP_asyncmon_0", (
        f"Pacemaker learned of the failure from {failure.op_key}, not from the notification"
    )
    assert cluster.holder() is target
    assert assign_targets(posts(cluster, since)) == [target.droplet_id]
    assert len(posts(cluster, since)) == 1
    assert status.fail_count(target.name) == 0
    print(f"fail-count on {broken.name} after one crm_resource --fail: "
          f"{status.fail_count(broken.name)}")  # fmt: skip


async def test_nginx_stopped_moves_the_ip_before_the_next_monitor(healthy: Cluster) -> None:
    [where] = (await healthy.status()).active_nodes()
    await _stop_nginx_and_expect_a_notified_move(healthy, healthy.node(where))


async def test_notify_failures_still_fires_after_a_systemctl_restart_of_the_daemon(
    healthy: Cluster,
) -> None:
    """``systemctl restart hafloatd`` (SIGTERM, then a fresh start) on the active node, then
    nginx dies: the restarted daemon must still tell Pacemaker at once."""
    cluster = healthy
    [where] = (await cluster.status()).active_nodes()
    active = cluster.node(where)
    await right_after_a_monitor(active)
    await cluster.kill_hafloatd(active, signal.SIGTERM)
    await active.start_hafloatd()
    # The restarted daemon answered a monitor: Pacemaker still sees FloatIP healthy there.
    await right_after_a_monitor(active)
    status = await cluster.status()
    assert status.started_on(active.name) and status.failures == [], status.summary()
    await _stop_nginx_and_expect_a_notified_move(cluster, active)
