"""docs/benchmarks.md: the machine, the run, every figure beside its baseline, the targets."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import daemonload
import failover
import monitor
import start
from common import HAFLOATD, REPO, Stats


def to_json(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_info() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        mem_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    version = subprocess.run(
        [HAFLOATD, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    # What was measured is the code: the pages this run rewrites do not count as changes.
    dirty = bool(
        _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs", ":!README.md")
    )
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "hafloatd": version,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": (_git("rev-parse", "--short=12", "HEAD") or "unknown")
        + (" (with uncommitted changes)" if dirty else ""),
        "load_start": os.getloadavg(),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _ms(s: Stats | None, digits: int = 2) -> list[str]:
    return s.cells(f"{{:.{digits}f}}") if s else ["-"] * 4


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """A Markdown table; ``align`` has one l/r per column (default: the first left, the rest
    right)."""
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _x(a: Stats | None, b: Stats | None) -> str:
    if not a or not b or not a.median:
        return "-"
    return f"{b.median / a.median:.1f}x"


def render(
    info: dict[str, Any], results: dict[str, Any], errors: dict[str, str], sections: list[str]
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `bench/run` (do not edit by hand: run it again). Every hafloatd figure "
        "stands beside its baseline measured in the same run: the replaced recipe's behaviour, "
        "re-created in [`bench/baseline/`](../bench/baseline/) (a bash OCF agent that curls "
        "the metadata service twice on every call, and a one-shot Python `requests` POST that "
        "does not wait for the action). Figures are min / median / p90 / max. How each "
        "figure is taken, and how to run it: [How it is measured](#how-it-is-measured).",
        "",
        "## The run",
        "",
        f"- machine: {info['cpu']}, {info['cpus']} CPUs, {info['memory_gib']} GiB; "
        f"{info['os']}, kernel {info['kernel']}; Python {info['python']}",
        f"- date: {info['date']}; commit {info['commit']}; {info['hafloatd']}",
        f"- load average (1/5/15 min): {_load(info['load_start'])} at the start, "
        f"{_load(info.get('load_end'))} at the end; the machine is shared: trust medians and "
        "ratios, not single times",
        f"- mode: {info['mode']}; took {info.get('duration_s', 0) / 60:.1f} min",
        "",
    ]
    for name, error in errors.items():
        lines += [f"**Section {name} did not run to the end:** `{error}`", ""]
    lines += _targets(results)
    if "start" in results:
        lines += _start(results["start"])
    if "monitor" in results:
        lines += _monitor(results["monitor"])
    if "failover" in results:
        lines += _failover(results["failover"])
    if "footprint" in results:
        lines += _footprint(results["footprint"])
    if "throughput" in results:
        lines += _throughput(results["throughput"])
    if "budget" in results:
        lines += _budget(results["budget"])
    lines += METHOD.strip("\n").splitlines()
    not_run = [s for s in sections if s not in results and s not in errors]
    if not_run:
        lines += ["", f"Not run: {', '.join(not_run)}."]
    return "\n".join(lines) + "\n"


def _load(value: Any) -> str:
    return " / ".join(f"{v:.2f}" for v in value) if value else "-"


# --- targets --------------------------------------------------------------------------------


def _targets(results: dict[str, Any]) -> list[str]:
    rows: list[list[str]] = []

    def add(what: str, measured: str, allowed: str, met: bool, why: str = "") -> None:
        rows.append([what, measured, allowed, "met" if met else "**missed**", "" if met else why])

    for case in results.get("start", []):
        for what, value, allowed, met in start.targets(case):
            unit_why = (
                "the daemon's start path before the POST (see its timeline in `hafloatd status`)"
                if what == "daemon side"
                else "see the split of exec -> POST in section 1: agent, daemon, the POST's way"
            )
            add(
                f"start {what}, {case['name']}",
                f"{value:+.2f} ms" if what != "daemon side" else f"{value:.2f} ms",
                f"<= {allowed:.2f} ms",
                met,
                unit_why,
            )
    if "monitor" in results:
        for what, value, allowed, met in monitor.targets(results["monitor"]):
            if what == "monitor network requests":
                add(
                    what,
                    f"{value:.2f} per call",
                    "0",
                    met,
                    "the agent or daemon went to the network for a monitor",
                )
            else:
                add(
                    what,
                    f"{value:+.2f} ms",
                    f"<= {allowed:.2f} ms",
                    met,
                    "the agent's own start-up (imports, bytecode) above the bare interpreter",
                )
    if "failover" in results:
        for row in failover.summarize(results["failover"]["failovers"]):
            if row["agent"] != "hafloatd":
                continue
            if row["scenario"] == "node-crash" and row["over_floor"]:
                over = row["over_floor"].median
                add(
                    "node crash: downtime over the cluster's floor (median)",
                    f"{over:.2f} s",
                    "<= 0.10 s",
                    over <= 0.10,
                    "the client's 50 ms poll on both ends and hafloatd's start share",
                )
            if row["scenario"] == "nginx-stopped+notify" and row["downtime"]:
                spec = results["failover"]["info"]["spec"]
                health = spec["health"] or {"fall": 0, "interval_s": 0}
                allowed = health["fall"] * health["interval_s"] + spec["action_delay_s"] + 0.5
                value = row["downtime"].median
                add(
                    "nginx failure with notify_failures: downtime (median)",
                    f"{value:.2f} s",
                    f"<= {allowed:.2f} s (fall x interval + action + 0.5)",
                    value <= allowed,
                    "Pacemaker's reaction to crm_resource --fail (stop, then start elsewhere)",
                )
            if row["scenario"] != "nginx-stopped+notify":
                good = row["accepted"] == (1, 1) and row["fail_count_new"] == (0, 0)
                add(
                    f"{row['scenario']}: 1 POST, fail-count 0 on the new node",
                    f"{_span(row['accepted'])} / {_span(row['fail_count_new'])}",
                    "1 / 0",
                    good,
                    "see the failover table's problems",
                )
    if "footprint" in results:
        fp = results["footprint"]
        rss_why = (
            f"the daemon's interpreter is {fp['python_rss_kb'] / 1024:.1f} MB bare and "
            f"{fp['imports_rss_kb'] / 1024:.1f} MB once its third-party imports are loaded "
            f"(`{daemonload.IMPORTS}`), before any of hafloatd's own code (issue 8, item 3)"
        )
        for point in [*fp["points"], {"after": "start (TLS)", **fp["tls_after_start"]}]:
            mb = point["rss_kb"] / 1024
            met = mb <= daemonload.TARGET_RSS_MB
            add(f"RSS after {point['after']}", f"{mb:.1f} MB", "<= 40 MB", met, rss_why)
            if not met:
                rss_why = "as above"
        first, last = fp["points"][0], fp["points"][-1]
        growth = (last["rss_kb"] - first["rss_kb"]) / 1024
        add(
            f"RSS growth over {last['monitors']:,} monitors",
            f"{growth:+.2f} MB",
            "no growth (< 1 MB)",
            growth < 1.0,
            "memory kept per request",
        )
        add(
            f"idle CPU over {fp['idle_s']:g} s, health every 1 s",
            f"{fp['idle_cpu_pct']:.2f} %",
            "<= 0.5 %",
            fp["idle_cpu_pct"] <= daemonload.TARGET_IDLE_CPU_PCT,
            "probe and poll cadence",
        )
    if "budget" in results:
        b = results["budget"]
        by = ", ".join(f"{k} {v}" for k, v in sorted(b["by_endpoint"].items())) or "none"
        if b["window_s"] < SHORTEST_BUDGET_WINDOW_S:
            rows.append(
                [
                    "API requests/hour, idle daemon",
                    f"{b['per_hour']:.0f}",
                    "<= 30",
                    "not judged",
                    f"counted over {b['window_s']:.0f} s only (a smoke): "
                    "shorter than the daemon's cadences",
                ]
            )
        else:
            add(
                "API requests/hour, idle daemon",
                f"{b['per_hour']:.0f}",
                "<= 30",
                b["per_hour"] <= daemonload.TARGET_REQUESTS_PER_HOUR,
                f"keep-warm and holder-check cadences ({by} in {b['window_s']:.0f} s)",
            )
    if not rows:
        return []
    return [
        "## Targets",
        "",
        *_table(["target", "measured", "allowed", "", "why missed"], rows, "lrrll"),
        "",
    ]


SHORTEST_BUDGET_WINDOW_S = 300.0  # below this, the cadences (30 s, 1 min) make no rate


def _span(pair: Any) -> str:
    low, high = pair
    return f"{low}" if low == high else f"{low}-{high}"


# --- sections -------------------------------------------------------------------------------


def _start(cases: list[dict[str, Any]]) -> list[str]:
    n = cases[0]["floor"].n if cases and cases[0]["floor"] else 0
    lines = [
        "## 1. Start latency",
        "",
        f"ms, {n} round(s) per case, interleaved. exec -> POST: the agent is spawned -> "
        "the simulator receives the assign POST. exec -> exit: spawned -> reaped; "
        "hafloatd's agent returns once the IP has moved (the action completed, confirmed "
        "by the action or the metadata), the baseline's as soon as it was told "
        "`in-progress`. The floor of a round is the mean of `python3 -I -S -c pass` spawned "
        "just before and just after hafloatd's agent (after one uncounted spawn); hafloatd's "
        "exec -> POST is split (wall clock) into the agent's part, the daemon's, and the "
        "POST's way through aiohttp's client, loopback or the link, and the simulator's "
        "server up to its arrival stamp.",
        "",
    ]
    for case in cases:
        h, b = case["hafloatd"], case["baseline"]
        rows = [
            ["hafloatd `hafloat start`", *_ms(h["exec_post"]), *_ms(h["exec_exit"])],
            ["baseline `floatip start`", *_ms(b["exec_post"]), *_ms(b["exec_exit"])],
            ["floor `python3 -I -S -c pass`", *["-"] * 4, *_ms(case["floor"])],
            [
                "hafloatd exec->POST minus the floor, same round",
                *_ms(case["post_over_floor"]),
                *["-"] * 4,
            ],
            [
                "of which the agent: exec -> request received by the daemon",
                *_ms(case.get("agent_side")),
                *["-"] * 4,
            ],
            [
                "the daemon: request received -> POST sent",
                *_ms(case["daemon_side"], 3),
                *["-"] * 4,
            ],
            [
                "the POST: sent -> received by the simulator",
                *_ms(case.get("post_way")),
                *["-"] * 4,
            ],
        ]
        rtt = f" (RTT {case['rtt_ms']:g} ms)" if case["rtt_ms"] else ""
        ratio = _x(h["exec_post"], b["exec_post"])
        lines += [
            f"**{case['name']}**{rtt}: exec -> POST {ratio} faster than the baseline (medians)",
            "",
        ]
        lines += _table(
            [
                "",
                "exec->POST min",
                "median",
                "p90",
                "max",
                "exec->exit min",
                "median",
                "p90",
                "max",
            ],
            rows,
        )
        statuses = ", ".join(
            f"{who} {h_or_b['post_statuses']}" for who, h_or_b in (("hafloatd", h), ("baseline", b))
        )
        before = ", ".join(
            f"{who} {h_or_b['requests_before_post']}"
            for who, h_or_b in (("hafloatd", h), ("baseline", b))
        )
        lines += [
            "",
            f"POST answers seen: {statuses}; most API requests between exec and the POST: "
            f"{before} (hafloatd's background holder check, every 2 s here, now and then falls "
            "in that window; a start that looked first would show in its daemon side).",
            "",
        ]
    return lines


def _monitor(result: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["name"],
            *_ms(r["wall"]),
            *_ms(r["cpu"]),
            f"{r['requests_per_call']:.2f}" if r["requests_per_call"] is not None else "-",
        ]
        for r in result["rows"]
    ]
    agent, baseline = result["rows"][0], result["rows"][1]
    over = result["over_floor"]
    rows.append(
        [
            "hafloatd's monitor minus the Python floor, same round",
            *_ms(over["wall_ms"]),
            *_ms(over["cpu_ms"]),
            "-",
        ]
    )
    return [
        "## 2. Monitor",
        "",
        f"ms per call, {result['reps']} round(s), the four rows interleaved. hafloatd's "
        f"monitor is {_x(agent['wall'], baseline['wall'])} faster than the baseline's "
        "(median wall).",
        "",
        *_table(
            [
                "command",
                "wall min",
                "median",
                "p90",
                "max",
                "CPU min",
                "median",
                "p90",
                "max",
                "network requests / call",
            ],
            rows,
        ),
        "",
    ]


def _failover(result: dict[str, Any]) -> list[str]:
    info = result["info"]
    spec = info["spec"]
    health = spec["health"] or {}
    rows = []
    for row in failover.summarize(result["failovers"]):
        ph = row["phases"]
        down = " / ".join(_ms(row["downtime"]))
        if not row["moved"]:
            down = f"no failover within {row['waited_s']:g} s (unbounded)"
        rows.append(
            [
                row["scenario"],
                row["agent"],
                f"{row['moved']}/{row['rounds']}",
                down,
                *[f"{ph[k].median:.2f}" if ph[k] else "-" for k in failover.PHASE_KEYS],
                _span(row["posts"]),
                _span(row["accepted"]),
                _span(row["fail_count_new"]),
                "; ".join(row["problems"]) or "-",
            ]
        )
    return [
        "## 3. Failover under a real two-node Pacemaker",
        "",
        f"Seconds. Corosync token {spec['token_ms']} ms; health every "
        f"{health.get('interval_s', '-')} s, fall {health.get('fall', '-')}; monitor every "
        f"{spec['monitor_interval']}; simulated DigitalOcean action {spec['action_delay_s']} s; "
        "a client requests the reserved IP every 50 ms. hafloatd: "
        f"`{info.get('pcs_line', '')}`. Baseline: {info.get('baseline_resource', '-')}.",
        "",
        "Downtime min / median / p90 / max; the phases are medians (detect: failure "
        "detection; pacemaker: its decision; agent: start executed -> POST arrives; action: "
        "DigitalOcean's; 1st answer: the client's next poll). POSTs: all / those that "
        "created an action; fail-count: Pacemaker's, on the node the resource moved to.",
        "",
        *_table(
            [
                "scenario",
                "agent",
                "moved",
                "downtime",
                "detect",
                "pacemaker",
                "agent",
                "action",
                "1st answer",
                "POSTs",
                "accepted",
                "fail-count",
                "problems",
            ],
            rows,
            "llrrrrrrrrrrl",
        ),
        "",
    ]


def _footprint(fp: dict[str, Any]) -> list[str]:
    rows = [
        [f"after {p['after']}", f"{p['rss_kb'] / 1024:.1f}", str(p["fds"])] for p in fp["points"]
    ]
    tls = fp["tls_after_start"]
    rows.insert(1, ["after start (TLS API)", f"{tls['rss_kb'] / 1024:.1f}", str(tls["fds"])])
    return [
        "## 4. Footprint",
        "",
        "The daemon holding the IP, health probe every 1 s, metrics on (the defaults "
        "otherwise). RSS is `VmRSS`.",
        "",
        *_table(["hafloatd", "RSS MB", "open fds"], rows),
        "",
        f"Idle CPU over {fp['idle_s']:g} s: {fp['idle_cpu_pct']:.2f} % of one CPU "
        f"({fp['idle_cpu_s']:.2f} s). For scale, VmRSS of the daemon's interpreter: bare "
        f"{fp['python_rss_kb'] / 1024:.1f} MB, after `{daemonload.IMPORTS}` "
        f"{fp['imports_rss_kb'] / 1024:.1f} MB. Baseline: no resident process (each call "
        "is a new bash, two curls, and on start a Python with requests).",
        "",
    ]


def _throughput(tp: dict[str, Any]) -> list[str]:
    rows = [
        [what, f"{tp[key]['per_s']:,.0f}", f"{tp[key]['requests']:,}"]
        for what, key in (
            ("one persistent connection per client", "persistent"),
            ("one connection per request", "per_request"),
        )
    ]
    return [
        "## 5. Control-socket throughput",
        "",
        f"`monitor` requests answered per second, {tp['clients']} concurrent clients "
        f"(`hafloatd.control.client`, one process), {tp['seconds']:g} s each. The baseline "
        "has no daemon to ask: each of its monitors is a new bash + two curls (section 2).",
        "",
        *_table(["clients", "requests/s", "requests"], rows),
        "",
    ]


def _budget(b: dict[str, Any]) -> list[str]:
    by = ", ".join(f"`{k}` {v}" for k, v in sorted(b["by_endpoint"].items())) or "none"
    per_token = f"{b['droplets_per_token']:.0f}" if b["droplets_per_token"] else "unbounded"
    smoke = (
        f" (Counted over {b['window_s']:.0f} s only: a smoke, shorter than the daemon's "
        "cadences, so not a rate.)"
        if b["window_s"] < SHORTEST_BUDGET_WINDOW_S
        else ""
    )
    return [
        "## 6. API budget",
        "",
        f"An idle daemon (IP held, health up) counted by the simulator over "
        f"{b['window_s']:.0f} s: {b['requests']} requests ({by}) on {b['connections']} "
        f"connection(s), **{b['per_hour']:.0f} requests/hour**, so one token "
        f"(5,000 requests/hour) serves **{per_token} droplets** at rest. Baseline: 0 API "
        "requests at rest (it asks the API only to move the IP, and never checks the "
        "outcome); its cost is the two metadata requests of every monitor (section 2)." + smoke,
        "",
    ]


METHOD = """
## How it is measured

