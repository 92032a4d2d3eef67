"""Droplet metadata client: who this droplet is, and whether a reserved IP points at it.

The metadata service (``http://169.254.169.254/metadata/v1``) is local, unauthenticated and not
rate limited, so it is the cheap view polled often (DESIGN §4). It is also the only way to learn
the droplet's own id, so the identity is persisted to ``metadata.cache_file`` and used from
there when the service is down at startup. An empty, failed or garbled answer about the reserved
IP is *unknown* (None), never *held*.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Final

import aiohttp

from hafloatd import __version__
from hafloatd.config import MetadataConfig, PathFamily
from hafloatd.deadline import Deadline
from hafloatd.errors import MetadataError
from hafloatd.fsutil import write_atomically
from hafloatd.httpio import read_limited
from hafloatd.logs import describe, kv, one_line
from hafloatd.metrics import Metrics

log = logging.getLogger("hafloatd.metadata")

# Metadata answers are a few bytes; anything larger is not the metadata service.
MAX_ANSWER_BYTES: Final = 4096
CACHE_FORMAT_VERSION: Final = 1
CACHE_FILE_MODE: Final = 0o640
CACHE_DIR_MODE: Final = 0o750


@dataclass(frozen=True)
class DropletIdentity:
    """This droplet, as the metadata service describes it."""

    droplet_id: int
    hostname: str
    region: str
    private_ipv4: str | None


@dataclass(frozen=True)
class ReservedIpView:
    """``reserved_ip/ipv4/{active,ip_address}``; None means unknown (failed, empty, garbled)."""

    active: bool | None
    ip_address: str | None

    def holds(self, ip: str) -> bool | None:
        """True only if active and pointing at ``ip``; False if inactive or another IP;
        None when unknown (no answer, or "active" without an address)."""
        if self.active is None:
            return None
        if not self.active:
            return False
        if self.ip_address is None:
            return None
        return self.ip_address == ip


class _NotFound(Exception):
    """The service answered 404: the key does not exist for this droplet."""


class MetadataClient:
    """Small client of the droplet metadata service with short timeouts and an identity cache."""

    def __init__(
        self,
        config: MetadataConfig,
        *,
        path_family: PathFamily = "reserved_ips",
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._base_url = config.base_url.rstrip("/")
        self._ip_prefix = "reserved_ip" if path_family == "reserved_ips" else "floating_ip"
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._cached: DropletIdentity | None = None
        self._cache_loaded = False
        self._usable: bool | None = None  # did the last reserved-IP answer say anything?

    def __repr__(self) -> str:
        return f"MetadataClient(base_url={self._base_url!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session and load the on-disk identity cache (idempotent)."""
        self._ensure_session()
        await self._load_cache()

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> MetadataClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- identity ----------------------------------------------------------------------------

    async def identity(self, deadline: Deadline) -> DropletIdentity:
        """Fetch the identity and persist it; on failure fall back to the cached identity."""
        try:
            fetched = await self._fetch_identity(deadline)
        except MetadataError as exc:
            await self._load_cache()
            if self._cached is None:
                raise MetadataError(
                    f"{exc}; and no cached identity in {self._config.cache_file}: the daemon "
                    "must reach the metadata service once to learn its droplet id"
                ) from None
            log.warning(
                "event=metadata_identity_from_cache droplet_id=%d cache_file=%s reason=%s",
                self._cached.droplet_id,
                self._config.cache_file,
                kv(str(exc)),
            )
            return self._cached
        previous = self._cached
        if previous is not None and previous.droplet_id != fetched.droplet_id:
            log.warning(
                "event=metadata_identity_changed previous_droplet_id=%d droplet_id=%d",
                previous.droplet_id,
                fetched.droplet_id,
            )
        self._cached = fetched
        self._cache_loaded = True
        if previous != fetched:
            await self._write_cache(fetched)
        return fetched

    def cached_identity(self) -> DropletIdentity | None:
        """The last identity fetched or loaded from the cache file (no I/O)."""
        return self._cached

    async def _fetch_identity(self, deadline: Deadline) -> DropletIdentity:
        # Wait for all four (return_exceptions) so no request outlives this call.
        results = await asyncio.gather(
            self._get("id", deadline),
            self._get("hostname", deadline),
            self._get("region", deadline),
            self._get_optional("interfaces/private/0/ipv4/address", deadline),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                _reraise_cancel(result)
                if isinstance(result, _NotFound):
                    raise MetadataError(
                        f"metadata {self._base_url}/{result} answered 404; check metadata.base_url"
                    )
                raise result
        raw_id, hostname, region = (str(r) for r in results[:3])
        private_ipv4 = results[3] if isinstance(results[3], str) else None
        if not raw_id.isdigit() or int(raw_id) <= 0:
            raise MetadataError(
                f"metadata {self._base_url}/id answered {raw_id[:40]!r}, not a droplet id; "
                "check metadata.base_url"
            )
        if not hostname:
            raise MetadataError(f"metadata {self._base_url}/hostname answered nothing")
        if not region:
            raise MetadataError(f"metadata {self._base_url}/region answered nothing")
        return DropletIdentity(
            droplet_id=int(raw_id),
            hostname=hostname,
            region=region,
            private_ipv4=_ipv4_or_none(private_ipv4),
        )

    # -- reserved IP -------------------------------------------------------------------------

    async def reserved_ip(self, deadline: Deadline) -> ReservedIpView:
        """What the metadata service says about this droplet's reserved IP; never raises."""
        prefix = f"{self._ip_prefix}/ipv4"
        results = await asyncio.gather(
            self._get(f"{prefix}/active", deadline),
            self._get_optional(f"{prefix}/ip_address", deadline),
            return_exceptions=True,
        )
        raw_active, raw_address = results
        active: bool | None = None
        if isinstance(raw_active, BaseException):
            _reraise_cancel(raw_active)
            log.debug("event=metadata_reserved_ip_unknown reason=%s", _reason(raw_active))
            self._note_usable(False, one_line(raw_active))
        elif raw_active in ("true", "false"):
            active = raw_active == "true"
            self._note_usable(True, "")
        else:
            # Debug only: this runs every poll; _note_usable logs the transitions.
            log.debug("event=metadata_reserved_ip_garbled key=active answer=%r", raw_active[:40])
            self._note_usable(
                False, f"{self._base_url}/{prefix}/active answered {raw_active[:40]!r}"
            )
        ip_address: str | None = None
        if isinstance(raw_address, BaseException):
            _reraise_cancel(raw_address)
            log.debug("event=metadata_reserved_ip_address_unknown reason=%s", _reason(raw_address))
        else:
            ip_address = _ipv4_or_none(raw_address)
        return ReservedIpView(active=active, ip_address=ip_address)

    def _note_usable(self, usable: bool, reason: str) -> None:
        """Export whether the service answers about the reserved IP, and log each change (a
        warning when it stops: the cheap view is gone and the freshness bound with it)."""
        if self._metrics is not None:
            self._metrics.metadata_up.set(1 if usable else 0)
        previous, self._usable = self._usable, usable
        if usable is previous:
            return
        if not usable:
            log.warning(
                "event=metadata_unusable reason=%s effect=%s",
                kv(reason),
                kv("who holds the reserved IP comes from the API holder checks alone"),
            )
        elif previous is not None:
            log.info("event=metadata_usable")

    async def holds(self, ip: str, deadline: Deadline) -> bool | None:
        """True only if active and pointing at ``ip``; False if inactive or another IP;
        None when unknown (failure, timeout, empty or garbled answer)."""
        return (await self.reserved_ip(deadline)).holds(ip)

    # -- HTTP --------------------------------------------------------------------------------

    async def _get_optional(self, key: str, deadline: Deadline) -> str | None:
        try:
            return await self._get(key, deadline)
        except _NotFound:
            return None

    async def _get(self, key: str, deadline: Deadline) -> str:
        """One GET of a plain-text key; MetadataError on failure, _NotFound on 404."""
        url = f"{self._base_url}/{key}"
        remaining = deadline.remaining()
        if remaining <= 0:
            raise MetadataError(f"deadline exceeded before metadata {url} could be asked")
        total = min(self._config.timeout, remaining)
        session = self._ensure_session()
        result = "error"
        try:
            async with session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=total, ceil_threshold=float("inf")),
                allow_redirects=False,
            ) as response:
                body = await read_limited(response, MAX_ANSWER_BYTES + 1)
                if response.status == 404:
                    result = "ok"
                    raise _NotFound(key)
                if response.status != 200:
                    raise MetadataError(f"metadata {url} answered HTTP {response.status}")
                if len(body) > MAX_ANSWER_BYTES:
                    raise MetadataError(f"metadata {url} answered more than {MAX_ANSWER_BYTES} B")
                result = "ok"
        except TimeoutError:
            raise MetadataError(f"metadata {url} did not answer within {total:.2f}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise MetadataError(f"metadata {url} unreachable: {describe(exc)}") from None
        finally:
            if self._metrics is not None:
                self._metrics.metadata_requests_total.labels(result=result).inc()
            log.debug("event=metadata_request key=%s result=%s", key, result)
        return body.decode("utf-8", errors="replace").strip()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise MetadataError("metadata client is closed (daemon shutting down)")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=4),
                headers={"User-Agent": f"hafloatd/{__version__}"},
                raise_for_status=False,
            )
        return self._session

    # -- cache file --------------------------------------------------------------------------

    async def _load_cache(self) -> None:
        if self._cache_loaded:
            return
        self._cache_loaded = True
        try:
            loaded = await asyncio.to_thread(_read_cache_file, self._config.cache_file)
        except MetadataError as exc:
            log.warning("event=metadata_cache_unusable reason=%s", kv(str(exc)))
            return
        if loaded is not None and self._cached is None:
            self._cached = loaded
            log.info(
                "event=metadata_cache_loaded droplet_id=%d cache_file=%s",
                loaded.droplet_id,
                self._config.cache_file,
            )

    async def _write_cache(self, identity: DropletIdentity) -> None:
        try:
            await asyncio.to_thread(_write_cache_file, self._config.cache_file, identity)
        except OSError as exc:
            # The identity is still good in memory; only a later cold start loses the fallback.
            log.warning(
                "event=metadata_cache_write_failed cache_file=%s error=%s",
                self._config.cache_file,
                kv(f"{type(exc).__name__}: {exc.strerror or exc}"),
            )
        else:
            log.info(
                "event=metadata_cache_written droplet_id=%d cache_file=%s",
                identity.droplet_id,
                self._config.cache_file,
            )


