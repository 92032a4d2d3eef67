"""SdNotifier against real AF_UNIX datagram sockets (a path in a temp dir, and abstract)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from blockbuster import blockbuster_ctx

from hafloatd.sdnotify import MAX_STATUS_CHARS, SdNotifier

RECV_TIMEOUT_S = 2.0


class Receiver:
    """The service manager's end: a bound datagram socket and what arrived on it."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def environ(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.notify_socket, **extra}

    def recv(self) -> str:
        """The next datagram (blocking, bounded by a timeout): for sync tests only."""
        self.sock.settimeout(RECV_TIMEOUT_S)
        return self.sock.recv(65536).decode()

    async def arecv(self) -> str:
        """The next datagram without blocking the loop."""
        self.sock.setblocking(False)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(RECV_TIMEOUT_S):
            data = await loop.sock_recv(self.sock, 65536)
        return data.decode()

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return messages


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # A short directory under /tmp: AF_UNIX paths are limited to 108 bytes.
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield Receiver(sock, path)
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"hafloatd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture
def notifier(receiver: Receiver) -> Iterator[SdNotifier]:
    with SdNotifier(receiver.environ()) as sd:
        yield sd


# -- without a service manager ---------------------------------------------------------


def test_without_notify_socket_every_call_is_a_noop() -> None:
    sd = SdNotifier({})
    assert sd.enabled is False
    sd.ready("up")
    sd.status("x")
    sd.reloading()
    sd.stopping()
    sd.watchdog_ping()
    assert sd.watchdog_interval() is None
    sd.close()


async def test_run_watchdog_returns_at_once_without_notify_socket() -> None:
    sd = SdNotifier({"WATCHDOG_USEC": "1000000"})
    async with asyncio.timeout(1):
        await sd.run_watchdog()


def test_default_environ_is_the_process_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.notify_socket)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with SdNotifier() as sd:
        assert sd.enabled
        assert sd.watchdog_interval() == 2.0
        sd.status("from os.environ")
        assert receiver.recv() == "STATUS=from os.environ\n"


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234", "@"])
def test_unsupported_notify_socket_disables_with_a_warning(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hafloatd.sdnotify")
    sd = SdNotifier({"NOTIFY_SOCKET": value})
    assert sd.enabled is False
    sd.ready()
    assert "event=sd_notify_disabled" in caplog.text


# -- exact messages ----------------------------------------------------------------------


def test_ready_sends_ready_then_status(receiver: Receiver, notifier: SdNotifier) -> None:
    assert notifier.enabled
    notifier.ready()
    assert receiver.recv() == "READY=1\n"
    notifier.ready("serving 2 ips")
    assert receiver.recv() == "READY=1\nSTATUS=serving 2 ips\n"


def test_status_is_one_line_and_bounded(receiver: Receiver, notifier: SdNotifier) -> None:
    notifier.status("role started\nholder=self\t ok")
    assert receiver.recv() == "STATUS=role started holder=self ok\n"
    notifier.status("x" * (MAX_STATUS_CHARS * 3))
    message = receiver.recv()
    assert message.startswith("STATUS=xxx")
    assert message.endswith("...\n")
    assert len(message) == len("STATUS=\n") + MAX_STATUS_CHARS


def test_reloading_carries_the_monotonic_clock(receiver: Receiver, notifier: SdNotifier) -> None:
    before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = receiver.recv().splitlines()
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before_usec <= int(value) <= after_usec
    assert len(lines) == 2


def test_stopping_and_watchdog_ping_messages(receiver: Receiver, notifier: SdNotifier) -> None:
    notifier.stopping()
    assert receiver.recv() == "STOPPING=1\n"
    notifier.watchdog_ping()
    assert receiver.recv() == "WATCHDOG=1\n"


def test_abstract_namespace_socket_receives_messages(abstract_receiver: Receiver) -> None:
    with SdNotifier(abstract_receiver.environ()) as sd:
        assert sd.enabled
        sd.ready("abstract")
        assert abstract_receiver.recv() == "READY=1\nSTATUS=abstract\n"


def test_socket_is_non_blocking_and_close_on_exec(notifier: SdNotifier) -> None:
    sock = notifier._sock
    assert sock is not None
    assert sock.getblocking() is False
    assert sock.get_inheritable() is False
    assert sock.family == socket.AF_UNIX
    assert sock.type == socket.SOCK_DGRAM


def test_close_is_idempotent_and_later_calls_are_noops(
    receiver: Receiver, notifier: SdNotifier
) -> None:
    notifier.close()
    notifier.close()
    assert notifier.enabled is False
    notifier.ready("after close")
    assert receiver.pending() == []


# -- failures never raise ----------------------------------------------------------------


def test_missing_manager_socket_logs_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="hafloatd.sdnotify")
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    try:
        sd = SdNotifier({"NOTIFY_SOCKET": os.path.join(directory, "gone")})
        assert sd.enabled
        sd.ready("nobody listens")
        sd.close()
    finally:
        shutil.rmtree(directory)
    assert "event=sd_notify_failed keys=READY,STATUS errno=ENOENT" in caplog.text


