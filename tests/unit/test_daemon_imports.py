"""What ``hafloatd run`` loads: no web server stack and no C++ runtime (issue 8, footprint).

The metrics endpoint is served on asyncio streams (``hafloatd/metrics_server.py``), so
``aiohttp.web`` is never imported, with or without metrics; and ``run`` selects frozenlist's
pure-Python build, so libstdc++ is never mapped. Together about 2.5 MB of resident memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
import hafloatd.cli
# The configuration is missing, so run exits 78 right after importing the daemon.
rc = hafloatd.cli.main(["run", "--config", sys.argv[1]])
import frozenlist, hafloatd.metrics_server
maps = open("/proc/self/maps").read()
print(json.dumps({
    "rc": rc,
    "web": sorted(
        m for m in sys.modules if m.startswith(("aiohttp.web", "prometheus_client.aiohttp"))
    ),
    "frozenlist": frozenlist.FrozenList.__module__,
    "libstdcxx": "libstdc++" in maps,
}))
"""


def _run_daemon_imports(tmp_path: Path, **environ: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "FROZENLIST_NO_EXTENSIONS"}
    env.update(environ)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
        env=env,
    )
    loaded: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_the_daemon_loads_no_web_server_stack_even_with_its_metrics_server(tmp_path: Path) -> None:
    loaded = _run_daemon_imports(tmp_path)
    assert loaded["rc"] == 78
    assert loaded["web"] == []


def test_run_selects_the_pure_python_frozenlist_so_libstdcxx_is_never_mapped(
    tmp_path: Path,
) -> None:
    loaded = _run_daemon_imports(tmp_path)
    assert loaded["frozenlist"] == "frozenlist"
    assert loaded["libstdcxx"] is False


def test_an_explicit_environment_setting_wins(tmp_path: Path) -> None:
    # An empty value is frozenlist's "use the extension": the operator asked for it.
    loaded = _run_daemon_imports(tmp_path, FROZENLIST_NO_EXTENSIONS="")
    assert loaded["frozenlist"] == "frozenlist._frozenlist"