def _read_cache_file(path: str) -> DropletIdentity | None:
    """The cached identity, None when there is no cache; MetadataError when it is unusable."""
    try:
        with open(path, encoding="utf-8") as handle:
            data: Any = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MetadataError(f"cannot read identity cache {path}: {exc}") from None
    if not isinstance(data, dict):
        raise MetadataError(f"identity cache {path} is not a JSON object; delete it")
    droplet_id = data.get("droplet_id")
    hostname = data.get("hostname")
    region = data.get("region")
    private_ipv4 = data.get("private_ipv4")
    if (
        isinstance(droplet_id, bool)
        or not isinstance(droplet_id, int)
        or droplet_id <= 0
        or not isinstance(hostname, str)
        or not isinstance(region, str)
        or not (private_ipv4 is None or isinstance(private_ipv4, str))
    ):
        raise MetadataError(f"identity cache {path} has missing or mistyped fields; delete it")
    return DropletIdentity(droplet_id, hostname, region, private_ipv4)


def _write_cache_file(path: str, identity: DropletIdentity) -> None:
    """Replace the cache in one step (fsutil.write_atomically); creates its directory.

    0640 in a 0750 directory, like the role files (roles.py): the daemon and its group only,
    as docs/systemd.md promises for every file the daemon writes (fchmod ignores the umask)."""
    payload = dict(asdict(identity), version=CACHE_FORMAT_VERSION, fetched_at=int(time.time()))
    content = (json.dumps(payload, sort_keys=True) + "\n").encode("utf-8")
    write_atomically(path, content, mode=CACHE_FILE_MODE, dir_mode=CACHE_DIR_MODE)


def _ipv4_or_none(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


def _reraise_cancel(exc: BaseException) -> None:
    if not isinstance(exc, Exception):
        raise exc


def _reason(exc: BaseException) -> str:
    return kv(one_line(exc))
