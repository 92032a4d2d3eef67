"""The systemd tier: hafloatd installed from a wheel and run by a real systemd 252.

``installed`` (session): a Debian 12 root (cached tarball, debootstrapped when missing) booted
in systemd-nspawn, hafloatd installed in it as the docs say, the simulator and a web backend
running inside on loopback. Torn down at the end by PID, host cgroups and the root removed;
the fixture fails if anything is left.
``unit`` (each test): the same, brought back to the baseline first: the good config, the
unit active/running.

Where this host cannot boot the container the tests skip saying what is missing, except under
``CI=true``: there they fail. ``HAFLOATD_SYSTEMD_CACHE`` moves the cache
(default /var/cache/hafloatd-systemd-tier).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.systemd.image import base_root, build_wheels, cache_dir, unpack
from tests.systemd.nspawn import Container, missing_host_capabilities
from tests.systemd.service import Installed

CHECKOUT = Path(__file__).resolve().parents[2]
# Where the time went (printed at the end of the run: the tier has a budget).
TIMINGS: dict[str, float] = {}


def running_under_ci(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[what] = time.monotonic() - began


@pytest.fixture(scope="session")
def installed() -> Iterator[Installed]:
    missing = missing_host_capabilities()
    if missing:
        reason = "the systemd tier cannot boot a container here; missing: " + "; ".join(missing)
        if running_under_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="hafloatd-systemd-", dir="/var/tmp"))
    container = Container(workdir / "root", f"hafloatd-st{os.getpid()}", workdir / "nspawn.log")
    left: list[str] = []
    try:
        cache = cache_dir()
        with timed("base root (cached, or debootstrap)"):
            tarball = base_root(cache)
        with timed("unpack root (on a tmpfs)"):
            container.mount_root()
            unpack(tarball, container.root)
        with timed("wheels (hafloatd built, dependencies cached)"):
            build_wheels(CHECKOUT, cache, container.root / "opt/hafloatd/wheels")
        with timed("boot to is-system-running"):
            container.boot()
        unit = Installed(container)
        with timed("install as documented"):
            unit.install()
        with timed("simulator and backend up"):
            unit.start_lab()
        yield unit
    finally:
        with timed("teardown: poweroff, root unmounted, host cgroups removed"):
            left = container.shutdown()
            left += _remove_workdir(workdir)
    assert left == [], f"the systemd tier left: {left}"


@pytest.fixture
def unit(installed: Installed) -> Installed:
    installed.restore()
    return installed


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("systemd tier: where the time went")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")


def _remove_workdir(workdir: Path) -> list[str]:
    """Remove the work directory, unless something is still mounted under it (then say so)."""
    with open("/proc/self/mountinfo") as mountinfo:
        mounted = [line.split()[4] for line in mountinfo]
    busy = [m for m in mounted if m == str(workdir) or m.startswith(f"{workdir}/")]
    if busy:
        return [f"still mounted: {m}" for m in busy]
    shutil.rmtree(workdir, ignore_errors=True)
    return [f"{workdir} not removed"] if workdir.exists() else []
