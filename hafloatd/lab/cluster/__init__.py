"""A real two-node Corosync + Pacemaker cluster on one machine, for the lab and the tests.

Two nodes in network namespaces on a bridge, each in private mount/pid/uts/ipc namespaces
with its own ``/etc/corosync``, ``/var/lib/pacemaker``, ``/var/lib/corosync``,
``/var/log/{pacemaker,corosync}`` and ``/run``; per node nginx and ``hafloatd run``; the
DigitalOcean simulator on the bridge's host address. ``Cluster`` builds and tears it down::

    async with Cluster(ClusterSpec(token_ms=1000)) as cluster:
        status = await cluster.status()          # crm_mon --output-as=xml, parsed
        await cluster.crash(cluster.node("node1"))

Like the rest of ``lab/``, nothing here imports the daemon's side: it writes YAML and runs
processes. ``check_capabilities()`` says what is missing where namespaces cannot be made.
"""

from hafloatd.lab.cluster.capability import CapabilityReport, check_capabilities
from hafloatd.lab.cluster.clusterconf import RESOURCE_ID, HealthSpec, ResourceSpec
from hafloatd.lab.cluster.harness import CapabilityError, Cluster, ClusterSpec
from hafloatd.lab.cluster.network import NetworkSpec
from hafloatd.lab.cluster.node import ClusterNode
from hafloatd.lab.cluster.procs import ClusterError
from hafloatd.lab.cluster.status import ClusterStatus, FailedAction

__all__ = [
    "RESOURCE_ID",
    "CapabilityError",
    "CapabilityReport",
    "Cluster",
    "ClusterError",
    "ClusterNode",
    "ClusterSpec",
    "ClusterStatus",
    "FailedAction",
    "HealthSpec",
    "NetworkSpec",
    "ResourceSpec",
    "check_capabilities",
]
