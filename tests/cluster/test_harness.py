"""The cluster harness itself: what it refuses, what it reports, and the CI rule."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from hafloatd.lab.cluster import (
    CapabilityReport,
    ClusterError,
    NetworkSpec,
    check_capabilities,
)
from hafloatd.lab.cluster.network import Network
from hafloatd.lab.cluster.procs import run
from tests.cluster.conftest import require_cluster, running_under_ci

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates namespaces and links (root)"),
]
PREFIX = f"hfx{os.getpid() % 10000}"


def test_network_names_longer_than_linux_allows_are_refused() -> None:
    with pytest.raises(ClusterError, match="15"):
        NetworkSpec(prefix="a-very-long-prefix")


def test_a_subnet_too_small_for_the_nodes_is_refused() -> None:
    with pytest.raises(ClusterError, match="too small"):
        NetworkSpec(subnet="10.99.7.0/30")


@pytest_asyncio.fixture
async def scratch_bridge() -> AsyncIterator[str]:
    """A bridge holding 10.99.250.1/24, removed afterwards."""
    name = f"{PREFIX}-x"
    await run(["ip", "link", "add", name, "type", "bridge"])
    try:
        await run(["ip", "addr", "add", "10.99.250.1/24", "dev", name])
        yield name
    finally:
        await run(["ip", "link", "del", name], check=False)


async def test_a_subnet_already_on_this_host_is_refused_by_name(scratch_bridge: str) -> None:
    with pytest.raises(ClusterError, match=rf"{scratch_bridge} has 10\.99\.250\.1/24"):
        await Network(NetworkSpec(prefix=PREFIX, subnet="10.99.250.0/24")).check_free()


async def test_a_namespace_name_in_use_is_refused_by_name() -> None:
    spec = NetworkSpec(prefix=PREFIX, subnet="10.99.251.0/24")
    await run(["ip", "netns", "add", spec.netns(2)])
    try:
        with pytest.raises(ClusterError, match=f"network namespace {spec.netns(2)} exists"):
            await Network(spec).check_free()
    finally:
        await run(["ip", "netns", "del", spec.netns(2)], check=False)


async def test_capability_check_names_each_missing_command_and_its_package(
    tmp_path: Path,
) -> None:
    report = await check_capabilities(search_path=str(tmp_path))
    assert not report.ok
    text = report.explain()
    assert "pcs not found (apt-get install pcs)" in text
    assert "nft not found (apt-get install nftables)" in text
    assert (
        "corosync, corosync-keygen, corosync-cfgtool not found (apt-get install corosync)" in text
    )
    assert any("nginx is not installed" in note for note in report.notes)


async def test_this_machine_can_build_the_cluster() -> None:
    report = await check_capabilities()
    require_cluster(report, running_under_ci())
    assert report.ok, report.explain()


def test_missing_capabilities_fail_under_ci_and_skip_elsewhere() -> None:
    report = CapabilityReport(missing=["nft not found (apt-get install nftables)"])
    with pytest.raises(pytest.fail.Exception, match=r"CI=true .* nftables"):
        require_cluster(report, ci=True)
    with pytest.raises(pytest.skip.Exception, match="nftables"):
        require_cluster(report, ci=False)
    assert running_under_ci({"CI": "true"}) and not running_under_ci({})
