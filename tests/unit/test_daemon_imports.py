"""What ``hafloatd run`` loads: the metrics web server only when metrics are enabled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_daemon_loads_no_web_server_until_metrics_are_enabled() -> None:
    script = (
        "import sys\n"
        "import hafloatd.cli, hafloatd.daemon\n"
        "print('\\n'.join(m for m in sys.modules\n"
        "                 if m.startswith(('aiohttp.web', 'hafloatd.metrics_server'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    )
    assert result.stdout.split() == []
