"""The loops that keep each controller's view of the holder fresh, and the API connection warm.

``metadata_loop`` asks the local metadata service who holds the reserved IP (cheap, often);
``holder_check_loop`` asks the API (authoritative, slow cadence), and its requests keep the
connection the next POST will reuse warm; ``keep_warm_loop`` sends a cheap GET only when
nothing else has used the API for ``api.keepalive_interval`` (with the defaults, never: the
holder check comes first), so an idle daemon spends the holder checks' requests and no more
(docs/configuration.md, "The request budget"). Each runs until cancelled: the daemon owns the
tasks. A failure a loop expects (the service slow, down or garbled) only lets a view go
stale; anything escaping a loop is a bug, and the daemon exits 70 for systemd to restart it.

The loops see the controllers as ``HolderObserver``s, through the daemon's live mapping (a
reload adds and removes IPs between rounds). Their settings (``api``, ``metadata``) need a
restart to change, so each loop keeps the values it was started with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from hafloatd.config import ApiConfig, MetadataConfig
from hafloatd.deadline import Deadline
from hafloatd.doapi import DoApiClient
from hafloatd.errors import HafloatdError
from hafloatd.logs import one_line
from hafloatd.metadata import MetadataClient

__all__ = [
    "HolderObserver",
    "holder_check_loop",
    "keep_warm_loop",
    "metadata_loop",
    "poll_metadata",
]

log = logging.getLogger("hafloatd.watch")


class HolderObserver(Protocol):
    """What the loops need of a controller: take a metadata answer, refresh from the API."""

    def observe_metadata(self, holds: bool | None, *, asked_at: float | None = None) -> None: ...

    async def refresh_from_api(self, deadline: Deadline) -> None: ...


async def poll_metadata(
    metadata: MetadataClient, config: MetadataConfig, observers: Mapping[str, HolderObserver]
) -> None:
    """Ask the metadata service once who holds each IP (bounded by its timeout)."""
    asked_at = time.monotonic()
    view = await metadata.reserved_ip(Deadline.after(config.timeout))
    for address, observer in list(observers.items()):
        observer.observe_metadata(view.holds(address), asked_at=asked_at)


async def metadata_loop(
    metadata: MetadataClient, config: MetadataConfig, observers: Mapping[str, HolderObserver]
) -> None:
    """A poll every ``metadata.poll_interval``, start to start (the daemon polled at startup)."""
    next_poll = time.monotonic() + config.poll_interval
    while True:
        await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
        next_poll = time.monotonic() + config.poll_interval  # a slow answer keeps the cadence
        await poll_metadata(metadata, config, observers)


async def holder_check_loop(config: ApiConfig, observers: Mapping[str, HolderObserver]) -> None:
    """An authoritative API check of every IP, then ``api.holder_check_interval`` of rest."""
    while True:
        for observer in list(observers.values()):
            await observer.refresh_from_api(Deadline.after(2 * config.request_timeout))
        await asyncio.sleep(config.holder_check_interval)


async def keep_warm_loop(api: DoApiClient, config: ApiConfig) -> None:
    """A cheap authenticated GET once the API has been quiet for ``api.keepalive_interval``
    (no request of any kind): the connection stays warm, and no request is spent on it while
    the holder checks (or anything else) use it."""
    while True:
        wait = config.keepalive_interval - api.quiet_for()
        if wait <= 0:
            try:
                await api.keep_warm(Deadline.after(2 * config.request_timeout))
            except HafloatdError as exc:
                log.warning("event=keep_warm_failed error=%s", one_line(exc))
            wait = config.keepalive_interval  # also after a failure: never a tight loop
        await asyncio.sleep(wait)
