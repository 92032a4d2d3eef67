"""The role Pacemaker last gave each IP, kept across daemon restarts (best effort, never fatal).

The role (``started``/``stopped``) is what monitor answers from, so it must survive a daemon
restart (DESIGN §5). It is persisted as one small JSON file per IP under the state dir:
``{"ip", "role", "changed_at" (Unix time), "resource", "node", "unassign_pending"}`` — the
Pacemaker resource and node names travel with it, so failure notification
(``pacemaker.notify_failures``) is armed again after a restart; ``unassign_pending`` is true
while a stop (``on_stop: unassign``) may have an unassign POST on its way, so a daemon that
died meanwhile knows, once restarted, that the POST may still land (``IpController``).

Persistence never fails an operation: a stop that cannot write its role still succeeded (a
failed stop gets a node fenced). Failures are logged, counted
(``hafloatd_role_persist_failures_total``) and shown by ``hafloatd status``.

Writes for one IP go through one writer task owned by the store, newest record last: a
cancelled caller cannot leave a write running behind a later one, and two writers never race
on a file (``fsutil.write_atomically`` also uses a unique temporary name).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hafloatd.fsutil import write_atomically
from hafloatd.logs import one_line
from hafloatd.metrics import Metrics

log = logging.getLogger("hafloatd.roles")

STATE_DIR_MODE = 0o750
ROLE_FILE_MODE = 0o640


class Role(enum.Enum):
    STARTED = "started"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RoleRecord:
    role: Role
    changed_at: float  # Unix time
    resource: str | None = None
    node: str | None = None
    unassign_pending: bool = False

    def to_json(self, ip: str) -> bytes:
        data = {
            "ip": ip,
            "role": self.role.value,
            "changed_at": self.changed_at,
            "resource": self.resource,
            "node": self.node,
            "unassign_pending": self.unassign_pending,
        }
        return (json.dumps(data) + "\n").encode()


class RoleStore:
    """Role files under ``state_dir``: read synchronously at boot, written by owned tasks."""

    def __init__(self, state_dir: str, metrics: Metrics | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.metrics = metrics
        self._wanted: dict[str, RoleRecord] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._errors: dict[str, str] = {}

    def path(self, ip: str) -> Path:
        return self.state_dir / f"role-{ip}.json"

    def load(self, ip: str) -> RoleRecord:
        """The persisted record; a missing or unreadable file means stopped."""
        stopped = RoleRecord(Role.STOPPED, 0.0)
        try:
            data = json.loads(self.path(ip).read_bytes())
            role = Role(data["role"])
        except FileNotFoundError:
            return stopped
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("event=role_file_unreadable ip=%s path=%s error=%r", ip, self.path(ip), exc)
            return stopped
        changed_at = data.get("changed_at")
        resource, node = data.get("resource"), data.get("node")
        return RoleRecord(
            role,
            float(changed_at) if isinstance(changed_at, int | float) else 0.0,
            resource if isinstance(resource, str) else None,
            node if isinstance(node, str) else None,
            data.get("unassign_pending") is True,
        )

    def schedule(self, ip: str, record: RoleRecord) -> None:
        """Have ``record`` written soon (after any write already under way for ``ip``)."""
        self._wanted[ip] = record
        writer = self._writers.get(ip)
        if writer is None or writer.done():
            self._writers[ip] = asyncio.get_running_loop().create_task(
                self._write_wanted(ip), name=f"role-writer-{ip}"
            )

    async def save(self, ip: str, record: RoleRecord, timeout_s: float) -> bool:
        """Schedule ``record`` and wait up to ``timeout_s`` for it to be on disk.

        Never raises (cancellation aside): False when the write failed or is still under way.
        Cancelling the caller does not cancel the write.
        """
        self.schedule(ip, record)
        return await self.wait_written(ip, timeout_s)

    async def wait_written(self, ip: str, timeout_s: float) -> bool:
        writer = self._writers.get(ip)
        if writer is not None and not writer.done():
            _done, pending = await asyncio.wait({writer}, timeout=timeout_s)
            if pending:
                return False
        return ip not in self._errors and ip not in self._wanted

    def persist_error(self, ip: str) -> str | None:
        """Why the last write of ``ip``'s role failed; None once a write succeeded."""
        return self._errors.get(ip)

    async def close(self) -> None:
        """Let pending writes finish (they are short) before the daemon exits."""
        writers = [task for task in self._writers.values() if not task.done()]
        if writers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*writers, return_exceptions=True)
        for task in writers:
            task.cancel()

    async def _write_wanted(self, ip: str) -> None:
        while ip in self._wanted:
            record = self._wanted.pop(ip)
            try:
                await asyncio.to_thread(
                    write_atomically,
                    self.path(ip),
                    record.to_json(ip),
                    mode=ROLE_FILE_MODE,
                    dir_mode=STATE_DIR_MODE,
                )
            except OSError as exc:
                self._errors[ip] = f"cannot write {self.path(ip)}: {one_line(exc)}"
                log.error(
                    "event=role_persist_failed ip=%s role=%s path=%s error=%s",
                    ip,
                    record.role.value,
                    self.path(ip),
                    one_line(exc),
                )
                if self.metrics is not None:
                    self.metrics.role_persist_failures_total.labels(ip=ip).inc()
            else:
                self._errors.pop(ip, None)
