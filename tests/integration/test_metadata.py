"""MetadataClient against the simulator's per-droplet metadata services."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from hafloatd.config import MetadataConfig, PathFamily
from hafloatd.deadline import Deadline
from hafloatd.errors import MetadataError
from hafloatd.lab.sim import Simulator
from hafloatd.metadata import DropletIdentity, MetadataClient, ReservedIpView
from hafloatd.metrics import Metrics
from tests.sim_fixtures import IP_NYC, IP_SFO

# A slow metadata service holds its answers this long: longer than any test waits (the simulator
# ends held requests when it stops). HANG_GUARD_S fails a test whose timeout is not enforced.
HELD_S = 600.0
HANG_GUARD_S = 30.0

NODE1 = DropletIdentity(droplet_id=1001, hostname="node1", region="nyc3", private_ipv4="10.10.0.1")


@asynccontextmanager
async def metadata_client(
    sim: Simulator,
    droplet_id: int,
    cache_file: Path,
    *,
    path_family: PathFamily = "reserved_ips",
    metrics: Metrics | None = None,
    **changes: Any,
) -> AsyncIterator[MetadataClient]:
    config = MetadataConfig(
        base_url=sim.metadata_url(droplet_id), cache_file=str(cache_file), **changes
    )
    async with MetadataClient(config, path_family=path_family, metrics=metrics) as client:
        yield client


@pytest.fixture
def cache_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "lib" / "metadata.json"


# --- identity --------------------------------------------------------------------------------


async def test_identity_comes_from_the_metadata_service(
    simulator: Simulator, cache_file: Path
) -> None:
    async with metadata_client(simulator, 1001, cache_file) as client:
        assert client.cached_identity() is None
        identity = await client.identity(Deadline.after(5))
        assert client.cached_identity() == identity
    assert identity == NODE1


async def test_identity_is_persisted_atomically_with_mode_0640(
    simulator: Simulator, cache_file: Path
) -> None:
    before = int(time.time())
    async with metadata_client(simulator, 1002, cache_file) as client:
        await client.identity(Deadline.after(5))
    after = int(time.time())
    assert cache_file.parent.is_dir()  # created
    assert stat.S_IMODE(cache_file.parent.stat().st_mode) == 0o750
    # no access for others, as the role files and docs/systemd.md (UMask=0027) say
    assert stat.S_IMODE(cache_file.stat().st_mode) == 0o640
    saved = json.loads(cache_file.read_text())
    assert saved["droplet_id"] == 1002
    assert saved["hostname"] == "node2"
    assert saved["region"] == "nyc3"
    assert saved["private_ipv4"] == "10.10.0.2"
    assert before <= saved["fetched_at"] <= after
    assert [p.name for p in cache_file.parent.iterdir()] == ["metadata.json"]  # no temp left


def _fail_renames_onto(target: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``os.replace(…, target)`` fail as a full disk would; returns the temp names tried."""
    real_replace = os.replace
    tried: list[str] = []

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(dst) == target:
            tried.append(os.fspath(src))
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return tried


