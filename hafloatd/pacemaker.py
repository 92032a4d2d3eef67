"""Telling Pacemaker at once that a resource failed: ``crm_resource --fail``.

Opt-in (``pacemaker.notify_failures``). When the health probe goes DOWN while this node holds
the role, the daemon fails the resource immediately so failover does not wait for the next
recurring monitor. The command runs without a shell, with a bounded timeout, killed on
timeout, its stderr folded into one log line. Resource and node names come from the OCF
environment through control requests, so they are checked against Pacemaker's id syntax
(``hafloatd.control.protocol``, on receipt and again here) before they reach an argv (no
option injection: nothing may start with ``-``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Mapping

from hafloatd.config import TOKEN_ENV_VAR, PacemakerConfig
from hafloatd.control.protocol import is_valid_node_name, is_valid_resource_id
from hafloatd.logs import one_line
from hafloatd.metrics import Metrics

log = logging.getLogger("hafloatd.pacemaker")

DEFAULT_TIMEOUT_S = 10.0
# After SIGKILL the process is gone within milliseconds; this only bounds a pathological wait.
_REAP_TIMEOUT_S = 2.0
_STDERR_LOG_CHARS = 500


class PacemakerNotifier:
    """Runs ``crm_resource --fail`` for health failures; owns the tasks it schedules."""

    def __init__(
        self,
        config: PacemakerConfig,
        *,
        metrics: Metrics | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._config = config
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._tasks: dict[tuple[str, str], asyncio.Task[bool]] = {}
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self._config.notify_failures

    def reconfigure(self, config: PacemakerConfig) -> None:
        """Apply a reloaded ``pacemaker:`` section; in-flight notifications keep the old one."""
        if config != self._config:
            log.info(
                "event=pacemaker_reconfigured notify_failures=%s crm_resource=%s",
                config.notify_failures,
                config.crm_resource,
            )
        self._config = config

    def fire(self, resource: str, node: str, reason: str) -> asyncio.Task[bool] | None:
        """Schedule ``notify_failure`` without waiting for it.

        Returns the task (or None when disabled or closed). A notification already in flight
        for the same resource and node is reused rather than doubled: a flapping probe must not
        fork a crm_resource per check.
        """
        if self._closed or not self.enabled:
            return None
        key = (resource, node)
        running = self._tasks.get(key)
        if running is not None and not running.done():
            return running
        task = asyncio.get_running_loop().create_task(
            self.notify_failure(resource, node, reason),
            name=f"hafloatd-pacemaker-notify-{resource}",
        )
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._forget, key))
        return task

    async def notify_failure(self, resource: str, node: str, reason: str) -> bool:
        """Run ``crm_resource --fail --resource R --node N``; True when it exited 0.

        Never raises for a failed command: failures are logged and counted, since the caller
        (a probe transition) has nothing better to do than carry on.
        """
        config = self._config
        if not config.notify_failures:
            log.debug("event=pacemaker_notify_skipped reason=disabled resource=%s", resource)
            return False
        if not is_valid_resource_id(resource) or not is_valid_node_name(node):
            log.error(
                "event=pacemaker_notify_refused resource=%r node=%r "
                "error='not a valid Pacemaker resource id / node name'",
                resource,
                node,
            )
            self._count("error")
            return False
        argv = [config.crm_resource, "--fail", "--resource", resource, "--node", node]
        started = time.monotonic()
        try:
            returncode, stdout, stderr = await self._run(argv)
        except FileNotFoundError:
            log.error(
                "event=pacemaker_notify_failed resource=%s node=%s error='%s not found: install "
                "pacemaker-cli-utils or set pacemaker.crm_resource'",
                resource,
                node,
                config.crm_resource,
            )
            self._count("error")
            return False
        except PermissionError:
            log.error(
                "event=pacemaker_notify_failed resource=%s node=%s error='%s is not executable "
                "by the daemon user'",
                resource,
                node,
                config.crm_resource,
            )
            self._count("error")
            return False
        except TimeoutError:
            log.error(
                "event=pacemaker_notify_failed resource=%s node=%s error='crm_resource did not "
                "finish within %.1fs and was killed' reason=%r",
                resource,
                node,
                self._timeout_s,
                reason,
            )
            self._count("error")
            return False
        except OSError as exc:
            log.error(
                "event=pacemaker_notify_failed resource=%s node=%s error=%r",
                resource,
                node,
                f"cannot run {config.crm_resource}: {exc}",
            )
            self._count("error")
            return False
        duration_ms = round((time.monotonic() - started) * 1000)
        if returncode == 0:
            log.warning(
                "event=pacemaker_notified resource=%s node=%s reason=%r duration_ms=%d",
                resource,
                node,
                reason,
                duration_ms,
            )
            self._count("ok")
            return True
        log.error(
            "event=pacemaker_notify_failed resource=%s node=%s rc=%d duration_ms=%d "
            "stderr=%r stdout=%r",
            resource,
            node,
            returncode,
            duration_ms,
            _excerpt(stderr),
            _excerpt(stdout),
        )
        self._count("error")
        return False

    async def close(self, grace: float = 2.0) -> None:
        """Stop scheduling; let in-flight notifications finish within ``grace``, then cancel."""
        self._closed = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel("hafloatd shutting down")
        if pending:
            # Cancellation kills the child and reaps it, which is itself bounded.
            await asyncio.wait(pending, timeout=_REAP_TIMEOUT_S + 1.0)

    async def _run(self, argv: list[str]) -> tuple[int, bytes, bytes]:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_child_environment(os.environ),
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                stdout, stderr = await process.communicate()
        finally:
            # Timeout or cancellation: never leave a crm_resource behind.
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                try:
                    async with asyncio.timeout(_REAP_TIMEOUT_S):
                        await process.wait()
                except TimeoutError:
                    log.error("event=pacemaker_notify_reap_failed pid=%d", process.pid)
        returncode = process.returncode
        assert returncode is not None
        return returncode, stdout, stderr

    def _forget(self, key: tuple[str, str], task: asyncio.Task[bool]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("event=pacemaker_notify_crashed error=%r", task.exception())

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.pacemaker_notifications_total.labels(result=result).inc()


def _child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    # The token may sit in our environment (token_source env) or point at a credential dir;
    # crm_resource needs neither.
    dropped = {TOKEN_ENV_VAR, "CREDENTIALS_DIRECTORY"}
    env = {key: value for key, value in environ.items() if key not in dropped}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C"  # stable, parseable messages in the log
    return env


def _excerpt(output: bytes) -> str:
    """A child's output for the log: its lines joined with `` | ``, cut to a bounded length."""
    lines = output.decode("utf-8", errors="replace").splitlines()
    return one_line(" | ".join(line for line in lines if line.strip()), limit=_STDERR_LOG_CHARS)


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PacemakerNotifier",
    "is_valid_node_name",
    "is_valid_resource_id",
]
