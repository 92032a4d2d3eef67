"""SIGHUP: re-read the configuration file and apply what can change without a restart.

A reload always ends in ``READY=1`` (systemd waits for it), with the outcome in ``STATUS=``:

- a file the loader rejects (``ConfigError``) changes nothing: ``reload rejected``;
- a file that is good is applied: the logging level, ``health:`` (the probe is started,
  reconfigured or stopped), ``control:``, ``pacemaker:`` and ``ips:`` (controllers added,
  removed, or given their new settings). ``api``, ``metadata``, ``metrics``, ``state_dir``
  and ``control.socket_path`` need a restart: the old values stay in force and are logged;
- anything else going wrong while applying is a bug: it is logged with its traceback, what
  was applied is put back (every step compares with what is running, so applying the old
  configuration again undoes it) and the status says ``reload failed``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

from hafloatd.config import Config, HealthConfig, IpConfig, load_config
from hafloatd.control.server import ControlServer
from hafloatd.errors import ConfigError
from hafloatd.logs import one_line, setup_logging
from hafloatd.pacemaker import PacemakerNotifier
from hafloatd.probe import HealthProbe
from hafloatd.sdnotify import SdNotifier

__all__ = ["RESTART_ONLY", "ConfigReloader", "ReloadTarget", "apply_config", "in_force"]

log = logging.getLogger("hafloatd.reload")

# Sections read once at startup: a reload keeps the running values (and says so).
RESTART_ONLY = ("api", "metadata", "metrics", "state_dir")
REJECTED = "reload rejected: kept the old config"
FAILED = "reload failed: kept the old config"


class ReloadableIp(Protocol):
    """What a reload changes on a running controller."""

    ip_config: IpConfig
    probe: HealthProbe | None


class ReloadTarget(Protocol):
    """What a reload needs of the daemon: its components, and making or dropping them."""

    config: Config
    probe: HealthProbe | None
    control: ControlServer | None
    pacemaker: PacemakerNotifier | None

    @property
    def controllers(self) -> Mapping[str, ReloadableIp]: ...

    def add_controller(self, ip_config: IpConfig) -> None: ...

    async def remove_controller(self, address: str) -> None: ...

    async def start_probe(self, config: HealthConfig) -> HealthProbe: ...

    def status_line(self, extra: str | None = None) -> str: ...


class ConfigReloader:
    """Runs one reload at a time against ``target`` (a second SIGHUP waits for the first)."""

    def __init__(self, target: ReloadTarget, config_path: str, notifier: SdNotifier) -> None:
        self._target = target
        self._config_path = config_path
        self._notifier = notifier
        self._lock = asyncio.Lock()

    async def reload(self) -> bool:
        """Re-read and apply the file; True when the new configuration is in force."""
        async with self._lock:
            self._notifier.reloading()
            outcome: str | None = FAILED
            announce = True
            try:
                outcome = await self._reload()
            except asyncio.CancelledError:
                announce = False  # shutting down: STOPPING=1 is out, READY=1 would contradict it
                raise
            except Exception:
                log.exception("event=reload_failed")
            finally:
                if announce:
                    self._notifier.ready(self._target.status_line(outcome))
            return outcome is None

    async def _reload(self) -> str | None:
        """None once the file is in force, else the outcome for ``STATUS=``."""
        target = self._target
        try:
            loaded = await asyncio.to_thread(load_config, self._config_path)
        except ConfigError as exc:
            log.error("event=reload_rejected error=%s", one_line(exc))
            return REJECTED
        old = target.config
        new, kept = in_force(old, loaded)
        if kept:
            log.warning(
                "event=reload_partial kept_old=%s hint='systemctl restart hafloatd to apply'",
                ",".join(kept),
            )
        try:
            await apply_config(target, new)
        except Exception:
            log.exception("event=reload_failed action=restoring_the_old_config")
            await _restore(target, old)
            return FAILED
        log.info(
            "event=reloaded ips=%s health=%s level=%s",
            ",".join(target.controllers),
            "on" if new.health else "off",
            new.logging.level,
        )
        return None


def in_force(old: Config, new: Config) -> tuple[Config, list[str]]:
    """What of ``new`` a reload puts in force (restart-only settings kept from ``old``), and
    the names of the restart-only settings that differ. ``status`` shows what is in force."""
    kept = [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]
    if old.control.socket_path != new.control.socket_path:
        kept.append("control.socket_path")
    if not kept:
        return new, kept
    effective = dataclasses.replace(
        new,
        api=old.api,
        metadata=old.metadata,
        metrics=old.metrics,
        state_dir=old.state_dir,
        control=dataclasses.replace(new.control, socket_path=old.control.socket_path),
    )
    return effective, kept


async def apply_config(target: ReloadTarget, new: Config) -> None:
    """Make ``target`` run ``new``, each step compared with what is running (idempotent)."""
    setup_logging(new.logging.level)
    await _apply_health(target, new.health)
    if target.control is not None:
        target.control.reconfigure(new.control)
    if target.pacemaker is not None:
        target.pacemaker.reconfigure(new.pacemaker)
    await _apply_ips(target, new.ips)
    target.config = new


async def _apply_health(target: ReloadTarget, new: HealthConfig | None) -> None:
    probe = target.probe
    if (probe.config if probe is not None else None) == new:
        return
    if new is None:
        assert probe is not None
        target.probe = None
        await probe.stop()
    elif probe is None:
        target.probe = await target.start_probe(new)
    else:
        probe.reconfigure(new)
    for controller in target.controllers.values():
        controller.probe = target.probe


async def _apply_ips(target: ReloadTarget, ips: Iterable[IpConfig]) -> None:
    wanted = {entry.address: entry for entry in ips}
    for address in [address for address in target.controllers if address not in wanted]:
        await target.remove_controller(address)
    for address, entry in wanted.items():
        existing = target.controllers.get(address)
        if existing is None:
            target.add_controller(entry)
            log.info("event=ip_added ip=%s", address)
        elif existing.ip_config != entry:
            existing.ip_config = entry


async def _restore(target: ReloadTarget, old: Config) -> None:
    try:
        await apply_config(target, old)
    except Exception:
        # Each step that could be undone was; what is left is in the journal above.
        log.exception("event=reload_restore_failed")
    else:
        log.warning("event=reload_restored")
