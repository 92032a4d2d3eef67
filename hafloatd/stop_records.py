"""Stop records: stops Pacemaker sent while the daemon was down, left for it by the agent.

A stop that finds no daemon on the control socket succeeds anyway (stop must not fail, and
must not wait for a daemon that may be gone for good), but the role persisted under the
state directory still says ``started``: the restarted daemon would answer the next probe
"running", and Pacemaker would see the resource active on two nodes. So the OCF agent
(``ocf/hafloat_agent.py``) leaves ``stopped-<ip>`` in the control socket's directory, one
JSON line: ``{"ip": "...", "stopped_at": <unix time>, "resource": ..., "node": ...}``.

At startup, once the control socket is bound (so a stop either reaches the daemon or its
record is already there) and before any request is answered, the daemon consumes the records
of its IPs: a record newer than the role's last change (``RoleRecord.changed_at``), or with
no role file, sets the role to stopped. An older one is a stop that a later start overrode.
Synchronous file I/O: the daemon calls these through ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hafloatd.stop_records")

RECORD_PREFIX = "stopped-"
MAX_RECORD_BYTES = 4096


@dataclass(frozen=True)
class StopRecord:
    """One stop the agent could not deliver."""

    ip: str
    stopped_at: float  # Unix time the agent answered the stop
    resource: str | None
    node: str | None


def record_path(directory: str | os.PathLike[str], ip: str) -> Path:
    return Path(directory) / f"{RECORD_PREFIX}{ip}"


def consume(directory: str | os.PathLike[str], ips: Iterable[str]) -> dict[str, StopRecord]:
    """Read and delete the stop records of ``ips`` in ``directory``; return them by IP.

    A record that cannot be read as one is deleted with a log line (it cannot be acted on,
    and left there it would be looked at on every start). Records of other IPs are left
    alone. A missing directory holds no records.
    """
    records: dict[str, StopRecord] = {}
    for ip in ips:
        path = record_path(directory, ip)
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("event=stop_record_unreadable path=%s error=%r", path, exc)
            continue
        try:
            record = parse(raw, ip)
        except ValueError as exc:
            log.warning("event=stop_record_invalid path=%s error=%s", path, exc)
            record = None
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            # Left in place it is read again on the next start, where the role file's newer
            # change will make it moot.
            log.warning("event=stop_record_not_removed path=%s error=%r", path, exc)
        if record is not None:
            records[ip] = record
    return records


def parse(raw: bytes, ip: str) -> StopRecord:
    """The record in ``raw`` (a file named for ``ip``); ValueError when it is not one."""
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"longer than {MAX_RECORD_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("ip") != ip:
        raise ValueError(f"ip {data.get('ip')!r} does not match the file name")
    stopped_at = data.get("stopped_at")
    if isinstance(stopped_at, bool) or not isinstance(stopped_at, int | float):
        raise ValueError("stopped_at is not a number")
    if not math.isfinite(stopped_at) or stopped_at <= 0:
        raise ValueError(f"stopped_at {stopped_at!r} is not a Unix time")
    resource, node = data.get("resource"), data.get("node")
    return StopRecord(
        ip,
        float(stopped_at),
        resource if isinstance(resource, str) else None,
        node if isinstance(node, str) else None,
    )


def stops_the_role(record: StopRecord, changed_at: float | None) -> bool:
    """Whether ``record`` is news: a stop later than the role's last change (or no role)."""
    return changed_at is None or record.stopped_at > changed_at
