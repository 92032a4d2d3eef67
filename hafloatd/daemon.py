"""Wiring and lifecycle: loop factory, signals, sd_notify, reload, bounded shutdown.

``run()`` -> ``serve()`` -> ``startup()`` / main loop / ``shutdown()``, uvicorn's shape. The
shutdown is two-phase: stop accepting control connections and let in-flight operations finish
within a bound, then cancel what is left.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from hafloatd import __version__, stop_records
from hafloatd.config import DEFAULT_PATH, Config, HealthConfig, IpConfig, load_config
from hafloatd.control.protocol import ControlReply, ControlRequest
from hafloatd.control.server import ControlServer
from hafloatd.controller import IpController
from hafloatd.deadline import Deadline
from hafloatd.doapi import DoApiClient
from hafloatd.errors import (
    OCF_ERR_INSTALLED,
    OCF_NOT_RUNNING,
    OCF_SUCCESS,
    ConfigError,
    HafloatdError,
)
from hafloatd.metadata import DropletIdentity, MetadataClient
from hafloatd.metrics import Metrics
from hafloatd.metrics_server import MetricsServer
from hafloatd.pacemaker import PacemakerNotifier
from hafloatd.probe import HealthProbe, HealthState
from hafloatd.roles import RoleStore
from hafloatd.sdnotify import SdNotifier
from hafloatd.token import LoadedToken, load_token

log = logging.getLogger("hafloatd.daemon")

EXIT_CONFIG = 78  # EX_CONFIG: systemd's RestartPreventExitStatus keeps it from looping
SHUTDOWN_GRACE_S = 3.0
# Reply this much before the caller's deadline so the answer reaches the agent in time.
REPLY_MARGIN_S = 0.05


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


class KeyValueFormatter(logging.Formatter):
    """``level=info logger=hafloatd.x event=...``: journald adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())
        line = f"level={record.levelname.lower()} logger={record.name} {message}"
        if record.exc_info:
            exc = record.exc_info[1]
            line += f" exc={type(exc).__name__}:{' '.join(str(exc).split())!r}"
        return line


