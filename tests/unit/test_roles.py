"""The role store (``hafloatd.roles``): best-effort, never fatal, newest record last.

Writes run in a worker thread (``asyncio.to_thread``); to force overlaps the tests replace
``hafloatd.roles.write_atomically`` with ``HeldWriter``, which holds chosen writes until the
test releases them. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry

from hafloatd import fsutil, roles
from hafloatd.metrics import Metrics
from hafloatd.roles import Role, RoleRecord, RoleStore

IP = "203.0.113.10"
WAIT_S = 5.0  # bound on every wait: a hang fails the test, it does not block CI
T = TypeVar("T")
STARTED = RoleRecord(Role.STARTED, 1700000000.5, "FloatIP", "node1")


async def within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(WAIT_S):
        return await awaitable


def record(n: int, role: Role = Role.STARTED) -> RoleRecord:
    """Records told apart by their changed_at."""
    return RoleRecord(role, float(n), "FloatIP", f"node{n}")


class HeldWriter:
    """Stands in for ``fsutil.write_atomically`` (it runs in a worker thread): notes each
    record, holds the first ``hold`` writes until ``release`` is set, then writes for real;
    counts how many writes run at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hold: int = 1) -> None:
        self.loop = loop
        self.hold = hold
        self.release = threading.Event()
        self.holding = asyncio.Event()  # a held write has started
        self.written: list[float] = []  # changed_at of each record, in call order
        self.calls: list[tuple[Path, bytes, int, int | None]] = []
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def __call__(
        self,
        path: str | os.PathLike[str],
        content: bytes,
        *,
        mode: int = 0o644,
        dir_mode: int | None = None,
    ) -> None:
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.written.append(json.loads(content)["changed_at"])
            self.calls.append((Path(path), content, mode, dir_mode))
            held = len(self.written) <= self.hold
        try:
            if held:
                self.loop.call_soon_threadsafe(self.holding.set)
                if not self.release.wait(WAIT_S):
                    raise RuntimeError("HeldWriter was never released")
            fsutil.write_atomically(path, content, mode=mode, dir_mode=dir_mode)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def store(state_dir: Path, registry: CollectorRegistry) -> RoleStore:
    return RoleStore(str(state_dir), Metrics(registry))


@pytest.fixture
async def held(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HeldWriter]:
    writer = HeldWriter(asyncio.get_running_loop())
    monkeypatch.setattr(roles, "write_atomically", writer)
    yield writer
    writer.release.set()  # never leave a worker thread waiting


def failures(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("hafloatd_role_persist_failures_total", {"ip": IP})


# --- load ----------------------------------------------------------------------------------


def test_a_missing_role_file_means_stopped_quietly(
    store: RoleStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hafloatd.roles"):
        assert store.load(IP) == RoleRecord(Role.STOPPED, 0.0)
    assert caplog.records == []


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe garbage",
        b'"started"',
        b"[1, 2]",
        b"null",
        b'{"ip": "203.0.113.10"}',
        b'{"role": "running"}',
        b'{"role": null}',
    ],
    ids=[
        "empty",
        "not-json",
        "not-utf8",
        "string",
        "list",
        "null",
        "no-role",
        "bad-role",
        "null-role",
    ],
)
def test_a_garbled_role_file_means_stopped_with_a_warning(
    store: RoleStore, state_dir: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir.mkdir()
    store.path(IP).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="hafloatd.roles"):
        assert store.load(IP) == RoleRecord(Role.STOPPED, 0.0)
    assert "event=role_file_unreadable" in caplog.text


def test_an_unreadable_role_path_means_stopped(store: RoleStore, state_dir: Path) -> None:
    store.path(IP).mkdir(parents=True)  # a directory where the file should be
    assert store.load(IP) == RoleRecord(Role.STOPPED, 0.0)


def test_a_valid_role_file_is_loaded(store: RoleStore, state_dir: Path) -> None:
    state_dir.mkdir()
    store.path(IP).write_text(
        json.dumps(
            {"ip": IP, "role": "started", "changed_at": 12, "resource": "FloatIP", "node": "n1"}
        )
    )
    assert store.load(IP) == RoleRecord(Role.STARTED, 12.0, "FloatIP", "n1")


def test_a_role_file_from_before_resource_and_node_were_kept_loads(
    store: RoleStore, state_dir: Path
) -> None:
    state_dir.mkdir()
    store.path(IP).write_text('{"role": "started"}')
    assert store.load(IP) == RoleRecord(Role.STARTED, 0.0, None, None)


def test_mistyped_fields_of_a_role_file_are_dropped(store: RoleStore, state_dir: Path) -> None:
    state_dir.mkdir()
    store.path(IP).write_text(
        '{"role": "started", "changed_at": "yesterday", "resource": ["FloatIP"], "node": 7}'
    )
    assert store.load(IP) == RoleRecord(Role.STARTED, 0.0, None, None)


def test_role_file_is_named_after_the_ip(store: RoleStore, state_dir: Path) -> None:
    assert store.path(IP) == state_dir / f"role-{IP}.json"


# --- save: round trip, mode, the one atomic-write helper -----------------------------------


