"""The lab's network: one bridge in the host namespace, one network namespace per node.

Node N gets the N-th host address of the subnet on a veth whose other end is on the bridge;
the bridge gets the last host address, where the simulator (API, metadata, reserved-IP
proxy) listens for both nodes. Nothing is routed anywhere else. Names and subnet are checked
free before anything is created, and ``delete`` removes exactly what ``create`` made.

Faults: ``partition`` drops only Corosync's knet traffic between the nodes (nftables inside
each node's namespace), so both still reach the API like two droplets in one region;
``isolate`` takes one node's link down (no peer, no API).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from hafloatd.lab.cluster.procs import ClusterError, run

IFNAME_MAX = 15  # Linux interface names
KNET_PORT = 5405  # Corosync's default knet/udp port
NFT_TABLE = "hafloatd_lab"


@dataclass(frozen=True)
class NetworkSpec:
    """``prefix`` names everything (netns ``PREFIX-n1``, bridge ``PREFIX-br``); ``subnet``
    is an IPv4 /24../29 the host does not use."""

    prefix: str = "hafl"
    subnet: str = "10.99.0.0/24"
    nodes: int = 2

    def __post_init__(self) -> None:
        longest = len(self.veth_host(self.nodes))
        if not self.prefix or longest > IFNAME_MAX:
            raise ClusterError(
                f"network prefix {self.prefix!r} makes interface names of {longest} characters; "
                f"Linux allows {IFNAME_MAX}: use at most {IFNAME_MAX - longest + len(self.prefix)}"
            )
        if not all(c.isalnum() or c == "-" for c in self.prefix):
            raise ClusterError(f"network prefix {self.prefix!r}: use letters, digits and '-'")
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise ClusterError(f"subnet {self.subnet!r} is not an IPv4 network: {exc}") from None
        if net.num_addresses - 2 < self.nodes + 1:
            raise ClusterError(f"subnet {self.subnet} is too small for {self.nodes} nodes")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def host_address(self) -> str:
        """The bridge's address: where the simulator listens for every node."""
        return str(self.network.broadcast_address - 1)

    def netns(self, index: int) -> str:
        return f"{self.prefix}-n{index}"

    def address(self, index: int) -> str:
        return str(self.network.network_address + index)

    def veth_node(self, index: int) -> str:
        return f"{self.prefix}-n{index}e"

    def veth_host(self, index: int) -> str:
        return f"{self.prefix}-n{index}b"