class RedactFilter(logging.Filter):
    """Last line of defence: no log line ever carries the token, whatever formatted it."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret and self.secret in record.getMessage():
            record.msg = record.getMessage().replace(self.secret, "***")
            record.args = ()
        return True


def setup_logging(level: str) -> None:
    root = logging.getLogger("hafloatd")
    if not any(getattr(h, "_hafloatd", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(KeyValueFormatter())
        handler._hafloatd = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())


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
        self._tasks: list[asyncio.Task[Any]] = []
        self._essential: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        # Set once stop records are applied: no request is answered from a role they change.
        self._answering = asyncio.Event()
        self._force_exit = False
        self._reload_lock = asyncio.Lock()
        self._redact: RedactFilter | None = None
        self.started_at = time.time()

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> int:
        self._install_signal_handlers()
        try:
            await self.startup()
        except HafloatdError as exc:
            log.error("event=startup_failed error=%s", " ".join(str(exc).split()))
            await self.shutdown()
            return EXIT_CONFIG if isinstance(exc, ConfigError) else 1
        except OSError as exc:
            log.error("event=startup_failed error=%s", " ".join(str(exc).split()))
            await self.shutdown()
            return 1
        self.notifier.ready(self._status_line())
        log.info(
            "event=ready droplet_id=%s ips=%s socket=%s metrics=%s",
            self.identity.droplet_id if self.identity else None,
            ",".join(self.controllers),
            self.config.control.socket_path,
            self.config.metrics.listen,
        )
        await self._stop.wait()
        await self.shutdown()
        return 0

    async def startup(self) -> None:
        config = self.config
        self.token = await asyncio.to_thread(load_token, config.api, self.environ)
        self._redact = RedactFilter(self.token.token.reveal())
        for handler in logging.getLogger("hafloatd").handlers:
            handler.addFilter(self._redact)
        log.info("event=token_loaded source=%s", self.token.source)
        if config.metrics.listen:
            self.metrics_server = MetricsServer(self.metrics, config.metrics.listen, self._healthy)
            await self.metrics_server.start()
        self.api = DoApiClient(config.api, self.token.token, metrics=self.metrics)
        await self.api.start()
        self.metadata = MetadataClient(
            config.metadata, path_family=config.api.path_family, metrics=self.metrics
        )
        await self.metadata.start()
        self.identity = await self.metadata.identity(Deadline.after(3 * config.metadata.timeout))
        log.info(
            "event=identity droplet_id=%s hostname=%s region=%s",
            self.identity.droplet_id,
            self.identity.hostname,
            self.identity.region,
        )
        self.pacemaker = PacemakerNotifier(config.pacemaker, metrics=self.metrics)
        if config.health is not None:
            self.probe = HealthProbe(
                config.health, metrics=self.metrics, on_change=self._on_health_change
            )
            await self.probe.start()
        for ip_config in config.ips:
            self._add_controller(ip_config)
        # Learn who holds the IPs before anyone can ask: a monitor answered from no view at
        # all fails ("cannot confirm"), and Pacemaker would move the IP after a mere restart.
        await self._poll_metadata()
        self.control = ControlServer(config.control, self, metrics=self.metrics)
        await self.control.start()
        await self._apply_stop_records()
        self._answering.set()
        self._spawn(self._metadata_loop(), "metadata-poll")
        self._spawn(self._holder_check_loop(), "holder-check")
        self._spawn(self._keep_warm_loop(), "keep-warm")
        if self.notifier.watchdog_interval() is not None:
            self._spawn(self.notifier.run_watchdog(self._healthy), "watchdog")

    async def shutdown(self) -> None:
        self.notifier.stopping()
        log.info("event=stopping")
        if self.control is not None:
            await self.control.close(grace=SHUTDOWN_GRACE_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._essential.clear()
        for controller in self.controllers.values():
            await controller.close()
        await self.roles.close()
        if self.probe is not None:
            await self.probe.stop()
        if self.pacemaker is not None:
            await self.pacemaker.close()
        for closer in (self.api, self.metadata, self.metrics_server):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer.close()
        if self._redact is not None:
            for handler in logging.getLogger("hafloatd").handlers:
                handler.removeFilter(self._redact)
        log.info("event=stopped")

    def request_stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ control

    async def handle(self, request: ControlRequest) -> ControlReply:
        """The control protocol's dispatcher (DESIGN §7)."""
        await self._answering.wait()
        if request.op == "status":
            return ControlReply(OCF_SUCCESS, "", self.status())
        controller = self.controllers.get(request.ip or "")
        if controller is None:
            return self._unknown_ip_reply(request)
        deadline = request.deadline(margin_s=REPLY_MARGIN_S)  # anchored at receipt
        controller.remember_names(request.resource, request.node)
        if request.op == "start":
            return await controller.start(deadline)
        if request.op == "stop":
            return await controller.stop(deadline)
        if request.op == "monitor":
            return controller.monitor(probe=request.probe)
        return ControlReply(OCF_SUCCESS, "", {"droplet_id": controller.identity.droplet_id})

    def _unknown_ip_reply(self, request: ControlRequest) -> ControlReply:
        known = ", ".join(self.controllers) or "none"
        reason = (
            f"reserved IP {request.ip} is not in {self.config_path} (ips: {known}); add it "
            "under ips: and reload (systemctl reload hafloatd)"
        )
        if request.op == "stop":
            return ControlReply(OCF_SUCCESS, reason)
        if request.op == "monitor" and request.probe:
            return ControlReply(OCF_NOT_RUNNING, reason)
        return ControlReply(OCF_ERR_INSTALLED, reason)

    def status(self) -> dict[str, object]:
        api = self.api
        rate = api.rate_limit if api else None
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started_at, 1),
            "droplet": {
                "id": self.identity.droplet_id if self.identity else None,
                "hostname": self.identity.hostname if self.identity else None,
                "region": self.identity.region if self.identity else None,
            },
            "api": {
                "base_url": self.config.api.base_url,
                "path_family": self.config.api.path_family,
                "token_source": self.token.source if self.token else None,
                "token_valid": api.token_valid if api else None,
                "ratelimit_limit": rate.limit if rate else None,
                "ratelimit_remaining": rate.remaining if rate else None,
                "ratelimit_reset": rate.reset_at if rate else None,
            },
            "health": self.probe.snapshot() if self.probe else None,
            "ips": [controller.status() for controller in self.controllers.values()],
        }

    async def _apply_stop_records(self) -> None:
        """Stops the agent recorded while this daemon was down (see stop_records): run after
        the control socket is bound, so a stop is either recorded by now or reaches us."""
        directory = os.path.dirname(self.config.control.socket_path)
        records = await asyncio.to_thread(stop_records.consume, directory, list(self.controllers))
        for ip, record in records.items():
            controller = self.controllers[ip]
            role_before = controller.role.value
            applied = controller.apply_stop_record(record)  # persisted, like a delivered stop
            log.info(
                "event=stop_record ip=%s stopped_at=%.3f resource=%s node=%s role=%s applied=%s",
                ip,
                record.stopped_at,
                record.resource,
                record.node,
                role_before,
                applied,
            )

    # ------------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """SIGHUP: re-read the file; a bad one is rejected and the old one kept."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                log.error("event=reload_rejected error=%s", " ".join(str(exc).split()))
                self.notifier.ready(self._status_line("reload rejected: kept the old config"))
                return False
            await self._apply(new)
            self.notifier.ready(self._status_line())
            return True

    async def _apply(self, new: Config) -> None:
        old = self.config
        needs_restart = [
            name
            for name in ("api", "metadata", "metrics", "state_dir")
            if getattr(old, name) != getattr(new, name)
        ]
        if old.control.socket_path != new.control.socket_path:
            needs_restart.append("control.socket_path")
        if needs_restart:
            log.warning(
                "event=reload_partial kept_old=%s hint='systemctl restart hafloatd to apply'",
                ",".join(needs_restart),
            )
            # Keep what is really in force, so `status` never shows settings not applied.
            new = dataclasses.replace(
                new,
                api=old.api,
                metadata=old.metadata,
                metrics=old.metrics,
                state_dir=old.state_dir,
                control=dataclasses.replace(new.control, socket_path=old.control.socket_path),
            )
        setup_logging(new.logging.level)
        await self._apply_health(old.health, new.health)
        if self.control is not None:
            self.control.reconfigure(new.control)
        if self.pacemaker is not None:
            self.pacemaker.reconfigure(new.pacemaker)
        new_ips = {entry.address: entry for entry in new.ips}
        for address in list(self.controllers):
            if address not in new_ips:
                controller = self.controllers.pop(address)
                log.warning("event=ip_removed ip=%s role=%s", address, controller.role.value)
                await controller.close()
        for address, entry in new_ips.items():
            existing = self.controllers.get(address)
            if existing is None:
                self._add_controller(entry)
                log.info("event=ip_added ip=%s", address)
            elif existing.ip_config != entry:
                existing.ip_config = entry
        self.config = new
        log.info(
            "event=reloaded ips=%s health=%s level=%s",
            ",".join(self.controllers),
            "on" if new.health else "off",
            new.logging.level,
        )

    async def _apply_health(self, old: HealthConfig | None, new: HealthConfig | None) -> None:
        if old == new:
            return
        if new is None:
            if self.probe is not None:
                await self.probe.stop()
                self.probe = None
        elif self.probe is None:
            self.probe = HealthProbe(new, metrics=self.metrics, on_change=self._on_health_change)
            await self.probe.start()
        else:
            self.probe.reconfigure(new)
        for controller in self.controllers.values():
            controller.probe = self.probe

    # ------------------------------------------------------------------ background

    def _add_controller(self, ip_config: IpConfig) -> None:
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

    def _notify_pacemaker(self, resource: str, node: str, reason: str) -> None:
        if self.pacemaker is not None:
            self.pacemaker.fire(resource, node, reason)

    def _on_health_change(self, old: HealthState, new: HealthState) -> None:
        for controller in list(self.controllers.values()):
            controller.on_health_change(old, new)
        self.notifier.status(self._status_line())

    async def _metadata_loop(self) -> None:
        while True:
            asked_at = time.monotonic()
            await self._poll_metadata()
            interval = self.config.metadata.poll_interval
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - asked_at)))

    async def _poll_metadata(self) -> None:
        """Ask the metadata service once who holds each IP (bounded by its timeout)."""
        assert self.metadata is not None
        asked_at = time.monotonic()
        view = await self.metadata.reserved_ip(Deadline.after(self.config.metadata.timeout))
        for address, controller in list(self.controllers.items()):
            controller.observe_metadata(view.holds(address), asked_at=asked_at)

    async def _holder_check_loop(self) -> None:
        while True:
            for controller in list(self.controllers.values()):
                await controller.refresh_from_api(
                    Deadline.after(2 * self.config.api.request_timeout)
                )
            await asyncio.sleep(self.config.api.holder_check_interval)

    async def _keep_warm_loop(self) -> None:
        assert self.api is not None
        while True:
            await asyncio.sleep(self.config.api.keepalive_interval)
            try:
                await self.api.keep_warm(Deadline.after(2 * self.config.api.request_timeout))
            except HafloatdError as exc:
                log.warning("event=keep_warm_failed error=%s", " ".join(str(exc).split()))

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str, *, essential: bool = True) -> None:
        """Start an owned task. An essential loop that dies stops the daemon (systemd restarts
        it); a one-shot task (reload) is forgotten once done."""
        task = asyncio.get_running_loop().create_task(self._guard(coro, name, essential), name=name)
        self._tasks.append(task)
        if not essential:
            task.add_done_callback(self._tasks.remove)
        else:
            self._essential.append(task)

    async def _guard(self, coro: Coroutine[Any, Any, Any], name: str, essential: bool) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event=task_crashed task=%s", name)
            if essential:
                self.request_stop()

    def _healthy(self) -> bool:
        return all(not t.done() for t in self._essential) and not self._stop.is_set()

    def _status_line(self, extra: str | None = None) -> str:
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

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()

        def on_terminate(signum: int) -> None:
            if self._stop.is_set():
                if signum == signal.SIGINT:  # a second Ctrl-C from a person: leave now
                    log.warning("event=forced_exit signal=SIGINT")
                    os._exit(1)
                return  # a repeated SIGTERM: the bounded shutdown is already under way
            log.info("event=signal signal=%s", signal.Signals(signum).name)
            self._stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_terminate, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        log.info("event=signal signal=SIGHUP")
        self._spawn(self.reload(), "reload", essential=False)
