"""Hostile configuration files (issue 9, item 3): ``check-config`` exits 2 and ``run`` exits 78
for each of the 600+ files ``tests/hostile_configs.py`` generates, with a message naming a
key or a line, never a traceback, never a hang.

What "naming a key or a line" means here, precisely. ``check-config FILE`` writes nothing on
stdout and 1 to 21 lines on stderr, each ``FILE: PROBLEM``, where every PROBLEM

* starts with a key path of the schema (``top level``, ``state_dir``, a section name, with
  ``.key`` or ``[N]`` after it), or names a line (``line N``, as ``(line N)`` after the key
  or ``line N, column M:`` for a YAML error), or is the last line ``... and N more problems``;
* is at most 330 characters;
* and, for a file over 1 MiB, is only ``file is larger than 1048576 bytes``.

A file built from a valid one with a single defect under a key must have a problem starting
with that key's path (``api.request_timeout: must be ...``); a duplicate key's problem
says ``duplicate key, first defined on line N``. ``run --config FILE`` writes one line on
stderr, ``hafloatd: FILE: ...``, nothing on stdout, and exits 78 (EX_CONFIG, which the unit's
``RestartPreventExitStatus=`` keeps from a restart loop).

Every file goes through ``hafloatd.cli.main(["check-config", FILE])`` in this process (under
a 10 s alarm each; the slowest takes about 1.5 s); a stratified sample of 40 (the biggest of each
category, then a seeded choice) runs as real processes, ``check-config`` and ``run``, two
at a time, each under a 30 s timeout. ``HAFLOATD_HOSTILE_CONFIG_SEED=N`` draws other random
parts (the default seed: the same files on every run).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hafloatd.cli import main as cli_main
from tests.hostile_configs import LIMIT, SEED, Hostile, base, dump, generate, sample

REPO = Path(__file__).resolve().parents[2]
MIN_FILES = 300
# The seed places control characters, draws the garbage and the sample of processes.
CONFIG_SEED = int(os.environ.get("HAFLOATD_HOSTILE_CONFIG_SEED", SEED))
SUBPROCESS_SAMPLE = 40
PROCESS_TIMEOUT_S = 30
IN_PROCESS_LIMIT_S = 10  # the alarm; the slowest file (50,000 bad list items) takes ~1.5 s
MAX_PROBLEM_CHARS = 330
MAX_LINES = 21
SECTIONS = ("ips", "api", "metadata", "control", "metrics", "health", "pacemaker", "logging")
NAMES_A_KEY = re.compile(rf"^(top level|state_dir|(?:{'|'.join(SECTIONS)})(?=[:.\[ ]))")
NAMES_A_LINE = re.compile(r"\bline \d+\b")
MORE = re.compile(r"^\.\.\. and \d+ more problems$")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-config")


@pytest.fixture(scope="module")
def files(workdir: Path) -> list[tuple[Hostile, Path]]:
    written = []
    for hostile in generate(workdir, CONFIG_SEED):
        path = workdir / f"{hostile.name}.yaml"
        path.write_bytes(hostile.data)
        written.append((hostile, path))
    return written


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in this (the main) thread after ``seconds``."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_config_in_process(path: Path) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    began = time.monotonic()
    with (
        alarm(IN_PROCESS_LIMIT_S),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = cli_main(["check-config", str(path)])
        except Exception as exc:  # a crash: reported like a traceback would be
            code, err = -1, io.StringIO(f"Traceback: {type(exc).__name__}: {exc}")
    return code, out.getvalue(), err.getvalue(), time.monotonic() - began


def check_config_problems(hostile: Hostile, path: Path, code: int, out: str, err: str) -> list[str]:
    """What is wrong with check-config's answer to ``hostile`` (nothing: [])."""
    wrong = []
    if code != 2:
        wrong.append(f"exit {code}")
    if out:
        wrong.append(f"stdout {out[:200]!r}")
    if "Traceback" in err:
        wrong.append(f"traceback {err[-500:]!r}")
    lines = err.splitlines()
    if not 1 <= len(lines) <= MAX_LINES:
        wrong.append(f"{len(lines)} lines")
    prefix = f"{path}: "
    problems = [line.removeprefix(prefix) for line in lines]
    wrong += [
        f"not prefixed with the file: {line[:200]!r}"
        for line in lines
        if not line.startswith(prefix)
    ]
    for problem in problems:
        if len(problem) > MAX_PROBLEM_CHARS:
            wrong.append(f"{len(problem)} characters: {problem[:100]!r}")
        whole = hostile.whole_file is not None and problem == hostile.whole_file
        if not (
            NAMES_A_KEY.match(problem)
            or NAMES_A_LINE.search(problem)
            or MORE.match(problem)
            or whole
        ):
            wrong.append(f"names no key and no line: {problem[:200]!r}")
    if hostile.whole_file is not None and problems != [hostile.whole_file]:
        wrong.append(f"not just {hostile.whole_file!r}: {problems[:3]}")
    if hostile.names is not None:
        named = [p for p in problems if re.match(re.escape(hostile.names) + r"[:.\[ ]", p)]
        if not named:
            wrong.append(f"no problem names {hostile.names}: {problems[:3]}")
        elif not hostile.duplicate and all("duplicate key" in p for p in named):
            wrong.append(f"{hostile.names} called a duplicate, not its defect: {named[:3]}")
        elif hostile.duplicate and not any(
            "duplicate key, first defined on line" in p for p in named
        ):
            wrong.append(f"{hostile.names} not called a duplicate: {named[:3]}")
    return wrong


