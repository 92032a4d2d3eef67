"""A daemon restart changes nothing Pacemaker can see (the one rule), under a real cluster.

Kill -9 of the active node's hafloatd, restarted 2 s later as systemd's ``RestartSec=2s``
does: nothing moves, no POST, the role is recovered. Down for longer than a monitor: at most
the one move Pacemaker decides, and never "active on 2 nodes", also after a cleanup.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from hafloatd.lab.cluster import Cluster, ClusterSpec, HealthSpec
from hafloatd.lab.cluster.daemonctl import ip_status, monitors_answered
from tests.cluster.helpers import (
    assign_targets,
    posts,
    right_after_a_monitor,
)

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio(loop_scope="module")]

CLUSTER_SPEC = ClusterSpec(health=HealthSpec(interval_s=1.0, timeout_s=0.5, rise=2, fall=2))
RESTART_SEC = 2.0  # systemd/hafloatd.service: Restart=on-failure, RestartSec=2s


async def test_daemon_killed_and_restarted_by_systemd_changes_nothing(healthy: Cluster) -> None:
    cluster = healthy
    [where] = (await cluster.status()).active_nodes()
    active = cluster.node(where)
    since = len(posts(cluster))
    mark = await cluster.log_mark()
    # Kill it 1 s before the next recurring monitor is due, so that monitor runs while the
    # daemon is down and systemd has not restarted it yet (the case the rule is about).
    last_monitor = await right_after_a_monitor(active)
    interval = cluster.spec.resource.monitor_interval_s
    await asyncio.sleep(max(0.0, last_monitor + interval - 1.0 - time.monotonic()))
    await cluster.kill_hafloatd(active, signal.SIGKILL)
    await asyncio.sleep(RESTART_SEC)  # systemd's RestartSec, not a synchronisation
    await active.start_hafloatd()
    # Either the restarted daemon answers the next monitor (nothing happened), or Pacemaker
    # recorded a failure of the one it missed.
    async with asyncio.timeout(2 * interval + 10):
        while not await monitors_answered(active) and not (await cluster.status()).failures:
            await asyncio.sleep(0.1)
    await cluster.crm("crm_resource", "--wait", "--timeout=60s")
    status = await cluster.status()
    assert status.started_on(active.name), f"FloatIP moved: {status.summary()}"
    assert status.failures == [] and status.total_fail_count() == 0, status.summary()
    assert posts(cluster, since) == [], "a daemon restart cost an API call"
    assert cluster.holder() is active
    assert (await ip_status(active, cluster.ip))["role"] == "started"
    assert await cluster.active_on_two_nodes(mark) == []


async def test_daemon_down_past_a_monitor_moves_once_and_never_active_on_two_nodes(
    healthy: Cluster,
) -> None:
    cluster = healthy
    [where] = (await cluster.status()).active_nodes()
    old = cluster.node(where)
    new = cluster.other(old)
    since = len(posts(cluster))
    mark = await cluster.log_mark()
    await cluster.kill_hafloatd(old, signal.SIGKILL)
    # Down for longer than a monitor: Pacemaker moves FloatIP (stop on old answered without
    # the daemon, start on new).
    bound = cluster.spec.resource.monitor_interval_s + cluster.spec.resource.start_timeout_s + 30
    await cluster.wait_for(lambda s: new.name in s.active_nodes(), bound,
                           f"FloatIP started on {new.name}")  # fmt: skip
    await old.start_hafloatd()
    await cluster.crm("crm_resource", "--wait", "--timeout=60s")
    await cluster.cleanup()  # forget the failure: Pacemaker probes both nodes again
    await cluster.crm("crm_resource", "--wait", "--timeout=60s")
    status = await cluster.status()
    assert await cluster.active_on_two_nodes(mark) == []
    assert status.started_on(new.name), status.summary()
    assert cluster.holder() is new
    assert assign_targets(posts(cluster, since)) == [new.droplet_id], "more than the one move"
    assert (await ip_status(old, cluster.ip))["role"] == "stopped"