def _fail_fsyncs(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("failing", ["fsync", "rename"])
async def test_a_cache_write_failing_midway_keeps_the_previous_file_and_leaves_no_temp(
    simulator: Simulator,
    cache_file: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    async with metadata_client(simulator, 1001, cache_file) as client:
        await client.identity(Deadline.after(5))
    previous = cache_file.read_bytes()
    assert json.loads(previous)["droplet_id"] == 1001
    if failing == "fsync":
        _fail_fsyncs(monkeypatch)
    else:
        _fail_renames_onto(cache_file, monkeypatch)
    caplog.set_level(logging.WARNING, logger="hafloatd.metadata")
    # The same file, another droplet's identity (a restored snapshot): the cache must change.
    async with metadata_client(simulator, 1002, cache_file) as client:
        assert (await client.identity(Deadline.after(5))).droplet_id == 1002  # still served
    assert "metadata_cache_write_failed" in caplog.text
    assert cache_file.read_bytes() == previous  # not truncated, not half-written
    assert [p.name for p in cache_file.parent.iterdir()] == ["metadata.json"]  # temp removed


async def test_two_writers_of_one_cache_use_distinct_temp_files(
    simulator: Simulator, cache_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both writers hold their temp file at once (each rename waits for the other writer to
    reach its own): with a shared temp name one would overwrite or rename the other's."""
    real_replace = os.replace
    both_written = threading.Barrier(2, timeout=10)
    temps: list[tuple[str, bytes]] = []

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if Path(dst) == cache_file:
            temps.append((os.fspath(src), Path(src).read_bytes()))
            both_written.wait()
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    async with (
        metadata_client(simulator, 1001, cache_file) as first,
        metadata_client(simulator, 1002, cache_file) as second,
    ):
        await asyncio.gather(first.identity(Deadline.after(5)), second.identity(Deadline.after(5)))
    assert len(temps) == 2
    assert temps[0][0] != temps[1][0]
    assert all(Path(name).parent == cache_file.parent for name, _ in temps)  # same filesystem
    # Each temp file held its own writer's whole identity, and the survivor is one of them.
    assert sorted(json.loads(body)["droplet_id"] for _, body in temps) == [1001, 1002]
    assert cache_file.read_bytes() in {body for _, body in temps}
    assert [p.name for p in cache_file.parent.iterdir()] == ["metadata.json"]


async def test_identity_falls_back_to_the_cache_when_the_service_is_down(
    simulator: Simulator, cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with metadata_client(simulator, 1001, cache_file) as client:
        await client.identity(Deadline.after(5))
    simulator.faults.metadata_down(1001)
    caplog.set_level(logging.INFO, logger="hafloatd.metadata")
    # A fresh client, as after a daemon restart: it only has the file.
    async with metadata_client(simulator, 1001, cache_file) as client:
        assert client.cached_identity() == NODE1  # start() loaded it
        identity = await client.identity(Deadline.after(5))
    assert identity == NODE1
    assert "metadata_identity_from_cache droplet_id=1001" in caplog.text


async def test_identity_falls_back_to_the_cache_when_the_service_refuses_connections(
    simulator: Simulator, cache_file: Path
) -> None:
    async with metadata_client(simulator, 1001, cache_file) as client:
        await client.identity(Deadline.after(5))
        await simulator.stop_metadata(1001)
        assert await client.identity(Deadline.after(5)) == NODE1


async def test_identity_without_service_or_cache_is_a_metadata_error(
    simulator: Simulator, cache_file: Path
) -> None:
    simulator.faults.metadata_down(1001)
    async with metadata_client(simulator, 1001, cache_file) as client:
        with pytest.raises(MetadataError) as info:
            await client.identity(Deadline.after(5))
    assert "no cached identity" in str(info.value)
    assert str(cache_file) in str(info.value)


async def test_identity_times_out_on_a_slow_service_and_uses_the_cache(
    simulator: Simulator, cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with metadata_client(simulator, 1001, cache_file) as client:
        await client.identity(Deadline.after(5))
    simulator.faults.metadata_slow(HELD_S, droplet_id=1001)
    caplog.set_level(logging.WARNING, logger="hafloatd.metadata")
    async with metadata_client(simulator, 1001, cache_file, timeout=0.2) as client:
        # The service holds every answer and the deadline is as far away: only metadata.timeout
        # can end the fetch.
        async with asyncio.timeout(HANG_GUARD_S):
            identity = await client.identity(Deadline.after(HELD_S))
    assert identity == NODE1
    assert "did not answer within 0.20s" in caplog.text


async def test_corrupt_cache_file_is_ignored_with_a_warning(
    simulator: Simulator, cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text("{not json")
    caplog.set_level(logging.WARNING, logger="hafloatd.metadata")
    async with metadata_client(simulator, 1001, cache_file) as client:
        assert client.cached_identity() is None
        assert await client.identity(Deadline.after(5)) == NODE1
    assert "metadata_cache_unusable" in caplog.text
    assert json.loads(cache_file.read_text())["droplet_id"] == 1001  # rewritten


async def test_identity_from_an_empty_answer_is_an_error_not_an_identity(
    simulator: Simulator, cache_file: Path
) -> None:
    simulator.faults.metadata_empty(droplet_id=1001)
    async with metadata_client(simulator, 1001, cache_file) as client:
        with pytest.raises(MetadataError, match="not a droplet id"):
            await client.identity(Deadline.after(5))
    assert not cache_file.exists()


# --- reserved IP view --------------------------------------------------------------------------


async def test_reserved_ip_view_of_an_unassigned_droplet_is_inactive(
    simulator: Simulator, cache_file: Path
) -> None:
    async with metadata_client(simulator, 1001, cache_file) as client:
        view = await client.reserved_ip(Deadline.after(5))
    assert view == ReservedIpView(active=False, ip_address=None)


async def test_reserved_ip_view_follows_the_holder(simulator: Simulator, cache_file: Path) -> None:
    async with metadata_client(simulator, 1003, cache_file) as client:
        assert await client.reserved_ip(Deadline.after(5)) == ReservedIpView(True, IP_SFO)
        simulator.force_holder(IP_SFO, None)
        assert await client.reserved_ip(Deadline.after(5)) == ReservedIpView(False, None)


@pytest.mark.parametrize("path_family", ["reserved_ips", "floating_ips"])
async def test_holds_is_true_only_for_the_ip_this_droplet_holds(
    simulator: Simulator, cache_file: Path, path_family: PathFamily
) -> None:
    async with metadata_client(simulator, 1003, cache_file, path_family=path_family) as client:
        assert await client.holds(IP_SFO, Deadline.after(5)) is True
        assert await client.holds(IP_NYC, Deadline.after(5)) is False  # another IP
    async with metadata_client(simulator, 1001, cache_file, path_family=path_family) as client:
        assert await client.holds(IP_NYC, Deadline.after(5)) is False  # inactive


async def test_floating_ips_family_reads_the_floating_ip_twins(
    simulator: Simulator, cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hafloatd.metadata")
    async with metadata_client(simulator, 1003, cache_file, path_family="floating_ips") as client:
        view = await client.reserved_ip(Deadline.after(5))
    assert view == ReservedIpView(True, IP_SFO)
    keys = {r.getMessage().split()[1] for r in caplog.records if "metadata_request" in r.msg}
    assert keys == {"key=floating_ip/ipv4/active", "key=floating_ip/ipv4/ip_address"}


async def test_holds_is_unknown_on_an_empty_answer(simulator: Simulator, cache_file: Path) -> None:
    simulator.faults.metadata_empty(droplet_id=1003)
    async with metadata_client(simulator, 1003, cache_file) as client:
        assert await client.reserved_ip(Deadline.after(5)) == ReservedIpView(None, None)
        assert await client.holds(IP_SFO, Deadline.after(5)) is None


async def test_holds_is_unknown_when_the_service_errors(
    simulator: Simulator, cache_file: Path
) -> None:
    simulator.faults.metadata_error(droplet_id=1003, status=500)
    async with metadata_client(simulator, 1003, cache_file) as client:
        assert await client.holds(IP_SFO, Deadline.after(5)) is None


async def test_holds_is_unknown_when_the_service_is_down(
    simulator: Simulator, cache_file: Path
) -> None:
    simulator.faults.metadata_down(1003)
    metrics = Metrics(CollectorRegistry())
    async with metadata_client(simulator, 1003, cache_file, metrics=metrics) as client:
        assert await client.holds(IP_SFO, Deadline.after(5)) is None
    assert (
        metrics.registry.get_sample_value("hafloatd_metadata_requests_total", {"result": "error"})
        == 2
    )


async def test_holds_times_out_quickly_as_unknown(
    simulator: Simulator, cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    simulator.faults.metadata_slow(HELD_S, droplet_id=1003)
    caplog.set_level(logging.DEBUG, logger="hafloatd.metadata")
    async with metadata_client(simulator, 1003, cache_file, timeout=0.2) as client:
        # Only metadata.timeout can end it: the service holds the answer, the deadline is far.
        async with asyncio.timeout(HANG_GUARD_S):
            assert await client.holds(IP_SFO, Deadline.after(HELD_S)) is None
    assert "did not answer within 0.20s" in caplog.text


async def test_holds_respects_a_deadline_shorter_than_the_timeout(
    simulator: Simulator, cache_file: Path
) -> None:
    simulator.faults.metadata_slow(HELD_S, droplet_id=1003)
    async with metadata_client(simulator, 1003, cache_file, timeout=60.0) as client:
        # Only the deadline can end it: the service holds the answer past metadata.timeout.
        deadline = Deadline.after(0.2)
        async with asyncio.timeout(HANG_GUARD_S):
            assert await client.holds(IP_SFO, deadline) is None
        assert deadline.expired()  # gave up at the deadline, not before


async def test_an_unusable_service_is_logged_once_per_change_and_exported(
    simulator: Simulator, cache_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hafloatd.metadata")
    metrics = Metrics(CollectorRegistry())

    def up() -> float | None:
        return metrics.registry.get_sample_value("hafloatd_metadata_up")

    async with metadata_client(simulator, 1003, cache_file, metrics=metrics) as client:
        assert up() == -1
        assert await client.holds(IP_SFO, Deadline.after(5)) is True
        assert up() == 1
        fault = simulator.faults.metadata_garbage(droplet_id=1003)
        for _ in range(3):
            assert await client.holds(IP_SFO, Deadline.after(5)) is None
        assert up() == 0
        simulator.faults.remove(fault)
        simulator.faults.metadata_down(1003)
        assert await client.holds(IP_SFO, Deadline.after(5)) is None  # still unusable: no line
        simulator.faults.clear()
        assert await client.holds(IP_SFO, Deadline.after(5)) is True
        assert up() == 1
    events = [
        (r.levelno, r.getMessage()) for r in caplog.records if "event=metadata_u" in r.getMessage()
    ]
    assert len(events) == 2, events
    assert events[0][0] == logging.WARNING and "It works" in events[0][1]
    assert events[0][1].startswith("event=metadata_unusable reason=")
    assert events[1] == (logging.INFO, "event=metadata_usable")


async def test_metadata_requests_are_counted(simulator: Simulator, cache_file: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    async with metadata_client(simulator, 1003, cache_file, metrics=metrics) as client:
        await client.holds(IP_SFO, Deadline.after(5))
    assert (
        metrics.registry.get_sample_value("hafloatd_metadata_requests_total", {"result": "ok"}) == 2
    )


async def test_closed_client_refuses_new_requests(simulator: Simulator, cache_file: Path) -> None:
    async with metadata_client(simulator, 1001, cache_file) as client:
        pass
    with pytest.raises(MetadataError, match="closed"):
        await client.identity(Deadline.after(1))
