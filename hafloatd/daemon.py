"""The daemon's lifecycle: wiring, startup, the wait for a stop, shutdown, signals, exit codes.

``run()`` -> ``serve()`` -> ``startup()`` / wait / ``shutdown()``, uvicorn's shape. Every
component and background task is entered on one ``contextlib.AsyncExitStack`` as it starts,
so ``shutdown()`` undoes exactly what was started, in reverse: stop accepting control
connections (in-flight operations get ``SHUTDOWN_GRACE_S``), cancel the background tasks,
close the controllers, the probe, Pacemaker notification, the clients, the metrics server.
What a request does is ``dispatch``; the loops are ``watch``; SIGHUP is ``reload``.

``serve()`` returns the exit code (docs/operations.md, "Exit codes of the daemon"):
``EXIT_OK`` 0 stopped by SIGTERM/SIGINT (during startup too: then without ``READY=1``);
``EXIT_STARTUP`` 1 startup failed (metadata, control socket...: systemd retries);
``EXIT_SOFTWARE`` 70 an essential task crashed (a bug: systemd restarts the daemon);
``EXIT_CONFIG`` 78 configuration or token error (the unit does not restart it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from hafloatd import __version__, watch
from hafloatd.config import (
    DEFAULT_PATH,
    Config,
    HealthConfig,
    IpConfig,
    budget_warnings,
    load_config,
)
from hafloatd.control.server import ControlServer
from hafloatd.controller import IpController
from hafloatd.deadline import Deadline
from hafloatd.dispatch import Dispatcher, apply_stop_records
from hafloatd.doapi import DoApiClient
from hafloatd.errors import ConfigError, HafloatdError
from hafloatd.logs import kv, one_line, redact_secret, setup_logging
from hafloatd.metadata import DropletIdentity, MetadataClient
from hafloatd.metrics import Metrics
from hafloatd.pacemaker import PacemakerNotifier
from hafloatd.probe import HealthProbe, HealthState
from hafloatd.reload import ConfigReloader
from hafloatd.roles import RoleStore
from hafloatd.sdnotify import SdNotifier
from hafloatd.token import LoadedToken, load_token

if TYPE_CHECKING:
    from hafloatd.metrics_server import MetricsServer

__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_SOFTWARE",
    "EXIT_STARTUP",
    "Daemon",
    "loop_factory",
    "run",
]

log = logging.getLogger("hafloatd.daemon")

EXIT_OK = 0
EXIT_STARTUP = 1
EXIT_SOFTWARE = 70  # EX_SOFTWARE: a bug; Restart=on-failure brings the daemon back
EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus keeps it from looping
SHUTDOWN_GRACE_S = 3.0
_TASK_CANCEL_TIMEOUT_S = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=DEFAULT_PATH, help="configuration file")


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hafloatd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.logging.level)
    return run(config, args.config)


def run(config: Config, config_path: str, environ: Mapping[str, str] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; return the process exit code."""
    daemon = Daemon(config, config_path, environ=dict(os.environ if environ is None else environ))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(daemon.serve())


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when importable, plain asyncio otherwise (no global policy change)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:  # pragma: no cover - uvloop is a dependency; fallback for odd platforms
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class Daemon:
    """Owns every component and background task for the daemon's life."""

    def __init__(
        self,
        config: Config,
        config_path: str,
        *,
        environ: Mapping[str, str],
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.environ = environ
        self.metrics = metrics or Metrics()
        self.metrics.build_info.info({"version": __version__, "python": sys.version.split()[0]})
        self.notifier = SdNotifier(environ)
        self.controllers: dict[str, IpController] = {}
        self.roles = RoleStore(config.state_dir, self.metrics)
        self.token: LoadedToken | None = None
        self.api: DoApiClient | None = None
        self.metadata: MetadataClient | None = None
        self.identity: DropletIdentity | None = None
        self.probe: HealthProbe | None = None
        self.pacemaker: PacemakerNotifier | None = None
        self.control: ControlServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.dispatcher = Dispatcher(self.controllers, config_path=config_path, status=self.status)
        self.started_at = time.time()
        self._reloader = ConfigReloader(self, config_path, self.notifier)
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self._ready = False
        self._stopping = False
        self._crashed: str | None = None  # the essential task that died: exit 70

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> int:
        """Start, announce READY=1, wait for a signal or a crash, shut down; the exit code."""
        self._install_signal_handlers()
        try:
            code = await self._serve()
        finally:
            await self.shutdown()
        return EXIT_SOFTWARE if self._crashed is not None else code

    async def _serve(self) -> int:
        try:
            started = await self._start_unless_stopped()
        except ConfigError as exc:
            log.error("event=startup_failed error=%s", one_line(exc))
            return EXIT_CONFIG
        except (HafloatdError, OSError) as exc:
            log.error("event=startup_failed error=%s", one_line(exc))
            return EXIT_STARTUP
        except Exception:
            log.exception("event=startup_crashed")
            return EXIT_SOFTWARE
        if not started:
            return EXIT_OK  # or 70, when a crash was the stop (serve() checks)
        self._ready = True
        self.notifier.ready(self.status_line())
        log.info(
            "event=ready droplet_id=%s ips=%s socket=%s metrics=%s",
            self.identity.droplet_id if self.identity else None,
            ",".join(self.controllers),
            self.config.control.socket_path,
            self.config.metrics.listen,
        )
        await self._stop.wait()
        return EXIT_OK

    async def _start_unless_stopped(self) -> bool:
        """``startup()``, unless a stop (signal, crash) comes first: then it is cancelled where
        it is (waiting for metadata...) and False means "never announce READY=1"."""
        startup = asyncio.create_task(self.startup(), name="startup")
        stopped = asyncio.create_task(self._stop.wait(), name="stop-requested")
        try:
            await asyncio.wait({startup, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not startup.done():
                startup.cancel()
                await asyncio.wait({startup}, timeout=_TASK_CANCEL_TIMEOUT_S)
        if not startup.done() or startup.cancelled():
            log.info("event=startup_interrupted")  # shutdown() closes what it had started
            return False
        startup.result()  # what startup raised, if it did
        return not self._stop.is_set()

    async def startup(self) -> None:
        """Start every component, entering each on the exit stack (see ``shutdown``)."""
        config, stack = self.config, self._stack
        self.token = await asyncio.to_thread(load_token, config.api, self.environ)
        stack.callback(redact_secret(self.token.token.reveal()))
        log.info("event=token_loaded source=%s", self.token.source)
        for warning in budget_warnings(config):
            log.warning("event=api_over_budget warning=%s", kv(warning))
        if config.metrics.listen:
            await self._start_metrics_server(config.metrics.listen)
        self.api = api = DoApiClient(config.api, self.token.token, metrics=self.metrics)
        stack.push_async_callback(self._quietly, "api", api.close)
        await api.start()
        self.metadata = metadata = MetadataClient(
            config.metadata, path_family=config.api.path_family, metrics=self.metrics
        )
        stack.push_async_callback(self._quietly, "metadata", metadata.close)
        await metadata.start()
        self.identity = await metadata.identity(Deadline.after(3 * config.metadata.timeout))
        log.info(
            "event=identity droplet_id=%s hostname=%s region=%s",
            self.identity.droplet_id,
            self.identity.hostname,
            self.identity.region,
        )
        self.pacemaker = PacemakerNotifier(config.pacemaker, metrics=self.metrics)
        stack.push_async_callback(self._quietly, "pacemaker", self.pacemaker.close)
        stack.push_async_callback(self._quietly, "probe", self._stop_probe)
        if config.health is not None:
            self.probe = await self.start_probe(config.health)
        stack.push_async_callback(self._quietly, "controllers", self._close_controllers)
        for ip_config in config.ips:
            self.add_controller(ip_config)
        # Learn who holds the IPs before anyone can ask: a monitor answered from no view at
        # all fails ("cannot confirm"), and Pacemaker would move the IP after a mere restart.
        await watch.poll_metadata(metadata, config.metadata, self.controllers)
        stack.push_async_callback(self._cancel_tasks)
        self._spawn(
            watch.metadata_loop(metadata, config.metadata, self.controllers), "metadata-poll"
        )
        self._spawn(watch.holder_check_loop(config.api, self.controllers), "holder-check")
        self._spawn(watch.keep_warm_loop(api, config.api), "keep-warm")
        if self.notifier.watchdog_interval() is not None:
            self._spawn(self.notifier.run_watchdog(self._healthy), "watchdog")
        self.control = control = ControlServer(
            config.control, self.dispatcher, metrics=self.metrics
        )
        await control.start()
        stack.push_async_callback(
            self._quietly, "control", functools.partial(control.close, grace=SHUTDOWN_GRACE_S)
        )
        await apply_stop_records(self.controllers, config.control.socket_path)
        self.dispatcher.open()

    async def shutdown(self) -> None:
        """Undo what ``startup`` did, in reverse; safe after a failed or interrupted startup,
        and a no-op the second time."""
        if self._stopping:
            return
        self._stopping = True
        self._stop.set()
        self.notifier.stopping()
        log.info("event=stopping")
        await self._stack.aclose()
        log.info("event=stopped")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Daemon]:
        """``startup()`` on entry, ``shutdown()`` on the way out whatever happened."""
        try:
            await self.startup()
            yield self
        finally:
            await self.shutdown()

    async def reload(self) -> bool:
        """SIGHUP: re-read the file and apply it (see ``hafloatd.reload``); always READY=1."""
        return await self._reloader.reload()

    def request_stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ components

    async def _start_metrics_server(self, listen: str) -> None:
        # Imported here: aiohttp's server stack costs memory a daemon without metrics never uses.
        from hafloatd.metrics_server import MetricsServer  # noqa: PLC0415

        server = MetricsServer(self.metrics, listen, self._healthy)
        await server.start()
        self.metrics_server = server
        self._stack.push_async_callback(self._quietly, "metrics server", server.close)

    def add_controller(self, ip_config: IpConfig) -> None:
        assert self.api is not None and self.metadata is not None and self.identity is not None
        self.controllers[ip_config.address] = IpController(
            ip_config,
            api=self.api,
            api_config=self.config.api,
            metadata=self.metadata,
            metadata_config=self.config.metadata,
            identity=self.identity,
            roles=self.roles,
            metrics=self.metrics,
            probe=self.probe,
            on_health_failure=self._notify_pacemaker,
        )

    async def remove_controller(self, address: str) -> None:
        controller = self.controllers.pop(address)
        log.warning("event=ip_removed ip=%s role=%s", address, controller.role.value)
        await controller.close()

    async def start_probe(self, config: HealthConfig) -> HealthProbe:
        """A started health probe whose loop is supervised like the daemon's own."""
        probe = HealthProbe(config, metrics=self.metrics, on_change=self._on_health_change)
        await probe.start()
        if probe.task is not None:
            probe.task.add_done_callback(functools.partial(self._task_done, "probe", True))
        return probe

    async def _stop_probe(self) -> None:
        if self.probe is not None:
            await self.probe.stop()

    async def _close_controllers(self) -> None:
        for controller in list(self.controllers.values()):
            await controller.close()
        await self.roles.close()

    def _notify_pacemaker(self, resource: str, node: str, reason: str) -> None:
        if self.pacemaker is not None:
            self.pacemaker.fire(resource, node, reason)

    def _on_health_change(self, old: HealthState, new: HealthState) -> None:
        for controller in list(self.controllers.values()):
            controller.on_health_change(old, new)
        self.notifier.status(self.status_line())

    @staticmethod
    async def _quietly(name: str, close: Callable[[], Awaitable[None]]) -> None:
        """Run one shutdown step; a failure is logged and the rest of the shutdown goes on."""
        try:
            await close()
        except Exception:
            log.exception("event=shutdown_step_failed step=%s", name.replace(" ", "_"))

    # ------------------------------------------------------------------ tasks

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, essential: bool = True) -> None:
        """Start a task the daemon owns until shutdown cancels it. An essential one that ends
        is a bug: the daemon stops and exits 70. A one-shot task (reload) is dropped when done."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(functools.partial(self._task_done, name, essential))

    def _task_done(self, name: str, essential: bool, task: asyncio.Task[Any]) -> None:
        if not essential and task in self._tasks:
            self._tasks.remove(task)
        if task.cancelled():
            return
        error = task.exception()
        if not essential or self._stopping:
            if error is not None:
                log.error("event=task_failed task=%s", name, exc_info=error)
            return
        reason = "raised" if error is not None else "returned"
        log.critical("event=task_crashed task=%s how=%s exit=70", name, reason, exc_info=error)
        if self._crashed is None:
            self._crashed = name
        self._stop.set()

    async def _cancel_tasks(self) -> None:
        """Cancel the owned tasks, newest first, each given a bounded time to unwind."""
        while self._tasks:
            task = self._tasks.pop()
            task.cancel()
            _done, pending = await asyncio.wait({task}, timeout=_TASK_CANCEL_TIMEOUT_S)
            if pending:
                log.error("event=task_cancel_timeout task=%s", task.get_name())

    def _healthy(self) -> bool:
        return self._crashed is None and not self._stop.is_set()

    # ------------------------------------------------------------------ state

    def status(self) -> dict[str, object]:
        """The ``status`` reply: the daemon, its API client and each IP."""
        api = self.api
        rate = api.rate_limit if api else None
        identity = self.identity
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            # Every task on the loop, this request's own included: flat over a long run
            # (bench/soak checks it does not grow).
            "tasks": len(asyncio.all_tasks()),
            "droplet": {
                "id": identity.droplet_id if identity else None,
                "hostname": identity.hostname if identity else None,
                "region": identity.region if identity else None,
            },
            "api": {
                "base_url": self.config.api.base_url,
                "path_family": self.config.api.path_family,
                "token_source": self.token.source if self.token else None,
                "token_valid": api.token_valid if api else None,
                "ratelimit_limit": rate.limit if rate else None,
                "ratelimit_remaining": rate.remaining if rate else None,
                "ratelimit_reset": rate.reset_at if rate else None,
                "requests_last_hour": api.requests_last_hour if api else None,
                "hourly_budget": self.config.api.hourly_budget,
                "connections_opened": api.connections_opened if api else None,
            },
            "health": self.probe.snapshot() if self.probe else None,
            "ips": [controller.status() for controller in self.controllers.values()],
        }

    def status_line(self, extra: str | None = None) -> str:
        """The one line for ``STATUS=`` (``systemctl status``)."""
        parts = []
        for controller in self.controllers.values():
            view = controller.holder_view()
            held = {True: "here", False: "elsewhere", None: "unknown"}[view.held_here]
            parts.append(f"{controller.ip} role={controller.role.value} holder={held}")
        if self.probe is not None:
            parts.append(f"health={self.probe.state.value}")
        if extra:
            parts.append(extra)
        return "; ".join(parts) or "no reserved IPs configured"

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_terminate, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_terminate(self, signum: int) -> None:
        if self._stop.is_set():
            if signum == signal.SIGINT:  # a second Ctrl-C from a person: leave now
                log.warning("event=forced_exit signal=SIGINT")
                os._exit(1)
            return  # a repeated SIGTERM: the bounded shutdown is already under way
        log.info("event=signal signal=%s", signal.Signals(signum).name)
        self._stop.set()

    def _on_sighup(self) -> None:
        if not self._ready or self._stopping:
            # systemd sends no reload before READY=1; startup reads the file anyway.
            log.warning(
                "event=signal signal=SIGHUP ignored=%s", "stopping" if self._ready else "starting"
            )
            return
        log.info("event=signal signal=SIGHUP")
        self._spawn(self.reload(), "reload", essential=False)