class Network:
    """Creates and deletes the bridge, namespaces and veths of one ``NetworkSpec``."""

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self.created_netns: list[str] = []
        self.created_bridge = False

    async def check_free(self) -> None:
        """ClusterError naming each name or address range already in use on this host."""
        spec = self.spec
        netns = {n["name"] for n in await _ip_json("netns", "list")}
        links = {link["ifname"] for link in await _ip_json("link", "show")}
        problems = [f"network namespace {n} exists" for n in self._netns_names() if n in netns]
        wanted_links = [spec.bridge] + [
            name for i in self._indexes() for name in (spec.veth_node(i), spec.veth_host(i))
        ]
        problems += [f"interface {name} exists" for name in wanted_links if name in links]
        for iface in await _ip_json("addr", "show"):
            for info in iface.get("addr_info", []):
                if info.get("family") != "inet":
                    continue
                net = ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
                if net.overlaps(spec.network):
                    problems.append(
                        f"{iface['ifname']} has {info['local']}/{info['prefixlen']}, "
                        f"inside {spec.subnet}"
                    )
        for route in await _ip_json("route", "show", "table", "all"):
            dst = route.get("dst", "")
            if dst in ("default", "") or ":" in dst or route.get("type") in ("local", "broadcast"):
                continue
            if ipaddress.IPv4Network(dst, strict=False).overlaps(spec.network):
                problems.append(f"route {dst} via {route.get('dev')} overlaps {spec.subnet}")
        if problems:
            raise ClusterError(
                "cannot build the lab network, already in use: "
                + "; ".join(problems)
                + " (choose another --net-prefix/--subnet, or remove the leftovers: "
                f"ip netns del {spec.netns(1)}; ip link del {spec.bridge})"
            )

    async def create(self) -> None:
        spec = self.spec
        bits = spec.network.prefixlen
        await _ip("link", "add", spec.bridge, "type", "bridge")
        self.created_bridge = True
        await _ip("addr", "add", f"{spec.host_address}/{bits}", "dev", spec.bridge)
        await _ip("link", "set", spec.bridge, "up")
        for i in self._indexes():
            ns, inner, outer = spec.netns(i), spec.veth_node(i), spec.veth_host(i)
            await _ip("netns", "add", ns)
            self.created_netns.append(ns)
            await _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            await _ip("link", "set", outer, "master", spec.bridge)
            await _ip("link", "set", outer, "up")
            await _ip("link", "set", inner, "netns", ns)
            await _ip("-n", ns, "addr", "add", f"{spec.address(i)}/{bits}", "dev", inner)
            await _ip("-n", ns, "link", "set", "lo", "up")
            await _ip("-n", ns, "link", "set", inner, "up")

    async def delete(self) -> list[str]:
        """Delete what ``create`` made; returns what could not be removed (empty: all gone)."""
        spec = self.spec
        for ns in self.created_netns:
            await run(["ip", "netns", "del", ns], check=False)
        if self.created_bridge:
            await run(["ip", "link", "del", spec.bridge], check=False)
        # Deleting a veth's host end also removes the end inside a namespace that something
        # (an orphaned socket) still keeps alive; absent ends are simply not found.
        for i in self._indexes():
            await run(["ip", "link", "del", spec.veth_host(i)], check=False)
        # Deleting a namespace (and the veth ends inside it) finishes asynchronously.
        left: list[str] = []
        for _ in range(300):  # up to 15 s
            links = {link["ifname"] for link in await _ip_json("link", "show")}
            netns = {n["name"] for n in await _ip_json("netns", "list")}
            left = [n for n in self.created_netns if n in netns]
            left += [name for name in links if name.startswith(f"{spec.prefix}-")]
            if not left:
                break
            await asyncio.sleep(0.05)
        self.created_netns = [n for n in self.created_netns if n in left]
        self.created_bridge = spec.bridge in left
        return left

    # --- faults ---------------------------------------------------------------------------

    async def partition(self) -> None:
        """Drop Corosync's knet packets between the nodes, and nothing else."""
        for i in self._indexes():
            rules = []
            for peer in self._indexes():
                if peer != i:
                    address = self.spec.address(peer)
                    rules.append(
                        f"add rule inet {NFT_TABLE} in ip saddr {address} "
                        f"udp dport {KNET_PORT} drop"
                    )
                    rules.append(
                        f"add rule inet {NFT_TABLE} out ip daddr {address} "
                        f"udp dport {KNET_PORT} drop"
                    )
            script = "\n".join(
                [
                    f"add table inet {NFT_TABLE}",
                    f"add chain inet {NFT_TABLE} in {{ type filter hook input priority 0; }}",
                    f"add chain inet {NFT_TABLE} out {{ type filter hook output priority 0; }}",
                    *rules,
                ]
            )
            await run(
                ["ip", "netns", "exec", self.spec.netns(i), "nft", "-f", "-"],
                stdin=script.encode() + b"\n",
            )

    async def heal_partition(self) -> None:
        for i in self._indexes():
            await run(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.spec.netns(i),
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    NFT_TABLE,
                ],
                check=False,
            )

    async def isolate(self, index: int) -> None:
        """Take node ``index``'s only link down: no peer, no API, no clients."""
        await _ip("-n", self.spec.netns(index), "link", "set", self.spec.veth_node(index), "down")

    async def reconnect(self, index: int) -> None:
        await _ip("-n", self.spec.netns(index), "link", "set", self.spec.veth_node(index), "up")

    def _indexes(self) -> range:
        return range(1, self.spec.nodes + 1)

    def _netns_names(self) -> list[str]:
        return [self.spec.netns(i) for i in self._indexes()]


async def _ip(*args: str) -> None:
    await run(["ip", *args], timeout=15)


async def _ip_json(*args: str) -> list[dict[str, Any]]:
    done = await run(["ip", "-j", *args], timeout=15)
    text = done.stdout.strip()
    return list(json.loads(text)) if text else []


async def free_network(prefix: str, thirds: range = range(100, 200)) -> NetworkSpec:
    """The first 10.99.X.0/24 (X in ``thirds``) that nothing on this host uses, named
    ``prefix``; a name already taken is an error at once (another lab owns it)."""
    last_error = ""
    for third in thirds:
        spec = NetworkSpec(prefix=prefix, subnet=f"10.99.{third}.0/24")
        try:
            await Network(spec).check_free()
        except ClusterError as exc:
            last_error = str(exc)
            if "network namespace" in last_error or "interface" in last_error:
                raise
            continue
        return spec
    raise ClusterError(f"no free 10.99.X.0/24 subnet in {thirds}: {last_error}")
