"""Cluster-tier fixtures: one real two-node Corosync + Pacemaker cluster per test module.

``cluster``  built once per module from the module's ``CLUSTER_SPEC`` (default ``ClusterSpec()``)
             on names and a subnet free on this host; torn down by PID at the end of the
             module, which fails if anything is left (a namespace, a process), or if any API
             exchange broke DigitalOcean's OpenAPI contract.
``healthy``  the same cluster, brought back to a healthy baseline before each test (network
             healed, every node and service up, no fault, no constraint, no failure, FloatIP
             started where the IP points). When a test fails, its diagnostics (crm_mon,
             Pacemaker's and the daemons' logs) are printed.

Where this machine cannot build the cluster the tests skip saying exactly what is missing,
except under ``CI=true``: there they fail, because CI must never silently skip them.
``HAFLOATD_LAB_KEEP=1`` keeps each module's lab directory (configs, logs) for inspection.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator, Mapping

import pytest
import pytest_asyncio

from hafloatd.lab.cluster import (
    CapabilityReport,
    Cluster,
    ClusterSpec,
    check_capabilities,
)
from hafloatd.lab.cluster.network import free_network
from tests.cluster.helpers import diagnostics
from tests.contract import check_exchanges


def running_under_ci(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_cluster(report: CapabilityReport, ci: bool) -> None:
    """Skip (or, under CI, fail) with the capability check's own words."""
    if report.ok:
        return
    if ci:
        pytest.fail(f"CI=true and the cluster tests cannot run: {report.explain()}", pytrace=False)
    pytest.skip(report.explain())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    require_cluster(await check_capabilities(), running_under_ci())
    spec: ClusterSpec = getattr(request.module, "CLUSTER_SPEC", ClusterSpec())
    network = await free_network(f"hft{os.getpid() % 10000}")
    keep = os.environ.get("HAFLOATD_LAB_KEEP") == "1"
    built = Cluster(spec.replace(network=network), keep=keep)
    try:
        await built.start()
    except BaseException:
        await built.stop()
        raise
    try:
        yield built
    finally:
        exchanges = list(built.simulator.all_exchanges)
        left = await built.stop()
        if keep:
            print(f"\nlab directory kept: {built.workdir}")
    assert left == [], f"teardown left: {left}"
    violations = await asyncio.to_thread(check_exchanges, exchanges)
    assert violations == [], "\n".join(str(v) for v in violations)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[object]:
    report = yield
    if call.when == "call":
        item.stash[FAILED] = bool(getattr(report, "failed", False))
    return report


FAILED = pytest.StashKey[bool]()


@pytest_asyncio.fixture(loop_scope="module")
async def healthy(cluster: Cluster, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    await cluster.reset()
    yield cluster
    if request.node.stash.get(FAILED, False):
        print(await diagnostics(cluster))
