"""``api.hourly_budget``: the idle cadence a file implies, and check-config's warning above it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hafloatd.config import ApiConfig, budget_warnings, idle_requests_per_hour, parse_config
from hafloatd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "hafloatd.example.yaml"
IPS = ["203.0.113.10", "203.0.113.11", "203.0.113.12"]


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hafloatd.cli", "check-config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hafloatd.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# -- the idle cadence ------------------------------------------------------------------------


def test_the_defaults_spend_30_requests_an_hour_per_ip() -> None:
    api = ApiConfig()
    assert (api.holder_check_interval, api.keepalive_interval, api.hourly_budget) == (
        120.0,
        300.0,
        30,
    )
    assert idle_requests_per_hour(api, 1) == 30
    assert idle_requests_per_hour(api, 3) == 90
    assert budget_warnings(parse_config({"ips": IPS[:1]})) == []


def test_keep_warm_counts_only_when_it_is_not_longer_than_the_holder_check() -> None:
    assert idle_requests_per_hour(ApiConfig(keepalive_interval=121.0), 1) == 30
    assert idle_requests_per_hour(ApiConfig(keepalive_interval=120.0), 1) == 60
    assert idle_requests_per_hour(ApiConfig(keepalive_interval=30.0), 1) == 150


def test_the_old_defaults_still_load() -> None:
    config = parse_config(
        {"ips": IPS[:1], "api": {"keepalive_interval": "30s", "holder_check_interval": "1m"}}
    )
    assert idle_requests_per_hour(config.api, 1) == 180
    [warning] = budget_warnings(config)
    assert "about 180 API requests/hour" in warning


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "30"])
def test_hourly_budget_is_a_positive_integer(bad: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"ips": IPS[:1], "api": {"hourly_budget": bad}})
    [problem] = caught.value.problems
    assert problem.startswith("api.hourly_budget: must be an integer")


def test_the_warning_names_the_keys_and_the_share_of_the_token() -> None:
    [warning] = budget_warnings(parse_config({"ips": IPS}))

    assert warning == (
        "api.hourly_budget: an idle daemon would send about 90 API requests/hour (3 IP(s) "
        "checked every 2m (api.holder_check_interval): 90), over api.hourly_budget (30): 1.8% "
        "of DigitalOcean's 5,000 requests/hour per token, 55 idle droplets per token (at the "
        "budget: 166 idle droplets); lengthen api.holder_check_interval, or raise "
        "api.hourly_budget"
    )
    assert budget_warnings(parse_config({"ips": IPS, "api": {"hourly_budget": 90}})) == []


def test_the_warning_names_keep_warm_when_it_would_fire_at_rest() -> None:
    config = parse_config({"ips": IPS[:1], "api": {"keepalive_interval": "1m"}})
    [warning] = budget_warnings(config)
    assert "about 90 API requests/hour" in warning
    assert "up to 60 keep-warm GETs, api.keepalive_interval (1m)" in warning
    assert "set api.keepalive_interval above it" in warning


def test_the_hard_guard_counts_the_same_idle_cadence() -> None:
    base = "https://api.digitalocean.com"
    # 1000/hour of holder checks alone is allowed; a keep-warm that never fires adds nothing.
    parse_config({"ips": IPS[:1], "api": {"base_url": base, "holder_check_interval": "3.6s"}})
    too_often = {"base_url": base, "holder_check_interval": "7.2s", "keepalive_interval": "5s"}
    with pytest.raises(ConfigError) as caught:
        parse_config({"ips": IPS[:1], "api": too_often})
    assert caught.value.problems == [
        "api.keepalive_interval: too frequent: about 1220 requests/hour at rest (1 IP(s) "
        "checked every 7.2s, keep-warm every 5s); keep it under 1000 of DigitalOcean's "
        "5000/hour per token"
    ]


# -- hafloatd check-config -------------------------------------------------------------------


def test_check_config_warns_over_the_budget_and_still_exits_0(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        ips: [203.0.113.10, 203.0.113.11, 203.0.113.12]
        api:
          holder_check_interval: 1m
        """,
    )

    result = check_config(str(path))

    assert result.returncode == 0, result.stderr
    [warning] = result.stderr.splitlines()
    assert warning.startswith(f"{path}: WARNING: api.hourly_budget: an idle daemon would send ")
    assert "about 180 API requests/hour" in warning
    assert "api.holder_check_interval" in warning
    assert "3.6% of DigitalOcean's 5,000 requests/hour per token" in warning
    assert "27 idle droplets per token" in warning
    assert result.stdout.startswith(f"{path}: OK\n")
    assert "budget:    about 180 API requests/hour idle" in result.stdout

    quiet = check_config("-q", str(path))
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", result.stderr)


def test_check_config_is_silent_about_a_file_within_budget() -> None:
    result = check_config(str(EXAMPLE))

    assert (result.returncode, result.stderr) == (0, "")
    assert (
        "budget:    about 30 API requests/hour idle (holder check every 2m, keep-warm after 5m "
        "quiet), budget 30/hour, 0.6% of 5,000/hour per token"
    ) in result.stdout
