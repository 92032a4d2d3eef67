"""The clients of tests/integration/test_control_fuzz.py: each kind of hostile connection, and
what it checks of the replies (with ``control_fuzz_corpus``'s oracle).

They use raw non-blocking sockets, not asyncio streams: when the server hangs up while a
client still writes (an oversize line, a trickle, a busy refusal), a stream's failed write
would make the replies already received unreadable; a socket keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pwd
import random
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field

from tests.integration import control_fuzz_corpus as corpus

READ_TIMEOUT_S = 0.2  # the daemon's control.read_timeout in the test
REPLY_WAIT_S = 10.0  # how long a client waits for anything
CONCURRENCY = 16  # clients at once in the main phase: never near the daemon's 64
FLOOD = 300
PIPELINED = 2000
NO_READ_LINES = 3000
NOBODY_CONNECTIONS = 200
STATUS = b'{"op":"status"}\n'

# Stdlib only, run as nobody: N connections, one status request each; prints every reply
# (everything read until the server closed).
NOBODY_CLIENT = r"""
import json, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
results = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(b'{"op": "status"}\n')
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    results.append(data.decode("utf-8", "replace"))
print(json.dumps(results))
"""


@dataclass
class Tally:
    """What was sent, what came back, and every reply that was not what it should be."""

    inputs: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text[:600])

    @property
    def total(self) -> int:
        return sum(self.inputs.values())


class Conn:
    """One client connection on a non-blocking Unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.closed: str | None = None  # "eof" or "reset" once the server has hung up

    @classmethod
    async def open(cls, path: str) -> Conn:
        """Connect; while the listen backlog is full, try again (a non-blocking AF_UNIX
        connect fails with EAGAIN then, which asyncio's sock_connect takes for progress)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(REPLY_WAIT_S):
                while True:
                    try:
                        sock.connect(path)
                        return cls(sock)
                    except BlockingIOError:
                        await asyncio.sleep(0.005)
        except BaseException:
            sock.close()
            raise

    async def send(self, data: bytes, rng: random.Random | None = None) -> bool:
        """Write ``data`` (in up to three pieces with ``rng``); False if the server hung up."""
        cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randint(0, 2))) if rng else []
        loop = asyncio.get_running_loop()
        try:
            for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                if end > start:
                    await loop.sock_sendall(self.sock, data[start:end])
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def shut_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    async def readline(self) -> bytes:
        """The next line; what is left (maybe b"") once the server has hung up."""
        async with asyncio.timeout(REPLY_WAIT_S):
            while (end := self.buffer.find(b"\n")) < 0:
                if not await self._fill():
                    return self._take(len(self.buffer))
        return self._take(end + 1)

    async def read_to_close(self) -> bytes:
        """Everything until the server hangs up."""
        async with asyncio.timeout(REPLY_WAIT_S):
            while await self._fill():
                pass
        return self._take(len(self.buffer))

    def close(self) -> None:
        self.sock.close()

    async def _fill(self) -> bool:
        if self.closed is not None:
            return False
        try:
            chunk = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        except ConnectionResetError:
            self.closed = "reset"
            return False
        if not chunk:
            self.closed = "eof"
            return False
        self.buffer += chunk
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


async def run_case(path: str, case: corpus.Case, rng: random.Random, tally: Tally) -> None:
    """One generated connection: every line gets the reply it deserves, in order."""
    conn = await Conn.open(path)
    try:
        await conn.send(case.payload(), rng)
        if case.ending != "read":
            conn.shut_write()
        for index, expect in enumerate(case.expected()):
            raw = await conn.readline()
            if not raw:
                tally.problem(f"hung up before reply {index} of {case.lines!r:.300}")
                return
            reply, _ = corpus.well_formed(raw)
            if reply is not None and corpus.is_busy_reply(reply):
                tally.problem(f"busy in the main phase: {raw!r}")
                return
            problem = corpus.check_reply(expect, raw)
            if problem is not None:
                line = [ln for ln in case.lines if ln.expect.kind != "blank"][index]
                tally.problem(f"{problem} <- line {index}: {line.data[:300]!r}")
            tally.replies[expect.kind] += 1
        if case.ending != "read" and (rest := await conn.read_to_close()):
            tally.problem(f"a reply nobody asked for: {rest[:200]!r}")
    finally:
        conn.close()


async def run_all(path: str, cases: list[corpus.Case], seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    queue = list(cases)

    async def worker() -> None:
        while queue:
            await run_case(path, queue.pop(), rng, tally)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    tally.inputs["generated lines"] += sum(len(case.lines) for case in cases)


async def raw_case(path: str, data: bytes, tally: Tally) -> None:
    """Random bytes, then a half-close: every non-blank line is an invalid request."""
    conn = await Conn.open(path)
    try:
        await conn.send(data)
        conn.shut_write()
        rest = await conn.read_to_close()
    finally:
        conn.close()
    replies = rest.splitlines(keepends=True)
    wanted = corpus.raw_lines(data, at_eof=True)
    if len(replies) != wanted:
        tally.problem(f"{len(replies)} replies for {wanted} lines of {data[:200]!r}")
    for raw in replies:
        if (problem := corpus.check_reply(corpus.Expect("invalid"), raw)) is not None:
            tally.problem(f"{problem} <- {data[:200]!r}")
    tally.inputs["raw byte strings"] += 1


async def oversize_case(path: str, size: int, newline: bool, lead: bool, tally: Tally) -> None:
    """A line over max_line_bytes (after a valid request, or not): its error, then closed."""
    conn = await Conn.open(path)
    payload = (STATUS if lead else b"") + b"x" * size + (b"\n" if newline else b"")
    sending = asyncio.create_task(conn.send(payload, random.Random(size)))
    try:
        replies = [await conn.readline() for _ in range(2 if lead else 1)]
        rest = await conn.read_to_close()
    finally:
        await sending
        conn.close()
    checks = [corpus.Expect("answer", "status")] if lead else []
    for expect, raw in zip([*checks, corpus.Expect("invalid")], replies, strict=True):
        if (problem := corpus.check_reply(expect, raw)) is not None:
            tally.problem(f"oversize {size}: {problem}")
    if b"line exceeds 65536 bytes" not in replies[-1] or rest:
        tally.problem(f"oversize {size}: {replies[-1][:200]!r} then {rest[:100]!r}")
    tally.inputs["oversize lines"] += 1


async def silent_case(path: str, kind: str, tally: Tally) -> None:
    """A client that stalls mid-line, says nothing, trickles a byte at a time, or leaves
    before its replies: hung up on without a reply (the read timeout)."""
    conn = await Conn.open(path)
    began = time.monotonic()
    try:
        if kind == "stall":
            await conn.send(b'{"op": "monitor", "ip": "203.0.113.10"')
        elif kind == "trickle":
            for byte in STATUS:
                if not await conn.send(bytes([byte])):
                    break
                await asyncio.sleep(READ_TIMEOUT_S / 3)
        elif kind == "leave":  # requests, then gone before the replies
            await conn.send(STATUS * 5)
            tally.inputs["silent clients"] += 1
            return
        rest = await conn.read_to_close()
    finally:
        conn.close()
    took = time.monotonic() - began
    # A trickled line takes longer than the read timeout: cut off (or, on a slow machine,
    # answered if it made it in time).
    if rest and (kind != "trickle" or corpus.check_reply(corpus.Expect("answer", "status"), rest)):
        tally.problem(f"{kind}: {rest[:200]!r}")
    if took > READ_TIMEOUT_S + 5:
        tally.problem(f"{kind}: hung up on after {took:.1f} s")
    tally.inputs["silent clients"] += 1


async def no_read_case(path: str, tally: Tally, held: Awaitable[object]) -> None:
    """Thousands of status requests pipelined, no reply read until ``held`` is done: the
    server gives up writing (its drain is bounded by the read timeout) and hangs up."""
    conn = await Conn.open(path)
    try:
        await conn.send(STATUS * NO_READ_LINES)
        await held  # not reading, on purpose
        rest = await conn.read_to_close()
    finally:
        conn.close()
    replies = rest.splitlines(keepends=True)
    if replies and not replies[-1].endswith(b"\n"):
        replies.pop()  # cut mid-line where the server gave up: fine
    for raw in replies:
        if (problem := corpus.check_reply(corpus.Expect("answer", "status"), raw)) is not None:
            tally.problem(f"no-read: {problem}")
            break
    tally.inputs["clients not reading"] += 1


async def pipelined_case(path: str, pool: list[corpus.Line], tally: Tally) -> None:
    """PIPELINED lines from the pool on one connection, written while replies are read."""
    lines = random.Random(7).choices(pool, k=PIPELINED)
    conn = await Conn.open(path)
    payload = b"".join(ln.data + b"\n" for ln in lines)
    sending = asyncio.create_task(conn.send(payload, random.Random(8)))
    try:
        for line in lines:
            if line.expect.kind == "blank":
                continue
            raw = await conn.readline()
            if (problem := corpus.check_reply(line.expect, raw)) is not None:
                tally.problem(f"pipelined: {problem} <- {line.data[:200]!r}")
                break
    finally:
        await sending
        conn.close()
    tally.inputs["pipelined lines"] += PIPELINED


async def flood(path: str, tally: Tally) -> Counter[str]:
    """FLOOD connections at once, each sending a status request and then held open until all
    have their reply: answered, or told the server is busy (over control.max_connections).
    (An answered connection keeps its slot until the read timeout: requests are sent at
    once, since a connection made to wait longer than that is hung up on without a reply.)"""
    outcomes: Counter[str] = Counter()
    gate = asyncio.Event()
    replied = 0

    async def one() -> None:
        nonlocal replied
        conn = await Conn.open(path)
        try:
            await conn.send(STATUS)  # a busy server may have hung up already: its reply stays
            raw = await conn.readline()
            replied += 1
            await gate.wait()
        finally:
            conn.close()
        reply, problem = corpus.well_formed(raw)
        if reply is None:
            tally.problem(f"flood: {problem}")
        elif corpus.is_busy_reply(reply):
            outcomes["busy"] += 1
        elif corpus.check_reply(corpus.Expect("answer", "status"), raw) is None:
            outcomes["answered"] += 1
        else:
            tally.problem(f"flood: {raw[:200]!r}")

    tasks = [asyncio.create_task(one()) for _ in range(FLOOD)]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REPLY_WAIT_S):
            while replied < FLOOD and not any(t.done() for t in tasks):
                await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks)
    tally.inputs["flood connections"] += FLOOD
    return outcomes


async def as_nobody(path: str, tally: Tally) -> None:
    """A process running as nobody: every connection refused with OCF 4, then closed."""
    account = pwd.getpwnam("nobody")
    done = await asyncio.to_thread(
        subprocess.run,
        ["/usr/bin/python3", "-c", NOBODY_CLIENT, path, str(NOBODY_CONNECTIONS)],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wanted = json.dumps(
        {"ok": False, "ocf": 4, "reason": f"peer uid={account.pw_uid} not allowed"},
        separators=(",", ":"),
    )
    results = json.loads(done.stdout)
    for result in results:
        if result != wanted + "\n":
            tally.problem(f"nobody: {result[:200]!r}")
    tally.inputs["connections as nobody"] += len(results)
