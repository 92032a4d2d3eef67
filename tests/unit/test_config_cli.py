"""``hafloatd check-config`` run as a real process: exit codes, summary, problem lines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "hafloatd.example.yaml"
TIMEOUT_S = 60


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hafloatd.cli", "check-config", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=REPO,
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hafloatd.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_valid_example_exits_0_with_a_summary() -> None:
    result = check_config(str(EXAMPLE))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{EXAMPLE}: OK"
    assert "203.0.113.10 (on_stop=release)" in result.stdout
    assert "https://api.digitalocean.com (path family reserved_ips)" in result.stdout
    assert "auto: systemd credential do-token, then $HAFLOATD_DO_TOKEN" in result.stdout
    assert "/run/hafloatd/control.sock (mode 0660" in result.stdout
    assert "metrics:   127.0.0.1:9310" in result.stdout
    assert "http://127.0.0.1/ every 2s, timeout 1s, rise 2, fall 3, expect 200" in result.stdout


def test_summary_shows_token_file_path_without_reading_it(tmp_path: Path) -> None:
    token_file = tmp_path / "do-token"  # does not exist: check-config must not open it
    path = write(
        tmp_path,
        f"""\
        ips:
          - 203.0.113.10
          - {{address: 203.0.113.11, on_stop: unassign}}
        api:
          path_family: floating_ips
          token_source: file
          token_file: {token_file}
        metrics:
          listen: null
        """,
    )

    result = check_config(str(path))

    assert result.returncode == 0, result.stderr
    assert "203.0.113.10 (on_stop=release), 203.0.113.11 (on_stop=unassign)" in result.stdout
    assert "(path family floating_ips)" in result.stdout
    assert f"token:     file {token_file}" in result.stdout
    assert "metrics:   disabled" in result.stdout
    assert "health:    no health probe" in result.stdout


def test_invalid_file_exits_2_listing_every_problem_prefixed_with_the_path(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """\
        ips:
          - address: 203.0.113.10
            on_stop: drop
        health:
          intervall: 2s
          fall: -1
        metrics:
          listen: nowhere
        """,
    )

    result = check_config(str(path))

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}: ips[0].on_stop: must be one of release, unassign, got 'drop' (line 3)",
        f"{path}: health.intervall: unknown key (did you mean 'interval'?) (line 5)",
        f"{path}: health.fall: must be an integer >= 1, got -1 (line 6)",
        f"{path}: metrics.listen: must be host:port like 127.0.0.1:9310 or [::1]:9310, "
        "got 'nowhere' (line 8)",
    ]


def test_yaml_syntax_error_exits_2_with_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "ips: [203.0.113.10\n")

    result = check_config(str(path))

    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: line 2, column 1: invalid YAML:")


@pytest.mark.parametrize("text", ["", "# nothing yet\n"])
def test_empty_file_exits_2(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    result = check_config(str(path))

    assert result.returncode == 2
    assert (
        result.stderr == f"{path}: top level: the file is empty: it needs at least an 'ips:' list\n"
    )


def test_missing_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    result = check_config(str(path))

    assert result.returncode == 2
    assert (
        result.stderr == f"{path}: cannot read the configuration file: No such file or directory\n"
    )


def test_quiet_prints_nothing_for_a_valid_file() -> None:
    result = check_config("--quiet", str(EXAMPLE))

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_check_config_does_not_import_aiohttp() -> None:
    code = (
        "import sys\n"
        "from hafloatd import cli\n"
        f"rc = cli.main(['check-config', '--quiet', {str(EXAMPLE)!r}])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'uvloop'))\n"
        "print(rc, loaded)\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=REPO,
        check=False,
    )

    assert result.stdout.strip() == "0 []", result.stderr


def test_console_script_is_installed_and_checks_config() -> None:
    script = Path(sys.executable).parent / "hafloatd"
    if not script.exists():
        pytest.skip("console script not installed in this environment")

    result = subprocess.run(
        [str(script), "check-config", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, result.stderr
