"""Stop records (``hafloatd.stop_records``): what the agent leaves, what the daemon consumes."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hafloatd import stop_records
from hafloatd.stop_records import StopRecord

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "ocf" / "hafloat"
IP = "203.0.113.10"
OTHER_IP = "203.0.113.20"


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # short: the agent refuses socket paths longer than sun_path
    directory = Path(tempfile.mkdtemp(prefix="hfr-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_record(directory: Path, ip: str, **fields: object) -> Path:
    path = stop_records.record_path(directory, ip)
    path.write_text(json.dumps({"ip": ip, "stopped_at": 1700000000.5, **fields}) + "\n")
    return path


def test_consume_returns_and_removes_the_records_of_the_given_ips(run_dir: Path) -> None:
    mine = write_record(run_dir, IP, resource="FloatIP", node="node1")
    other = write_record(run_dir, OTHER_IP)
    assert stop_records.consume(run_dir, [IP]) == {
        IP: StopRecord(IP, 1700000000.5, "FloatIP", "node1")
    }
    assert not mine.exists()
    assert other.exists()  # not configured here: not ours to judge


def test_consume_without_records_or_directory_finds_nothing(run_dir: Path) -> None:
    assert stop_records.consume(run_dir, [IP]) == {}
    assert stop_records.consume(run_dir / "absent", [IP]) == {}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json\n",
        b"[1]\n",
        b'{"ip":"203.0.113.99","stopped_at":1700000000}\n',
        b'{"ip":"203.0.113.10"}\n',
        b'{"ip":"203.0.113.10","stopped_at":"yesterday"}\n',
        b'{"ip":"203.0.113.10","stopped_at":true}\n',
        b'{"ip":"203.0.113.10","stopped_at":NaN}\n',
        b'{"ip":"203.0.113.10","stopped_at":-1}\n',
        b'{"ip":"203.0.113.10","stopped_at":1700000000,"pad":"' + b"x" * 5000 + b'"}\n',
        b'{"ip":"203.0.113.10","stopped_at":1700000000,"x":"\xff"}\n',
    ],
)
def test_garbage_is_removed_with_a_log_line_and_never_applied(
    content: bytes, run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = stop_records.record_path(run_dir, IP)
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="hafloatd.stop_records"):
        assert stop_records.consume(run_dir, [IP]) == {}
    assert not path.exists()
    assert "event=stop_record_invalid" in caplog.text


def test_resource_and_node_that_are_not_strings_are_unknown(run_dir: Path) -> None:
    write_record(run_dir, IP, resource=None, node=7)
    assert stop_records.consume(run_dir, [IP])[IP] == StopRecord(IP, 1700000000.5, None, None)


@pytest.mark.parametrize(
    ("stopped_at", "changed_at", "stops"),
    [
        (100.0, None, True),  # no role file: nothing newer says otherwise
        (100.0, 99.5, True),  # stopped after the role last changed
        (100.0, 100.0, False),
        (100.0, 150.0, False),  # a start (or a delivered stop) came later: it wins
    ],
)
def test_a_record_stops_the_role_only_when_newer_than_its_last_change(
    stopped_at: float, changed_at: float | None, stops: bool
) -> None:
    record = StopRecord(IP, stopped_at, None, None)
    assert stop_records.stops_the_role(record, changed_at) is stops


def test_the_agents_record_is_what_the_daemon_reads(run_dir: Path) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "OCF_RESKEY_ip": IP,
        "OCF_RESKEY_socket": str(run_dir / "control.sock"),
        "OCF_RESOURCE_INSTANCE": "Float\u00cfP",
        "OCF_RESKEY_CRM_meta_on_node": "node1",
    }
    before = time.time()
    result = subprocess.run(
        [str(AGENT), "stop"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    record = stop_records.consume(run_dir, [IP])[IP]
    assert record.resource == "Float\u00cfP" and record.node == "node1"
    assert before <= record.stopped_at <= time.time()
    assert list(run_dir.iterdir()) == []
