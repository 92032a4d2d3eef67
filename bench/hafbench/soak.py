"""bench/soak: two real daemons under load for minutes; nothing may grow, lie or get stuck.

    bench/soak                     10 minutes of load (1 minute of it warm-up)
    bench/soak --duration 60       the 1-minute smoke CI runs (also: --quick)
    bench/soak --output FILE       also write the summary as Markdown

Two ``hafloatd run`` processes (droplets 1001 and 1002, ``hafloatd.lab.nodes``) against the
simulator (in this process), each with a stand-in web server for its health probe. While the
load runs:

- monitors at ``--rate`` per second to each daemon, each on its own connection as the agent
  makes them; every ``--agent-every``-th one through the real agent (``ocf/hafloat monitor``);
- a failover every ``--failover-every`` seconds, as Pacemaker makes one: the agent's ``stop``
  on the node holding the resource, then its ``start`` on the other (never both started). A
  start that fails while an injected API fault is on is recovered as Pacemaker would (stop,
  start again) and counted apart; one that fails with no API fault on is a failure;
- API faults switched on and off through the simulator's fault API: 5xx, 429 storms, latency
  (and a POST held past the client's timeout), metadata down or answering 500, and an API
  outage longer than a start's timeout, so every run makes starts fail and be retried;
- now and then, instead of a fault, a person moves the IP away from the started node in the
  control panel (an out-of-band move), and no failover comes for 5-8 s: its monitor must stop
  answering 0 within the freshness bound;
- each web server switched between 200 and 503 (health flapping).

Judged against the simulator as it happens (``soakcheck``): a start's 0 (the IP here and
unlocked at some instant between request and reply), its accepted assign POSTs (at most one),
every monitor 0 (the IP here within the freshness bound of docs/operations.md §7: the
metadata's while the metadata service works, the full ``freshness_bound_s`` during and after
a metadata fault), every monitor of a node whose stop answered 0 (7, nothing else).

RSS, open fds and asyncio tasks (``status``'s ``tasks``) of each daemon are sampled over the
run. The verdict (exit 1 and why, else 0): RSS growth <= 5 MB, fds (but the HTTP clients'
bounded pools) and tasks not grown (small tolerance) between a settled sample after the
warm-up and one after the load; every failover completed; no start or monitor answer
contradicting the simulator; no Traceback in the daemons' logs, nor the one-line form their
own loggers give one (``exc=``, ``event=control_handler_error``, ``level=critical``); neither
daemon died. Every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pwd
import random
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import urlsplit

import report
import soakcheck
from soakcheck import IP, NodeRecord, Sample, Soak
from soakload import MONITOR_TIMEOUT_S, Load

from hafloatd.config import parse_config
from hafloatd.control.client import request
from hafloatd.controller import freshness
from hafloatd.lab.nodes import TOKEN, DaemonNode, StandInWeb, make_node
from hafloatd.lab.sim import SimDroplet, SimReservedIp, SimScenario, Simulator

ACTION_DELAY_S = 0.2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/soak",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--quick", "--smoke", action="store_true", help="--duration 60 (CI)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds before the start sample (20 %%, 10-60)"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="monitors/s per daemon (20)")
    parser.add_argument(
        "--agent-every", type=int, default=20, help="every Nth monitor via ocf/hafloat (20; 0 none)"
    )
    parser.add_argument("--failover-every", type=float, default=3.0, help="seconds (3)")
    parser.add_argument(
        "--start-timeout", type=float, default=10.0, help="the start op's timeout, seconds (10)"
    )
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed")
    parser.add_argument("--output", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep configs and logs here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 60.0
    if args.duration < 30:
        parser.error("--duration: at least 30 seconds")
    if args.warmup is None:
        args.warmup = min(60.0, max(10.0, args.duration * 0.2))
    if not 0 < args.warmup < args.duration:
        parser.error("--warmup: more than 0 and less than --duration")
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    return args


def progress(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


class Runner(Load):
    """The simulator, two webs and two daemons; the load (``Load``); the settled samples."""

    def __init__(self, args: argparse.Namespace, sim: Simulator, base: Path) -> None:
        self.args = args
        self.sim = sim
        self.rng = random.Random(args.seed)
        self.began = time.monotonic()
        self.soak = Soak(
            seed=args.seed,
            duration_s=args.duration,
            warmup_s=args.warmup,
            rate=args.rate,
            agent_every=args.agent_every,
            failover_every_s=args.failover_every,
            start_timeout_s=args.start_timeout,
        )
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.webs = [StandInWeb("node1"), StandInWeb("node2")]
        self.daemons: list[DaemonNode] = []
        self.records: list[NodeRecord] = []
        self.base = base
        self.user = user
        self.holder = 0  # index of the node the resource is started on
        self.drains: list[asyncio.Task[None]] = []
        self.ip_owner = asyncio.Lock()
        self.scheduled: list[tuple[float, str]] = []
        self.pool_ports = {
            int(urlsplit(url).port or 0)
            for url in (sim.api_url, sim.metadata_url(1001), sim.metadata_url(1002))
        }

    # --- setup ---------------------------------------------------------------------------

    async def setup(self) -> None:
        for web in self.webs:
            await web.start()
        for number, web in enumerate(self.webs):
            droplet = 1001 + number
            node = make_node(
                self.sim, f"node{number + 1}", droplet, self.base, health_url=web.url,
                extra={"control": {"allowed_users": sorted({"root", self.user})}},
            )  # fmt: skip
            self.daemons.append(node)
            await node.start()
            assert node.pid is not None
            self.records.append(NodeRecord(node.name, droplet, pid=node.pid))
        self.soak.nodes = self.records
        first = await self.daemons[0].agent("start", timeout_ms=20000)
        if first.rc != 0:
            raise RuntimeError(f"the first start on node1 failed: {first.stderr.strip()}")
        for node, record in zip(self.daemons, self.records, strict=True):
            status = await request(node.socket_path, {"op": "status"}, MONITOR_TIMEOUT_S)
            record.bound_s = float(status["ips"][0]["freshness_bound_s"])
            parsed = parse_config(node.config)
            fresh = freshness(parsed.api, parsed.metadata)
            record.metadata_bound_s = fresh.metadata_s + fresh.metadata_lag_s
            self.drains.append(asyncio.create_task(drain_notify(node)))
        self.records[1].stopped_by_stop = True  # never started: as good as stopped

    async def teardown(self) -> None:
        self.sim.faults.clear()
        for node, record in zip(self.daemons, self.records, strict=True):
            if node.proc is not None and node.proc.returncode is not None:
                record.exited = node.proc.returncode
            elif node.proc is not None:
                await node.signal(signal.SIGTERM)  # the drain still reads STOPPING=1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(node.proc.wait(), 10)
        for drain in self.drains:
            drain.cancel()
        await asyncio.gather(*self.drains, return_exceptions=True)
        for node, record in zip(self.daemons, self.records, strict=True):
            await node.stop()
            lines = node.log().splitlines()
            record.tracebacks = sum(1 for line in lines if "Traceback" in line)
            for line in lines:
                if soakcheck.is_bug_line(line):
                    record.bug_lines.add(line[:300])
            record.warnings = sum(1 for line in lines if line.startswith("level=warning"))
            record.errors = sum(
                1 for line in lines if line.startswith(("level=error", "level=critical"))
            )
        for web in self.webs:
            await web.stop()

    # --- settled samples -----------------------------------------------------------------

    async def settled(self, what: str) -> None:
        """With the load stopped: wait until the holder's monitor answers 0 (faults off,
        health up), then take four samples of each daemon a quarter second apart: the fewest
        fds and tasks (a connection closing adds, never subtracts), the last RSS."""
        holder = self.daemons[self.holder]
        if self.sim.holder(IP) != self.records[self.holder].droplet_id:
            # An out-of-band move the load ended before a failover followed: Pacemaker's
            # recovery of the failed monitor (stop, start again) brings the IP back.
            async with self.ip_owner:
                await self.failover(self.holder, self.holder)
        deadline = time.monotonic() + 30
        payload = {"op": "monitor", "ip": IP, "deadline_ms": 4000}
        while (await request(holder.socket_path, payload, MONITOR_TIMEOUT_S))["ocf"] != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {holder.name}'s monitor did not answer 0 in 30 s")
            await asyncio.sleep(0.1)
        for index, record in enumerate(self.records):
            samples = []
            for _ in range(4):
                await asyncio.sleep(0.25)
                samples.append(await self.sample(index))
            fewest = min(samples, key=lambda s: s.own_fds)
            settled = Sample(
                samples[-1].at,
                samples[-1].rss_kb,
                fewest.fds,
                min(s.tasks for s in samples),
                fewest.pooled,
            )
            if what == "baseline":
                record.baseline = settled
            else:
                record.final = settled

    # --- the whole run -------------------------------------------------------------------

    async def run(self) -> None:
        args = self.args
        progress(f"soak: {args.duration:g} s of load ({args.warmup:g} s warm-up), seed {args.seed}")
        await self.setup()
        progress(f"daemons up (PIDs {', '.join(str(r.pid) for r in self.records)}); warm-up")
        await self.load(args.warmup, measured=False)
        await self.settled("baseline")
        progress("baseline sampled; measured load")
        await self.load(args.duration - args.warmup, measured=True)
        await self.settled("final")
        progress("final sample taken")
        exchanges = self.sim.all_exchanges
        self.soak.api_requests = len(exchanges)
        self.soak.real_429 = sum(1 for e in exchanges if e.status == 429 and e.fault is None)


async def drain_notify(node: DaemonNode) -> None:
    """Read what the daemon sends to NOTIFY_SOCKET, as systemd does (a full socket buffer
    would make it log every STATUS= it could not send)."""
    assert node.notify is not None
    loop = asyncio.get_running_loop()
    while True:
        await loop.sock_recv(node.notify.sock, 65536)


async def soak(args: argparse.Namespace, base: Path) -> Soak:
    scenario = SimScenario(
        tokens=(TOKEN,),
        action_delay=ACTION_DELAY_S,
        droplets=(SimDroplet(1001, "node1", "nyc3"), SimDroplet(1002, "node2", "nyc3")),
        reserved_ips=(SimReservedIp(IP, "nyc3", None),),
    )
    async with Simulator(scenario) as sim:
        runner = Runner(args, sim, base)
        try:
            await runner.run()
        finally:
            await runner.teardown()
        runner.soak.wall_s = time.monotonic() - runner.began
        return runner.soak


async def _cancel_on_signals(main: Awaitable[Soak]) -> Soak:
    """SIGTERM/SIGHUP/SIGINT unwind like an error: every daemon is stopped by its PID."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    info = report.machine_info()
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hafloatd-soak-")))
        else:
            base = args.workdir
            base.mkdir(parents=True, exist_ok=True)
        try:
            result = asyncio.run(_cancel_on_signals(soak(args, base)))
        except asyncio.CancelledError:
            print("bench/soak: interrupted; every daemon was stopped", file=sys.stderr)
            return 130
        except Exception as exc:
            print(f"bench/soak: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
            _print_logs(base)
            return 2
        result.load = os.getloadavg()
        why = soakcheck.verdict(result)
        text = soakcheck.render(result, why, info)
        print(text)
        if args.output is not None:
            args.output.write_text(text)
            progress(f"summary written to {args.output}")
        if why:
            _print_logs(base)
            print("bench/soak: FAILED: " + "; ".join(why), file=sys.stderr)
            return 1
    return 0


def _print_logs(base: Path, lines: int = 30) -> None:
    for log in sorted(base.glob("*/daemon.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last {len(tail)} lines of {log}", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
