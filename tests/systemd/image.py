"""What the systemd tier boots: a Debian 12 root with systemd, and hafloatd as wheels.

``base_root`` builds a minbase Debian 12 root with ``debootstrap`` and caches it as a tarball
(``$HAFLOATD_SYSTEMD_CACHE``, default ``/var/cache/hafloatd-systemd-tier/``), keyed by the
suite and the package list: built once per machine (~60 s), untarred in ~3 s after that.

``build_wheels`` builds the wheel of hafloatd from the checkout on the host (from a copy of
the tracked and untracked-not-ignored files, so the checkout is never written) and a
wheelhouse of its dependencies (cached, keyed by the wheel's requirements): the container has
loopback only, so it installs offline from these.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
# procps: the unit's ExecReload=/bin/kill (a stock droplet has it; minbase does not).
# python3-venv: the install the docs describe (a venv under /opt/hafloatd).
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "ca-certificates",
    "procps",
)
CONTAINER_PYTHON = (3, 11)  # Debian 12's python3: the wheels must fit it
DEFAULT_CACHE = Path("/var/cache/hafloatd-systemd-tier")
DEBOOTSTRAP_TIMEOUT_S = 600.0
PIP_TIMEOUT_S = 300.0


class ImageError(Exception):
    """The root or the wheels could not be built; the message says what failed and where."""


def cache_dir() -> Path:
    return Path(os.environ.get("HAFLOATD_SYSTEMD_CACHE", str(DEFAULT_CACHE)))


def base_root(cache: Path, packages: Sequence[str] = PACKAGES) -> Path:
    """The cached root tarball for ``packages``; debootstrap it first when it is missing."""
    key = _key(SUITE, "minbase", *sorted(packages))
    tarball = cache / f"{SUITE}-minbase-{key}.tar"
    with _locked(cache):
        if tarball.is_file():
            return tarball
        mirror = debian_mirror()
        build = Path(tempfile.mkdtemp(prefix="root-build-", dir=cache))
        try:
            root = build / "root"
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(packages),
                    SUITE,
                    str(root),
                    mirror,
                ],
                timeout_s=DEBOOTSTRAP_TIMEOUT_S,
                what=f"debootstrap {SUITE} from {mirror}",
                log=build / "debootstrap.log",
            )
            partial = build / "root.tar"
            _run(["tar", "-C", str(root), "-cf", str(partial), "."], timeout_s=120, what="tar")
            os.replace(partial, tarball)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return tarball


def unpack(tarball: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _run(["tar", "-C", str(root), "-xf", str(tarball)], timeout_s=120, what="untar the root")


def debian_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt already uses (deb822 sources, then sources.list)."""
    for sources in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in sources.read_text(errors="replace").split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                key, colon, value = line.partition(":")
                if colon and not line.startswith((" ", "#")):
                    fields[key.strip().lower()] = value.strip()
            if SUITE in fields.get("suites", "").split():
                for uri in fields.get("uris", "").split():
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
    with contextlib.suppress(FileNotFoundError):
        for line in (etc / "sources.list").read_text(errors="replace").splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    raise ImageError(f"no Debian {SUITE} mirror in {etc}/sources.list(.d): debootstrap needs one")


def build_wheels(checkout: Path, cache: Path, dest: Path) -> Path:
    """hafloatd's wheel and its dependencies' wheels in ``dest``; returns hafloatd's wheel."""
    if sys.version_info[:2] != CONTAINER_PYTHON:
        raise ImageError(
            f"the host Python is {sys.version_info.major}.{sys.version_info.minor}; the "
            f"container's is {'.'.join(map(str, CONTAINER_PYTHON))}: run the tier from a "
            f".venv made by Debian 12's python3 (scripts/setup.sh)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hafloatd-src-") as scratch:
        source = Path(scratch) / "src"
        copy_checkout(checkout, source)
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(source))
    [wheel] = dest.glob("hafloatd-*.whl")
    requirements = wheel_requirements(wheel)
    deps = cache / f"wheels-{_key(*requirements)}"
    with _locked(cache):
        if not (deps / ".complete").is_file():
            shutil.rmtree(deps, ignore_errors=True)
            _pip("wheel", "-w", str(deps), *requirements)
            (deps / ".complete").touch()
    for dep in deps.glob("*.whl"):
        shutil.copy2(dep, dest)
    return wheel


def copy_checkout(checkout: Path, dest: Path) -> None:
    """Tracked and untracked-not-ignored files (symlinks kept): what a commit would hold."""
    listed = subprocess.run(
        ["git", "-C", str(checkout), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if listed.returncode != 0:
        raise ImageError(f"git ls-files in {checkout}: {listed.stderr.decode(errors='replace')}")
    for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
        src, out = checkout / name, dest / name
        if not os.path.lexists(src):
            continue  # deleted in the work tree
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), out)
        else:
            shutil.copy2(src, out)


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines, without the ones that belong to an extra."""
    with zipfile.ZipFile(wheel) as zf:
        [meta] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        text = zf.read(meta).decode()
    requirements = [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return sorted(r for r in requirements if not re.search(r";.*\bextra\s*==", r))


def _pip(*args: str) -> None:
    _run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
        timeout_s=PIP_TIMEOUT_S,
        what="pip " + args[0],
    )


def _run(argv: list[str], *, timeout_s: float, what: str, log: Path | None = None) -> None:
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{what}: no result after {timeout_s:.0f} s") from exc
    output = (done.stdout + done.stderr).decode(errors="replace")
    if log is not None:
        log.write_text(output)
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-20:])
        raise ImageError(f"{what} failed (exit {done.returncode}):\n{tail}")


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One builder at a time per cache (two test runs on one machine share it)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
