"""``Cluster``: the simulator and two Pacemaker nodes, built, driven and torn down.

Build order: capability check, names and subnet checked free, the agent installed with
``hafloatd install-agent``, the network, the simulator on the bridge's host address (API,
one metadata service per droplet, the reserved-IP proxy clients request), the seed CIB with
the documented ``pcs`` line, then per node: PID 1, nginx, ``hafloatd run`` (ready), Corosync,
Pacemaker. Teardown stops every process by PID, deletes the namespaces and the bridge and
checks nothing is left; it also runs from ``atexit`` and on SIGTERM/SIGHUP when a run is
interrupted before its ``finally`` blocks could.

This is the one module of the cluster lab that imports the simulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from hafloatd.lab.cluster import teardown
from hafloatd.lab.cluster.capability import check_capabilities
from hafloatd.lab.cluster.clusterconf import (
    RESOURCE_ID,
    HealthSpec,
    ResourceSpec,
    corosync_conf,
    daemon_config,
    install_agent,
)
from hafloatd.lab.cluster.daemonctl import METRICS_PORT, ip_status
from hafloatd.lab.cluster.network import Network, NetworkSpec
from hafloatd.lab.cluster.node import ClusterNode
from hafloatd.lab.cluster.nodefiles import (
    pacemaker_line_counts,
    pacemaker_lines,
    prepare_cluster_files,
    save_daemon_log,
    write_daemon_files,
)
from hafloatd.lab.cluster.procs import ClusterError, Completed, wait_namespaces_empty
from hafloatd.lab.cluster.status import ClusterStatus, parse_crm_mon
from hafloatd.lab.sim import SimDroplet, SimReservedIp, SimScenario, Simulator

Progress = Callable[[str], None]
FIRST_DROPLET_ID = 1001


class CapabilityError(ClusterError):
    """This machine cannot run the cluster; the message lists what is missing."""


@dataclass(frozen=True)
class ClusterSpec:
    network: NetworkSpec = field(default_factory=NetworkSpec)
    resource: ResourceSpec = field(default_factory=ResourceSpec)
    health: HealthSpec | None = field(default_factory=HealthSpec)
    notify_failures: bool = False
    token_ms: int = 1000
    action_delay: float = 1.0
    dc_deadtime: str = "2s"
    region: str = "nyc3"
    cluster_name: str = "hafloatd-lab"

    def replace(self, **changes: Any) -> ClusterSpec:
        return dataclasses.replace(self, **changes)


class Cluster:
    """``async with Cluster(spec) as cluster:`` — see the module docstring."""

    def __init__(
        self,
        spec: ClusterSpec | None = None,
        *,
        progress: Progress | None = None,
        workdir: Path | None = None,
        keep: bool = False,
    ) -> None:
        self.spec = spec or ClusterSpec()
        self.progress: Progress = progress or (lambda _message: None)
        self.network = Network(self.spec.network)
        self.keep = keep
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="hafloatd-cluster-"))
        self.nodes: list[ClusterNode] = [
            ClusterNode(
                index=i,
                name=f"node{i}",
                droplet_id=FIRST_DROPLET_ID + i - 1,
                netns=self.spec.network.netns(i),
                address=self.spec.network.address(i),
                workdir=self.workdir / f"node{i}",
            )
            for i in range(1, self.spec.network.nodes + 1)
        ]
        self.token = "lab-" + os.urandom(16).hex()
        self.sim: Simulator | None = None
        self.pcs_line = ""
        self.built_in_s = 0.0
        self._torn_down = False

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        began = time.monotonic()
        report = await check_capabilities()
        if not report.ok:
            raise CapabilityError(report.explain())
        await self.network.check_free()
        teardown.register(id(self), self._sync_teardown)
        self.progress(
            f"network: bridge {self.spec.network.bridge} "
            f"{self.spec.network.host_address}, nodes "
            + ", ".join(f"{n.name} {n.address}" for n in self.nodes)
        )
        await self.network.create()
        self.sim = Simulator(self._scenario())
        await self.sim.start()
        # The CIB (pcs needs the installed agent's metadata) is made while the nodes boot.
        cluster_files = asyncio.create_task(self._cluster_files())
        try:
            await asyncio.gather(*(self._write_daemon_files(node) for node in self.nodes))
            self.progress(f"booting {len(self.nodes)} nodes: nginx, hafloatd")
            await asyncio.gather(*(self._boot_services(node) for node in self.nodes))
            await cluster_files
        finally:
            if not cluster_files.done():
                cluster_files.cancel()
                with contextlib.suppress(BaseException):
                    await cluster_files
        self.progress(f"resource: {self.pcs_line}")
        self.progress(f"starting Corosync (token {self.spec.token_ms} ms) and Pacemaker")
        await asyncio.gather(*(node.start_cluster_stack() for node in self.nodes))
        for node in self.nodes:
            self.progress(
                f"{node.name}: droplet {node.droplet_id}, {node.web_kind}, hafloatd "
                f"pid {node.services['hafloatd'].pid}, pacemakerd pid "
                f"{node.services['pacemakerd'].pid}"
            )
        await self.wait_for(
            lambda s: s.all_online(len(self.nodes)) and s.dc is not None,
            60,
            "both nodes online with a DC",
        )
        status = await self.wait_for(
            lambda s: any(s.started_on(n.name) for n in self.nodes),
            60,
            "FloatIP started on one node",
        )
        self.built_in_s = time.monotonic() - began
        where = status.active_nodes()[0]
        self.progress(f"cluster up in {self.built_in_s:.1f} s: FloatIP on {where}")

    async def stop(self) -> list[str]:
        """Tear everything down by PID; returns what was left (empty: clean)."""
        if self._torn_down:
            return []
        self._torn_down = True
        namespaces = [n.pid_ns for n in self.nodes if n.pid_ns]
        # Links up first: a TCP socket of a killed process still retransmits its FIN, and
        # keeps its network namespace (and the veth) alive for minutes if it cannot.
        with contextlib.suppress(ClusterError):
            await self.heal()
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(save_daemon_log, node)
            await node.crash()
        # A network namespace lives on while a process of the node is still being reaped.
        left = await wait_namespaces_empty(namespaces)
        if self.sim is not None:
            await self.sim.stop()
        left += await self.network.delete()
        teardown.unregister(id(self))
        if self._own_workdir and not self.keep:
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)
        return left

    async def boot_node(self, node: ClusterNode) -> None:
        """PID 1, then nginx, hafloatd (ready), Corosync, Pacemaker: a droplet's boot."""
        await self._boot_services(node)
        await node.start_cluster_stack()

    async def _boot_services(self, node: ClusterNode) -> None:
        await node.boot()
        await node.start_web()
        await node.start_hafloatd()

    # --- where things are ----------------------------------------------------------------

    @property
    def simulator(self) -> Simulator:
        if self.sim is None:
            raise ClusterError("the cluster is not started")
        return self.sim

    @property
    def ip(self) -> str:
        return self.spec.resource.ip

    def node(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no node {name!r}")

    def other(self, node: ClusterNode) -> ClusterNode:
        return next(n for n in self.nodes if n is not node)

    def by_droplet(self, droplet_id: int | None) -> ClusterNode | None:
        return next((n for n in self.nodes if n.droplet_id == droplet_id), None)

    def holder(self) -> ClusterNode | None:
        """The node whose droplet holds the reserved IP in the simulator (the API's truth)."""
        return self.by_droplet(self.simulator.holder(self.ip))

    def proxy_address(self) -> tuple[str, int]:
        """Where a client reaches the reserved IP."""
        return self.simulator.proxy_address(self.ip)

    # --- Pacemaker ------------------------------------------------------------------------

    def live_node(self, prefer: ClusterNode | None = None) -> ClusterNode:
        if prefer is not None and prefer.up:
            return prefer
        for node in self.nodes:
            if node.up:
                return node
        raise ClusterError("no node is up")

    async def crm(
        self, *argv: str, node: ClusterNode | None = None, check: bool = True, timeout: float = 30.0
    ) -> Completed:
        """Run a Pacemaker command inside ``node`` (default: the first node that is up)."""
        return await self.live_node(node).exec(argv, check=check, timeout=timeout)

    async def status(self, node: ClusterNode | None = None) -> ClusterStatus:
        """``crm_mon --output-as=xml`` as seen from ``node``."""
        done = await self.crm("crm_mon", "-1", "--output-as=xml", "--include=all", node=node)
        return parse_crm_mon(done.stdout)

    async def wait_for(
        self,
        predicate: Callable[[ClusterStatus], bool],
        timeout: float,
        what: str,
        node: ClusterNode | None = None,
    ) -> ClusterStatus:
        """Poll crm_mon until ``predicate`` holds; ClusterError naming ``what`` on timeout."""
        last: ClusterStatus | None = None
        error = ""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        last = await self.status(node)
                        if predicate(last):
                            return last
                    except ClusterError as exc:
                        error = str(exc)
                    await asyncio.sleep(0.1)
        except TimeoutError:
            seen = last.summary() if last is not None else error
            raise ClusterError(
                f"timed out after {timeout:g}s waiting for {what}; crm_mon: {seen}"
            ) from None

    def pacemaker_log(self, mark: dict[str, int] | None = None) -> list[str]:
        """Every node's pacemaker.log lines, each prefixed with the node's name; with ``mark``
        (from ``log_mark``) only the lines written since. Synchronous: use to_thread."""
        return pacemaker_lines(self.nodes, mark)

    async def log_mark(self) -> dict[str, int]:
        """How many lines each node's pacemaker.log has now."""
        return await asyncio.to_thread(pacemaker_line_counts, self.nodes)

    async def active_on_two_nodes(self, mark: dict[str, int] | None = None) -> list[str]:
        """Pacemaker's "active on 2 nodes" complaints in every node's log (since ``mark``)."""
        lines = await asyncio.to_thread(pacemaker_lines, self.nodes, mark)
        return [line for line in lines if "active on 2 nodes" in line]

    async def move(self, to: ClusterNode) -> None:
        """``crm_resource --move`` (leaves a ``cli-prefer`` constraint until ``clear``)."""
        await self.crm("crm_resource", "--move", "-r", RESOURCE_ID, "-N", to.name)

    async def clear(self) -> None:
        await self.crm("crm_resource", "--clear", "-r", RESOURCE_ID)

    async def cleanup(self, node: ClusterNode | None = None) -> None:
        """``crm_resource --cleanup``: forget failures, probe again."""
        await self.crm("crm_resource", "--cleanup", "-r", RESOURCE_ID, node=node)

    async def wait_healthy(self, node: ClusterNode, timeout: float = 60.0) -> None:
        """Until ``node``'s hafloatd reports its health probe up."""
        health = ""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    health = str((await ip_status(node, self.ip)).get("health"))
                    if health == "up":
                        return
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise ClusterError(f"hafloatd on {node.name} still reports health {health!r}") from None

    async def constraints(self) -> list[str]:
        """Ids of every constraint in the CIB."""
        done = await self.crm("cibadmin", "-Q", "-o", "constraints")
        root = ET.fromstring(done.stdout)  # noqa: S314 - our own cluster's CIB
        return [el.get("id", "") for el in root if el.get("id")]

    # --- faults ---------------------------------------------------------------------------

    async def crash(self, node: ClusterNode) -> float:
        """SIGKILL the node's PID 1; returns the wall time of the kill."""
        at = time.time()
        await node.crash()
        return at

    async def restart_node(self, node: ClusterNode) -> None:
        """Boot a crashed node again (its disks kept, /run fresh) and wait until it rejoined."""
        await self.boot_node(node)
        await self.wait_for(lambda s: s.all_online(len(self.nodes)), 60, f"{node.name} back online")

    async def kill_hafloatd(self, node: ClusterNode, signum: int = signal.SIGKILL) -> float:
        """Signal the node's hafloatd by PID and wait until it is gone; the signal's time."""
        at = time.time()
        await node.stop_service("hafloatd", signum)
        return at

    async def stop_web(self, node: ClusterNode) -> float:
        """Stop nginx on ``node`` (SIGTERM by PID, as ``systemctl stop nginx``)."""
        at = time.time()
        await node.stop_service("web")
        return at

    async def partition(self) -> float:
        at = time.time()
        await self.network.partition()
        return at

    async def heal(self) -> None:
        await self.network.heal_partition()
        for node in self.nodes:
            await self.network.reconnect(node.index)

    async def isolate(self, node: ClusterNode) -> float:
        at = time.time()
        await self.network.isolate(node.index)
        return at

    async def reset(self, timeout: float = 120.0) -> ClusterStatus:
        """Back to a healthy baseline: network healed, every node and service running, no
        fault injected, no constraint, no failure, FloatIP started where the IP points."""
        sim = self.simulator
        await self.heal()
        sim.faults.clear()
        sim.finish_stuck_actions()
        for node in self.nodes:
            if not node.up:
                await self.boot_node(node)
                continue
            if "web" not in node.services or not node.services["web"].running:
                await node.start_web()
            if "hafloatd" not in node.services or not node.services["hafloatd"].running:
                await node.start_hafloatd()
        await self.wait_for(lambda s: s.all_online(len(self.nodes)), timeout, "both nodes online")
        if self.spec.health is not None:
            # A restarted nginx counts only after `rise` good probes: until then a start there
            # succeeds and its first monitor fails.
            for node in self.nodes:
                await self.wait_healthy(node, timeout)
        await self.crm("crm_resource", "--clear", "-r", RESOURCE_ID, check=False)
        await self.cleanup()

        def settled(s: ClusterStatus) -> bool:
            holder = self.holder()
            return (
                holder is not None
                and s.started_on(holder.name)
                and not s.failures
                and s.total_fail_count() == 0
                and not sim.locked(self.ip)
            )

        status = await self.wait_for(settled, timeout, "FloatIP settled where the IP points")
        await sim.wait_idle(timeout)
        return status

    # --- files ----------------------------------------------------------------------------

    def _scenario(self) -> SimScenario:
        return SimScenario(
            tokens=(self.token,),
            droplets=tuple(
                SimDroplet(id=n.droplet_id, name=n.name, region=self.spec.region, backend=n.backend)
                for n in self.nodes
            ),
            reserved_ips=(SimReservedIp(ip=self.ip, region=self.spec.region),),
            action_delay=self.spec.action_delay,
            host=self.spec.network.host_address,
        )

    async def _cluster_files(self) -> None:
        """Agent installed, seed CIB with the resource, corosync.conf and key, per node."""
        await install_agent()
        self.pcs_line = await prepare_cluster_files(
            self.nodes, self.workdir, self.spec.resource, self.spec.dc_deadtime,
            corosync_conf({n.name: n.address for n in self.nodes}, self.spec.token_ms,
                          self.spec.cluster_name),
        )  # fmt: skip

    async def _write_daemon_files(self, node: ClusterNode) -> None:
        config = daemon_config(
            ip=self.ip,
            api_url=self.simulator.api_url,
            metadata_url=self.simulator.metadata_url(node.droplet_id),
            token_file=node.token_path,
            cache_file=node.hafloatd_dir / "metadata.json",
            metrics_listen=f"{node.address}:{METRICS_PORT}",
            health=self.spec.health,
            notify_failures=self.spec.notify_failures,
        )
        await asyncio.to_thread(write_daemon_files, node, config, self.token)

    def _sync_teardown(self) -> None:
        """For ``teardown.run_all``: SIGKILL every known PID, delete namespaces and bridge."""
        pids = [p for n in self.nodes for p in [n.init_pid, *(s.pid for s in n.services.values())]]
        net = self.spec.network
        links = [
            net.veth_host(n.index) for n in self.nodes if n.netns in self.network.created_netns
        ]
        links += [net.bridge] if self.network.created_bridge else []
        teardown.hard_teardown(pids, self.network.created_netns, links)
        if self._own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