def test_check_config_rejects_every_generated_file_naming_a_key_or_a_line(
    files: list[tuple[Hostile, Path]],
) -> None:
    assert len(files) >= MIN_FILES
    failures: list[str] = []
    slowest = (0.0, "")
    for hostile, path in files:
        code, out, err, took = check_config_in_process(path)
        slowest = max(slowest, (took, hostile.name))
        failures += [
            f"{hostile.name}: {w}" for w in check_config_problems(hostile, path, code, out, err)
        ]

    assert failures == [], "\n".join(failures[:40])
    categories = sorted({hostile.category for hostile, _ in files})
    print(
        f"\nhostile config: {len(files)} files in-process ({', '.join(categories)}); "
        f"slowest {slowest[1]} {slowest[0]:.2f} s"
    )


def hafloatd(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "hafloatd.cli", *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=PROCESS_TIMEOUT_S,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"},
        check=False,
    )
    return completed, time.monotonic() - began


def run_problems(path: Path, completed: subprocess.CompletedProcess[str]) -> list[str]:
    wrong = []
    if completed.returncode != 78:
        wrong.append(f"exit {completed.returncode}")
    if completed.stdout:
        wrong.append(f"stdout {completed.stdout[:200]!r}")
    if "Traceback" in completed.stderr:
        wrong.append(f"traceback {completed.stderr[-500:]!r}")
    lines = completed.stderr.splitlines()
    if len(lines) != 1 or not lines[0].startswith(f"hafloatd: {path}: "):
        wrong.append(f"stderr {completed.stderr[:300]!r}")
    return wrong


def test_check_config_and_run_as_processes_exit_2_and_78_for_a_sample(
    files: list[tuple[Hostile, Path]],
) -> None:
    by_name = dict((hostile.name, (hostile, path)) for hostile, path in files)
    hostiles = [h for h, _ in files]
    chosen = [by_name[h.name] for h in sample(hostiles, SUBPROCESS_SAMPLE, CONFIG_SEED)]

    def one(item: tuple[Hostile, Path]) -> list[str]:
        hostile, path = item
        checked, _ = hafloatd("check-config", str(path))
        ran, _ = hafloatd("run", "--config", str(path))
        wrong = check_config_problems(
            hostile, path, checked.returncode, checked.stdout, checked.stderr
        )
        wrong += [f"run: {w}" for w in run_problems(path, ran)]
        return [f"{hostile.name}: {w}" for w in wrong]

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [w for wrong in pool.map(one, chosen) for w in wrong]

    assert failures == [], "\n".join(failures[:40])
    print(
        f"\nhostile config: {len(chosen)} files x (check-config, run) as processes in "
        f"{time.monotonic() - began:.1f} s"
    )


# --- what the generated files found -------------------------------------------------------


def test_a_huge_hourly_budget_is_refused_not_a_crash_at_startup(workdir: Path) -> None:
    """api.hourly_budget had no upper bound: check-config accepted 400 digits and the daemon
    crashed at startup setting its gauge (OverflowError: int too large to convert to float),
    exit 70, which systemd restarts, in a loop."""
    data = base(workdir)
    data["api"]["hourly_budget"] = int("9" * 400)
    path = workdir / "huge-hourly-budget.yaml"
    path.write_bytes(dump(data))

    checked, _ = hafloatd("check-config", str(path))
    ran, _ = hafloatd("run", "--config", str(path))

    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert checked.stderr.startswith(f"{path}: api.hourly_budget: must be an integer from 1 to ")
    assert ran.returncode == 78, ran.stderr
    assert "api.hourly_budget" in ran.stderr


def test_limit_is_the_loaders() -> None:
    from hafloatd.config.loader import MAX_FILE_BYTES  # noqa: PLC0415

    assert LIMIT == MAX_FILE_BYTES