@pytest.mark.parametrize(
    "saved",
    [
        STARTED,
        RoleRecord(Role.STOPPED, 1700000001.25, None, None),
        RoleRecord(Role.STOPPED, 3.0, "FloatIP", None),
    ],
)
async def test_a_saved_record_loads_back_equal(store: RoleStore, saved: RoleRecord) -> None:
    assert await store.save(IP, saved, WAIT_S)
    assert store.load(IP) == saved
    assert RoleStore(str(store.state_dir)).load(IP) == saved  # as after a daemon restart
    assert json.loads(store.path(IP).read_bytes())["ip"] == IP


async def test_role_file_has_mode_0640_in_a_state_dir_made_0750(
    store: RoleStore, state_dir: Path
) -> None:
    assert not state_dir.exists()
    assert await store.save(IP, STARTED, WAIT_S)
    assert stat.S_IMODE(store.path(IP).stat().st_mode) == 0o640
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o750


async def test_role_file_is_written_through_the_atomic_write_helper(
    store: RoleStore, held: HeldWriter
) -> None:
    held.hold = 0
    assert await store.save(IP, STARTED, WAIT_S)
    assert held.calls == [(store.path(IP), STARTED.to_json(IP), 0o640, 0o750)]
    assert store.path(IP).read_bytes() == STARTED.to_json(IP)


# --- save never fails an operation ---------------------------------------------------------


async def test_a_failed_write_returns_false_and_says_why(
    store: RoleStore, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    store.path(IP).mkdir(parents=True)  # the rename onto a directory fails (even as root)
    with caplog.at_level(logging.ERROR, logger="hafloatd.roles"):
        assert await store.save(IP, STARTED, WAIT_S) is False
    error = store.persist_error(IP)
    assert error is not None
    assert error.startswith(f"cannot write {store.path(IP)}: ")
    assert "\n" not in error
    assert failures(registry) == 1
    assert "event=role_persist_failed" in caplog.text
    assert "role=started" in caplog.text
    # the failed write left no temporary file behind
    assert sorted(path.name for path in store.state_dir.iterdir()) == [store.path(IP).name]


async def test_each_failed_write_is_counted(store: RoleStore, registry: CollectorRegistry) -> None:
    store.path(IP).mkdir(parents=True)
    assert not await store.save(IP, record(1), WAIT_S)
    assert not await store.save(IP, record(2), WAIT_S)
    assert failures(registry) == 2


async def test_the_next_successful_write_clears_the_error(
    store: RoleStore, registry: CollectorRegistry
) -> None:
    store.path(IP).mkdir(parents=True)
    assert not await store.save(IP, record(1), WAIT_S)
    assert store.persist_error(IP) is not None
    store.path(IP).rmdir()
    assert await store.save(IP, record(2), WAIT_S)
    assert store.persist_error(IP) is None
    assert store.load(IP) == record(2)
    assert failures(registry) == 1


async def test_a_store_without_metrics_still_reports_the_error(state_dir: Path) -> None:
    store = RoleStore(str(state_dir))
    store.path(IP).mkdir(parents=True)
    assert not await store.save(IP, STARTED, WAIT_S)
    assert store.persist_error(IP) is not None


# --- one writer per IP, newest record last -------------------------------------------------


async def test_the_newest_of_several_quickly_scheduled_records_wins(
    store: RoleStore, held: HeldWriter
) -> None:
    first = asyncio.create_task(store.save(IP, record(1), WAIT_S))
    await within(held.holding.wait())  # record 1 is being written
    store.schedule(IP, record(2))
    store.schedule(IP, record(3))
    last = asyncio.create_task(store.save(IP, record(4), WAIT_S))
    held.release.set()
    assert await within(first) is True
    assert await within(last) is True
    assert held.written == [1.0, 4.0]  # 2 and 3 were overtaken before their turn
    assert held.most_active == 1  # never two writes at once
    assert store.load(IP) == record(4)


async def test_save_is_false_while_the_write_is_still_under_way(
    store: RoleStore, held: HeldWriter
) -> None:
    assert await store.save(IP, STARTED, 0.0) is False
    await within(held.holding.wait())
    held.release.set()
    assert await within(store.wait_written(IP, WAIT_S)) is True
    assert store.load(IP) == STARTED


async def test_cancelling_a_caller_of_save_does_not_cancel_the_write(
    store: RoleStore, held: HeldWriter
) -> None:
    caller = asyncio.create_task(store.save(IP, record(1), WAIT_S))
    await within(held.holding.wait())
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(caller)
    # the next record still queues behind the first write (its writer is alive)
    store.schedule(IP, record(2))
    held.release.set()
    assert await within(store.wait_written(IP, WAIT_S)) is True
    assert held.written == [1.0, 2.0]
    assert held.most_active == 1
    assert store.load(IP) == record(2)


async def test_close_lets_a_pending_write_finish(store: RoleStore, held: HeldWriter) -> None:
    store.schedule(IP, STARTED)
    await within(held.holding.wait())
    closing = asyncio.create_task(store.close())
    held.release.set()
    await within(closing)
    assert store.load(IP) == STARTED


async def test_writes_of_different_ips_do_not_wait_for_each_other(
    store: RoleStore, held: HeldWriter
) -> None:
    other = "203.0.113.20"
    store.schedule(IP, record(1))
    await within(held.holding.wait())  # IP's write is held
    assert await store.save(other, record(2), WAIT_S)
    assert store.load(other) == record(2)
    held.release.set()
    assert await within(store.wait_written(IP, WAIT_S))