`bench/run` (as root, after `bash scripts/setup.sh`): `bench/run` writes this page (about
25 minutes); `bench/run --quick` runs one repetition of each with short durations and prints
the report (CI runs it from `scripts/test.sh`, in under 3 minutes); `--only start,monitor`
runs some sections; `--json PATH` keeps the raw figures; `--reps`, `--crash-rounds`,
`--rounds`, `--budget-window` change the counts. It uses hafloatd only as a user would:
`hafloatd run`, `hafloatd simulator`, `hafloatd install-agent --root`, the control socket, and
the lab's cluster harness and drills. The code is in
[`bench/hafbench/`](../bench/hafbench/), one module per section. A target relative to the
interpreter floor is judged on the median of per-round differences (each round's figure minus
the floor measured in that round), so that drift on a shared machine cancels out.

1. **Start latency** (`start.py`): the simulator (action delay 0) and one `hafloatd run` for
   droplet 1002; before each start the IP is put back on droplet 1001 and the daemon is
   waited for until it sees that from the API, as a failover's survivor does (its holder
   check every 2 s here instead of 2 min, so that view arrives within 2 s). The agents are
   spawned with Pacemaker's environment; times are CLOCK_MONOTONIC (the simulator stamps
   each request with it). The round's floor is the mean of two bare interpreters spawned just
   before and just after hafloatd's agent, all three after one uncounted spawn: the first
   spawn after the reset's idle wait is ~0.4 ms slower than one right after another, so a
   floor taken elsewhere in the round, or first, biased the difference either way. The split of
   exec -> POST uses the wall clock: the spawn, the daemon's failover timeline (`status`)
   and the simulator's stamp. The link case runs the daemon and the agents in one network
   namespace and the simulated API in another, joined by `bench/tools/delaylink` (25 ms each
   way; this kernel has no netem), with the metadata service local to the client side.
   The baseline loads requests' CA bundle plus the simulator's CA, as it would load the
   system bundle against the real API.
2. **Monitor** (`monitor.py`): `posix_spawn` + `wait4`, the rows interleaved; network
   requests are those on TCP connections opened during a call, counted by a front for the
   metadata service and by the simulator.
3. **Failover** (`failover.py`): `hafloatd.lab.cluster.Cluster` and the lab's
   `DrillRunner` for hafloatd; for the baseline, the same faults and records on
   `FloatIPBaseline` in the same cluster (FloatIP stopped meanwhile); a second cluster with
   `notify_failures: true` for that row.
4. **Footprint**, 5. **throughput**, 6. **API budget** (`daemonload.py`): `/proc/PID/status`
   and `/proc/PID/stat`, 8 asyncio clients of `hafloatd.control.client`, and the simulator's
   record of every request.
"""