async def test_full_manager_queue_drops_with_a_log_line_instead_of_blocking(
    receiver: Receiver, notifier: SdNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hafloatd.sdnotify")
    # Nobody reads the receiver: its queue (net.unix.max_dgram_qlen, 10 by default, and the
    # socket buffers) fills long before 5000 datagrams. From the event loop, as the daemon
    # sends them: blockbuster fails any send that could block, and a blocking send to a full
    # queue would wait here until the receiver is closed.
    with blockbuster_ctx("hafloatd"):
        for _ in range(5000):
            notifier.watchdog_ping()
    assert "event=sd_notify_dropped reason=EAGAIN keys=WATCHDOG" in caplog.text
    queued = receiver.pending()
    assert queued
    assert set(queued) == {"WATCHDOG=1\n"}


# -- watchdog interval ---------------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec(receiver: Receiver) -> None:
    sd = SdNotifier(receiver.environ(WATCHDOG_USEC="10000000"))
    assert sd.watchdog_interval() == 5.0
    sd.close()


def test_watchdog_interval_with_matching_watchdog_pid(receiver: Receiver) -> None:
    environ = receiver.environ(WATCHDOG_USEC="3000000", WATCHDOG_PID=str(os.getpid()))
    with SdNotifier(environ) as sd:
        assert sd.watchdog_interval() == 1.5


def test_watchdog_pid_of_another_process_disables_the_watchdog(receiver: Receiver) -> None:
    environ = receiver.environ(WATCHDOG_USEC="3000000", WATCHDOG_PID=str(os.getpid() + 1))
    with SdNotifier(environ) as sd:
        assert sd.enabled  # notifications still flow; only the watchdog is not ours
        assert sd.watchdog_interval() is None


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "ten"},
        {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "garbage"},
        {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "0"},
    ],
)
def test_watchdog_is_off_unless_watchdog_usec_is_valid_and_ours(
    receiver: Receiver, extra: dict[str, str]
) -> None:
    with SdNotifier(receiver.environ(**extra)) as sd:
        assert sd.watchdog_interval() is None


def test_watchdog_is_off_without_notify_socket() -> None:
    sd = SdNotifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert sd.watchdog_interval() is None


# -- run_watchdog ------------------------------------------------------------------------


async def test_run_watchdog_pings_every_interval_and_stops_when_cancelled(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = SdNotifier(receiver.environ(WATCHDOG_USEC="100000"))  # ping every 50 ms
    # What the watchdog task does, in order: its pings and the waits between them.
    steps: list[str] = []
    real_ping, real_sleep = sd.watchdog_ping, asyncio.sleep

    def ping() -> None:
        steps.append("ping")
        real_ping()

    async def sleep(delay: float, *args: Any) -> Any:
        if asyncio.current_task() is task:
            steps.append(f"sleep {delay:g}")
        return await real_sleep(delay, *args)

    monkeypatch.setattr(sd, "watchdog_ping", ping)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    # The watchdog runs on the loop: prove it makes no blocking call while it does.
    with blockbuster_ctx("hafloatd"):
        task = asyncio.create_task(sd.run_watchdog())
        for _ in range(3):
            assert await receiver.arecv() == "WATCHDOG=1\n"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The first ping at once, then one interval (half of WATCHDOG_USEC) before each next one.
    assert steps[:5] == ["ping", "sleep 0.05", "ping", "sleep 0.05", "ping"]
    assert task.cancelled()
    receiver.pending()  # drain anything sent before the cancellation landed
    sd.status("after the watchdog")
    assert await receiver.arecv() == "STATUS=after the watchdog\n"
    sd.close()


async def test_run_watchdog_withholds_pings_while_unhealthy(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hafloatd.sdnotify")
    sd = SdNotifier(receiver.environ(WATCHDOG_USEC="40000"))  # ping every 20 ms
    # Unhealthy, unhealthy, unhealthy, healthy, then unhealthy again: exactly one ping.
    answers = [False, False, False, True, False]
    fifth_check = asyncio.Event()

    def healthy() -> bool:
        answer = answers.pop(0) if answers else False
        if not answers:
            fifth_check.set()
        return answer

    task = asyncio.create_task(sd.run_watchdog(healthy))
    try:
        async with asyncio.timeout(RECV_TIMEOUT_S):
            await fifth_check.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sd.close()
    # The ping of the healthy check was queued before the fifth check ran.
    assert receiver.pending() == ["WATCHDOG=1\n"]
    assert caplog.text.count("event=watchdog_withheld reason=unhealthy") == 2
    assert "event=watchdog_resumed" in caplog.text


async def test_run_watchdog_treats_a_failing_health_check_as_unhealthy(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hafloatd.sdnotify")
    sd = SdNotifier(receiver.environ(WATCHDOG_USEC="40000"))
    checked = asyncio.Event()
    calls = 0

    def healthy() -> bool:
        nonlocal calls
        calls += 1
        if calls >= 3:
            checked.set()
        raise RuntimeError("controller state unreadable")

    task = asyncio.create_task(sd.run_watchdog(healthy))
    try:
        async with asyncio.timeout(RECV_TIMEOUT_S):
            await checked.wait()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert receiver.pending() == []
    assert "event=watchdog_health_check_failed error=RuntimeError" in caplog.text
    sd.close()


class JumpingClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock can be moved forward at once: to the loop, exactly as if it
    had been blocked that long, without spending the time (or measuring it)."""

    def __init__(self) -> None:
        super().__init__()
        self.jumped_s = 0.0

    def time(self) -> float:
        return super().time() + self.jumped_s


def test_run_watchdog_logs_a_late_tick_after_the_loop_was_blocked(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hafloatd.sdnotify")
    wedge_s = 0.1  # five intervals
    loop = JumpingClockLoop()

    async def main() -> None:
        sd = SdNotifier(receiver.environ(WATCHDOG_USEC="40000"))  # ping every 20 ms
        third_check = asyncio.Event()
        checks = 0

        def healthy() -> bool:
            nonlocal checks
            checks += 1
            if checks == 1:
                loop.jumped_s += wedge_s  # the wedge under test, as the loop sees it
            if checks == 3:
                third_check.set()
            return True

        task = asyncio.create_task(sd.run_watchdog(healthy))
        try:
            async with asyncio.timeout(RECV_TIMEOUT_S):
                await third_check.wait()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            sd.close()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    late = [r.getMessage() for r in caplog.records if "event=watchdog_late" in r.getMessage()]
    assert late, caplog.text
    # The tick after the wedge reports a lag covering all of it (a busy CI may add others).
    lags_s = [float(message.split("lag_s=")[1].split()[0]) for message in late]
    assert max(lags_s) >= wedge_s


async def test_run_watchdog_returns_at_once_when_watchdog_pid_is_not_ours(
    receiver: Receiver,
) -> None:
    environ = receiver.environ(WATCHDOG_USEC="100000", WATCHDOG_PID=str(os.getpid() + 1))
    with SdNotifier(environ) as sd:
        async with asyncio.timeout(1):
            await sd.run_watchdog()
    assert receiver.pending() == []


def test_repr_shows_state_only(receiver: Receiver) -> None:
    with SdNotifier(receiver.environ(WATCHDOG_USEC="2000000")) as sd:
        assert repr(sd) == "SdNotifier(enabled=True, watchdog_s=1.0)"
