"""DigitalOcean API client: one warm aiohttp session for the daemon's life (DESIGN §5).

Owns every request hafloatd sends to ``api.digitalocean.com``: reserved-IP lookups, assign and
unassign actions, action polling and the keep-warm request. Every call takes a ``Deadline`` and
never outlives it. Failures are sorted into classes, as DigitalOcean's own tools do:

- retried with jittered exponential backoff inside the deadline: 429, 5xx, timeouts and
  connection errors (``retry-after`` and ``ratelimit-reset`` honoured; a wait that would pass the
  deadline fails at once with ApiUnavailable instead of sleeping past it);
- waited out, then retried: 422 "pending event" (the IP is ``locked`` while an action runs);
- final at once: 401/403 (ApiAuthError), 404 (ApiNotFound), other 422 (ApiRejected).

A POST whose fate is unknown (timeout, reset or 5xx after it went out) is never re-sent blindly:
the holder is checked first (GET), and only an IP that still points elsewhere gets a new POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace, TracebackType
from typing import Any, Final, Literal

import aiohttp
from multidict import CIMultiDictProxy

from hafloatd import __version__
from hafloatd.config import ApiConfig
from hafloatd.deadline import Deadline
from hafloatd.errors import (
    ActionFailed,
    ApiAuthError,
    ApiError,
    ApiNotFound,
    ApiRejected,
    ApiUnavailable,
    DeadlineExceeded,
)
from hafloatd.metrics import Metrics
from hafloatd.token import ApiToken

log = logging.getLogger("hafloatd.doapi")

Endpoint = Literal["get_reserved_ip", "post_action", "get_action", "list_reserved_ips"]
RetryReason = Literal[
    "rate_limited", "server_error", "timeout", "connection_error", "pending_event", "unknown_fate"
]

# Backoff for retryable failures: equal jitter around base * 2**n, capped.
BACKOFF_BASE_S: Final = 0.2
BACKOFF_CAP_S: Final = 5.0
# Below this much time left an attempt cannot succeed; give up instead of sending it.
MIN_ATTEMPT_S: Final = 0.05
# Action polling slows down gently after the first seconds (rate limit: 250 requests/minute).
ACTION_POLL_GROWTH: Final = 1.15
ACTION_POLL_MAX_S: Final = 2.0
# After an action lookup 404, this many unlocked polls showing the wrong holder mean failure.
HOLDER_MISMATCH_POLLS: Final = 3
# Longest error body excerpt quoted in a message.
BODY_EXCERPT_CHARS: Final = 200

_SCOPE_BY_ENDPOINT: Final[dict[str, str]] = {
    "get_reserved_ip": "reserved_ip:read",
    "list_reserved_ips": "reserved_ip:read",
    "post_action": "reserved_ip:update",
    "get_action": "actions:read (or reserved_ip:read for per-IP action lookups)",
}


@dataclass(frozen=True)
class ReservedIp:
    """``GET /v2/reserved_ips/{ip}``: who holds the IP; ``locked`` while an action runs."""

    ip: str
    droplet_id: int | None
    region: str | None
    locked: bool


@dataclass(frozen=True)
class Action:
    """A DigitalOcean action; any status but ``completed``/``errored`` counts as pending."""

    id: int
    status: str
    type: str
    started_at: str | None
    completed_at: str | None

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def errored(self) -> bool:
        return self.status == "errored"

    @property
    def pending(self) -> bool:
        return not (self.completed or self.errored)


@dataclass(frozen=True)
class AssignResult:
    """``action`` to follow with ``wait_action``; or ``None`` with ``already_held`` True when a
    GET confirmed the IP already points at the droplet (no action to follow)."""

    action: Action | None
    already_held: bool


@dataclass
class RateLimit:
    """The ``ratelimit-*`` headers of the last response; ``reset_at`` is Unix time."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None


@dataclass(frozen=True)
class Observation:
    """The last authoritative view of a reserved IP and when it was taken (monotonic)."""

    reserved_ip: ReservedIp
    at: float

    def age(self) -> float:
        return time.monotonic() - self.at


@dataclass(frozen=True)
class _Reply:
    status: int
    body: object  # parsed JSON, or None when empty or not JSON
    excerpt: str  # the body as text, shortened, one line: for messages
    headers: CIMultiDictProxy[str]
    request_id: str | None
    what: str  # "GET /v2/reserved_ips/203.0.113.10"


class _TransportFailure(Exception):
    """No HTTP answer: ``sent`` False when the request surely never reached the server."""

    def __init__(self, reason: RetryReason, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.reason: RetryReason = reason
        self.detail = detail
        self.sent = sent


class DoApiClient:
    """The daemon's one DigitalOcean API session; safe to share between controllers."""

    def __init__(
        self, config: ApiConfig, token: ApiToken, *, metrics: Metrics | None = None
    ) -> None:
        self._config = config
        self._token = token
        self._metrics = metrics
        self._base_url = config.base_url.rstrip("/")
        self._family = config.path_family
        self._object_key = "reserved_ip" if self._family == "reserved_ips" else "floating_ip"
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._start_lock = asyncio.Lock()
        self._rng = random.Random()
        self._seen: dict[str, Observation] = {}
        self.token_valid: bool | None = None
        self.rate_limit = RateLimit()
        self.connections_opened = 0

    def __repr__(self) -> str:
        return f"DoApiClient(base_url={self._base_url!r}, path_family={self._family!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session (idempotent); the first request opens it too."""
        await self._ensure_session()

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> DoApiClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- public operations -----------------------------------------------------------------

    async def get_reserved_ip(self, ip: str, deadline: Deadline) -> ReservedIp:
        """The authoritative holder of ``ip`` (retried within the deadline)."""
        path = self._ip_path(ip)
        reply = await self._call("get_reserved_ip", "GET", path, deadline)
        if reply.status != 200:
            self._raise_for_status("get_reserved_ip", reply, subject=f"reserved IP {ip}")
        reserved = _parse_reserved_ip(reply, self._object_key)
        self._seen[reserved.ip] = Observation(reserved, time.monotonic())
        return reserved

    def last_seen(self, ip: str) -> Observation | None:
        """The last ``ReservedIp`` any call of this client saw for ``ip``, with its age."""
        return self._seen.get(ip)

    async def assign(
        self,
        ip: str,
        droplet_id: int,
        deadline: Deadline,
        on_event: Callable[[str], None] | None = None,
        *,
        check_first: bool = False,
    ) -> AssignResult:
        """Point ``ip`` at ``droplet_id``.

        ``on_event("post_sent")`` fires right before the first POST goes out and
        ``on_event("api_accepted")`` on the 201. ``check_first`` GETs the holder before any POST
        (use it when the caller's view is stale): already held means no POST at all.
        """
        if isinstance(droplet_id, bool) or not isinstance(droplet_id, int) or droplet_id <= 0:
            raise ApiRejected(
                f"cannot assign {ip}: droplet id {droplet_id!r} is not a positive int"
            )
        if check_first:
            current = await self.wait_unlocked(ip, deadline)
            if current.droplet_id == droplet_id:
                log.info(
                    "event=api_assign_skipped ip=%s droplet_id=%d reason=already_held",
                    ip,
                    droplet_id,
                )
                return AssignResult(None, True)
        action = await self._post_action(
            ip, {"type": "assign", "droplet_id": droplet_id}, droplet_id, deadline, on_event
        )
        return AssignResult(action, action is None)

    async def unassign(self, ip: str, deadline: Deadline) -> Action | None:
        """Unassign ``ip``; ``None`` when it was already unassigned (confirmed by a GET)."""
        return await self._post_action(ip, {"type": "unassign"}, None, deadline, None)

    async def get_action(
        self, action_id: int, deadline: Deadline, *, ip: str | None = None
    ) -> Action:
        """``GET /v2/actions/{id}``, or the per-IP form (``reserved_ip:read`` scope) with ``ip``."""
        if ip is None:
            path = f"/v2/actions/{int(action_id)}"
        else:
            path = f"{self._ip_path(ip)}/actions/{int(action_id)}"
        reply = await self._call("get_action", "GET", path, deadline)
        if reply.status != 200:
            self._raise_for_status("get_action", reply, subject=f"action {action_id}")
        return _parse_action(reply)

    async def wait_action(
        self,
        action_id: int,
        deadline: Deadline,
        *,
        ip: str | None = None,
        expected_droplet_id: int | None = None,
    ) -> Action:
        """Poll the action every ``action_poll_interval`` until it completes.

        Raises ActionFailed (action id in the message) when it ends ``errored`` and
        DeadlineExceeded when it is still pending at the deadline. When the action cannot be
        looked up (404, e.g. BYOIP) and ``ip`` is given, falls back to GET on the reserved IP
        until it is unlocked and points at ``expected_droplet_id`` (None: unassigned), and
        returns a synthesized completed Action.
        """
        polls = 0
        while True:
            what = f"waiting for action {action_id} to complete"
            try:
                with _explain_deadline(what):
                    action = await self.get_action(action_id, deadline, ip=ip)
            except ApiNotFound:
                if ip is None:
                    raise
                log.info(
                    "event=api_action_not_found action_id=%d ip=%s fallback=holder_check",
                    action_id,
                    ip,
                )
                return await self._confirm_by_holder(ip, action_id, expected_droplet_id, deadline)
            if action.completed:
                return action
            if action.errored:
                where = f" on reserved IP {ip}" if ip else ""
                raise ActionFailed(
                    f"DigitalOcean action {action.id} ({action.type}){where} ended 'errored'; "
                    "see the action in the control panel or GET /v2/actions/"
                    f"{action.id}, then retry",
                    action_id=action.id,
                )
            await self._sleep_within(
                self._poll_delay(polls),
                deadline,
                f"{what} (status {action.status!r})",
            )
            polls += 1

    async def wait_unlocked(self, ip: str, deadline: Deadline) -> ReservedIp:
        """GET ``ip`` until ``locked`` is false (no pending action); return that view."""
        polls = 0
        what = f"waiting for the pending action on reserved IP {ip} to finish (locked)"
        while True:
            with _explain_deadline(what):
                current = await self.get_reserved_ip(ip, deadline)
            if not current.locked:
                return current
            await self._sleep_within(self._poll_delay(polls), deadline, what)
            polls += 1

    async def keep_warm(self, deadline: Deadline) -> None:
        """Cheap authenticated GET: keeps the TLS connection warm and proves the token."""
        path = f"/v2/{self._family}"
        reply = await self._call(
            "list_reserved_ips", "GET", path, deadline, params={"per_page": "1"}
        )
        if reply.status != 200:
            self._raise_for_status("list_reserved_ips", reply, subject="the reserved IP list")
        body = _object(reply.body, reply, "response")
        if not isinstance(body.get(self._family), list):
            raise _malformed(reply, f"{self._family} is not a list")

    # -- actions -----------------------------------------------------------------------------

    async def _post_action(
        self,
        ip: str,
        body: dict[str, Any],
        want_droplet_id: int | None,
        deadline: Deadline,
        on_event: Callable[[str], None] | None,
    ) -> Action | None:
        """POST an action until accepted (Action) or the holder is already as wanted (None)."""
        path = f"{self._ip_path(ip)}/actions"
        kind = body["type"]
        what = f"POST {path} ({kind})"
        attempt = 0
        post_sent_reported = False
        while True:
            attempt += 1
            if not post_sent_reported:
                post_sent_reported = True
                _fire(on_event, "post_sent")
            try:
                reply = await self._attempt("post_action", "POST", path, deadline, json_body=body)
            except _TransportFailure as failure:
                if not failure.sent:
                    await self._backoff_or_fail("post_action", what, attempt, failure, deadline)
                    continue
                # The POST may have been applied: look before sending another.
                self._count_retry("post_action", "unknown_fate")
                log.warning(
                    "event=api_post_fate_unknown ip=%s type=%s attempt=%d reason=%s detail=%s "
                    "next=holder_check",
                    ip,
                    kind,
                    attempt,
                    failure.reason,
                    _kv(failure.detail),
                )
                if await self._holder_is(ip, want_droplet_id, deadline):
                    return None
                await self._backoff_or_fail("post_action", what, attempt, failure, deadline)
                continue

            if 200 <= reply.status < 300:
                _fire(on_event, "api_accepted")
                action = _parse_action(reply)
                log.info(
                    "event=api_action_accepted ip=%s type=%s action_id=%d status=%s attempt=%d",
                    ip,
                    kind,
                    action.id,
                    action.status,
                    attempt,
                )
                return action
            if reply.status == 422:
                message = _error_message(reply)
                if "pending event" in message.lower():
                    self._count_retry("post_action", "pending_event")
                    log.info(
                        "event=api_retry endpoint=post_action ip=%s type=%s attempt=%d "
                        "reason=pending_event message=%s",
                        ip,
                        kind,
                        attempt,
                        _kv(message),
                    )
                    await self.wait_unlocked(ip, deadline)
                    # The droplet (not the IP) may be the busy one: do not hammer it.
                    await self._sleep_within(
                        self._backoff(attempt, base=self._config.action_poll_interval),
                        deadline,
                        f"retrying {kind} of {ip} after a pending event ({message})",
                    )
                    continue
                current = await self.get_reserved_ip(ip, deadline)
                if current.droplet_id == want_droplet_id and not current.locked:
                    log.info(
                        "event=api_action_unneeded ip=%s type=%s droplet_id=%s reason=%s",
                        ip,
                        kind,
                        want_droplet_id,
                        _kv(message),
                    )
                    return None
                if current.locked:
                    self._count_retry("post_action", "pending_event")
                    await self.wait_unlocked(ip, deadline)
                    continue
                holder = current.droplet_id if current.droplet_id is not None else "none"
                hint = (
                    f"; the droplet must be in the IP's region ({current.region or 'unknown'}) "
                    "and hold no other reserved IP"
                    if want_droplet_id is not None
                    else ""
                )
                target = f" to droplet {want_droplet_id}" if want_droplet_id is not None else ""
                raise ApiRejected(
                    f"DigitalOcean refused to {kind} {ip}{target} (422: {_one_line(message)}); "
                    f"current holder {holder}{hint}",
                    status=422,
                    error_id=_error_id(reply),
                    request_id=reply.request_id,
                )
            if _retryable_status(reply.status):
                if reply.status == 429:
                    # A 429 is a refusal before any work: safe to send again after the wait.
                    await self._wait_after_reply("post_action", what, attempt, reply, deadline)
                    continue
                # A 5xx may come from a proxy after DigitalOcean applied the POST.
                await self._wait_after_reply("post_action", what, attempt, reply, deadline)
                if await self._holder_is(ip, want_droplet_id, deadline):
                    return None
                continue
            self._raise_for_status("post_action", reply, subject=f"reserved IP {ip}")

    async def _holder_is(self, ip: str, want_droplet_id: int | None, deadline: Deadline) -> bool:
        """After an unknown-fate POST: wait out any pending action, then compare the holder."""
        current = await self.wait_unlocked(ip, deadline)
        held = current.droplet_id == want_droplet_id
        log.info(
            "event=api_holder_check ip=%s holder=%s wanted=%s result=%s",
            ip,
            current.droplet_id,
            want_droplet_id,
            "as_wanted" if held else "repost",
        )
        return held

    async def _confirm_by_holder(
        self, ip: str, action_id: int, expected_droplet_id: int | None, deadline: Deadline
    ) -> Action:
        polls = 0
        mismatches = 0
        what = f"confirming action {action_id} through the holder of {ip}"
        while True:
            with _explain_deadline(what):
                current = await self.get_reserved_ip(ip, deadline)
            if not current.locked:
                if current.droplet_id == expected_droplet_id:
                    kind = "assign_ip" if expected_droplet_id is not None else "unassign_ip"
                    return Action(action_id, "completed", kind, None, None)
                mismatches += 1
                if mismatches >= HOLDER_MISMATCH_POLLS:
                    raise ActionFailed(
                        f"DigitalOcean action {action_id} cannot be looked up (404) and reserved "
                        f"IP {ip} points at {current.droplet_id or 'no droplet'}, not "
                        f"{expected_droplet_id or 'no droplet'}, with no action pending; retry",
                        action_id=action_id,
                    )
            else:
                mismatches = 0
            await self._sleep_within(self._poll_delay(polls), deadline, what)
            polls += 1

    # -- requests ----------------------------------------------------------------------------

    async def _call(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        deadline: Deadline,
        *,
        params: Mapping[str, str] | None = None,
    ) -> _Reply:
        """An idempotent request, retried on 429/5xx/timeouts/resets inside the deadline."""
        what = f"{method} {path}"
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = await self._attempt(endpoint, method, path, deadline, params=params)
            except _TransportFailure as failure:
                await self._backoff_or_fail(endpoint, what, attempt, failure, deadline)
                continue
            if not _retryable_status(reply.status):
                return reply
            await self._wait_after_reply(endpoint, what, attempt, reply, deadline)

    async def _attempt(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        deadline: Deadline,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> _Reply:
        """One request, bounded by ``request_timeout`` and the deadline; never retried here."""
        what = f"{method} {path}"
        remaining = deadline.remaining()
        if remaining <= MIN_ATTEMPT_S:
            raise DeadlineExceeded(f"deadline exceeded before {what} could be sent")
        session = await self._ensure_session()
        total = min(self._config.request_timeout, remaining)
        timeout = aiohttp.ClientTimeout(
            total=total,
            connect=min(self._config.connect_timeout, total),
            # aiohttp rounds long timeouts up to whole seconds by default: past the deadline.
            ceil_threshold=float("inf"),
        )
        started = time.monotonic()
        code = "0"
        try:
            async with session.request(
                method,
                self._base_url + path,
                json=json_body,
                params=params,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                code = str(response.status)
                reply = _make_reply(response.status, raw, response.headers, what)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ApiError(
                f"TLS certificate verification failed for {self._base_url}: "
                f"{_one_line(str(exc.certificate_error))}; set api.ca_file to the CA that signs "
                "the API's certificate or fix the system trust store"
            ) from None
        except aiohttp.ConnectionTimeoutError as exc:
            raise _TransportFailure(
                "timeout", f"connect timed out after {timeout.connect:.2f}s ({exc})", sent=False
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise _TransportFailure("connection_error", _describe(exc), sent=False) from None
        except TimeoutError:
            raise _TransportFailure(
                "timeout", f"no answer within {total:.2f}s", sent=True
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _TransportFailure("connection_error", _describe(exc), sent=True) from None
        finally:
            elapsed = time.monotonic() - started
            if self._metrics is not None:
                self._metrics.api_requests_total.labels(endpoint=endpoint, code=code).inc()
                self._metrics.api_request_duration_seconds.labels(endpoint=endpoint).observe(
                    elapsed
                )
            log.debug(
                "event=api_request endpoint=%s method=%s path=%s code=%s duration_ms=%d",
                endpoint,
                method,
                path,
                code,
                elapsed * 1000,
            )
        self._observe(reply)
        return reply

    def _observe(self, reply: _Reply) -> None:
        """Track rate-limit headers and whether the token works, from any answer."""
        headers = reply.headers
        limit = _header_int(headers, "ratelimit-limit")
        remaining = _header_int(headers, "ratelimit-remaining")
        reset_at = _header_float(headers, "ratelimit-reset")
        if limit is not None:
            self.rate_limit.limit = limit
        if remaining is not None:
            self.rate_limit.remaining = remaining
        if reset_at is not None:
            self.rate_limit.reset_at = reset_at
        if self._metrics is not None:
            if limit is not None:
                self._metrics.api_ratelimit_limit.set(limit)
            if remaining is not None:
                self._metrics.api_ratelimit_remaining.set(remaining)
        if reply.status in (401, 403):
            self._set_token_valid(False)
        elif reply.status < 500 and reply.status != 429:
            self._set_token_valid(True)

    def _set_token_valid(self, valid: bool) -> None:
        if self.token_valid is not valid:
            log.log(
                logging.INFO if valid else logging.ERROR,
                "api_token_valid valid=%s previous=%s",
                str(valid).lower(),
                "unknown" if self.token_valid is None else str(self.token_valid).lower(),
            )
        self.token_valid = valid
        if self._metrics is not None:
            self._metrics.api_token_valid.set(1 if valid else 0)

    async def _wait_after_reply(
        self, endpoint: Endpoint, what: str, attempt: int, reply: _Reply, deadline: Deadline
    ) -> None:
        """Sleep before retrying a 429/5xx, honouring retry-after and ratelimit-reset."""
        detail = f"{reply.status} {_error_id(reply) or ''}".strip()
        backoff = self._backoff(attempt)
        retry_after = _retry_after(reply.headers)
        if reply.status == 429:
            reason: RetryReason = "rate_limited"
            if retry_after is not None:
                wait, why = max(retry_after, 0.0), f"retry-after {retry_after:g}s"
            else:
                # No retry-after: the hourly quota is spent; a slot frees at ratelimit-reset
                # (when the oldest counted request leaves the rolling hour).
                reset_at = _header_float(reply.headers, "ratelimit-reset")
                remaining = _header_int(reply.headers, "ratelimit-remaining")
                until_reset = reset_at - time.time() if reset_at is not None else 0.0
                if remaining in (0, None) and until_reset > 0:
                    wait, why = until_reset, f"ratelimit-reset in {until_reset:.1f}s"
                else:
                    wait, why = backoff, "backoff"
            if wait + MIN_ATTEMPT_S > deadline.remaining():
                self._give_up(
                    endpoint,
                    f"{what}: DigitalOcean rate limit reached (429): {why} is beyond the "
                    f"{deadline.remaining():.2f}s left of the deadline, not waiting; "
                    f"ratelimit-remaining={self.rate_limit.remaining}",
                    reply,
                )
        else:
            reason = "server_error"
            wait = max(backoff, retry_after or 0.0)
            if wait + MIN_ATTEMPT_S > deadline.remaining():
                self._give_up(
                    endpoint,
                    f"{what}: DigitalOcean answered {detail} ({_one_line(_error_message(reply))}) "
                    f"{attempt} time(s); no time left in the deadline to retry",
                    reply,
                )
        self._log_retry(endpoint, attempt, reason, wait, detail)
        await asyncio.sleep(wait)
        if deadline.remaining() <= MIN_ATTEMPT_S:  # the sleep overran (busy loop)
            self._give_up(
                endpoint,
                f"{what}: DigitalOcean answered {detail} {attempt} time(s); the deadline ran out "
                "before the retry",
                reply,
            )

    async def _backoff_or_fail(
        self,
        endpoint: Endpoint,
        what: str,
        attempt: int,
        failure: _TransportFailure,
        deadline: Deadline,
    ) -> None:
        reason, detail = failure.reason, failure.detail
        wait = self._backoff(attempt)
        if wait + MIN_ATTEMPT_S > deadline.remaining():
            self._give_up(
                endpoint,
                f"{what}: {reason.replace('_', ' ')} ({_one_line(detail)}) after {attempt} "
                f"attempt(s); no time left in the deadline to retry; check connectivity to "
                f"{self._base_url}",
                None,
            )
        self._log_retry(endpoint, attempt, reason, wait, detail)
        await asyncio.sleep(wait)
        if deadline.remaining() <= MIN_ATTEMPT_S:  # the sleep overran (busy loop)
            self._give_up(
                endpoint,
                f"{what}: {reason.replace('_', ' ')} ({_one_line(detail)}) after {attempt} "
                "attempt(s); the deadline ran out before the retry",
                None,
            )

    def _give_up(self, endpoint: Endpoint, message: str, reply: _Reply | None) -> None:
        log.warning("event=api_give_up endpoint=%s message=%s", endpoint, _kv(message))
        raise ApiUnavailable(
            message,
            status=reply.status if reply else None,
            error_id=_error_id(reply) if reply else None,
            request_id=reply.request_id if reply else None,
        )

    def _log_retry(
        self, endpoint: Endpoint, attempt: int, reason: RetryReason, wait: float, detail: str
    ) -> None:
        self._count_retry(endpoint, reason)
        log.warning(
            "event=api_retry endpoint=%s attempt=%d reason=%s wait_ms=%d detail=%s",
            endpoint,
            attempt,
            reason,
            wait * 1000,
            _kv(detail),
        )

    def _count_retry(self, endpoint: Endpoint, reason: RetryReason) -> None:
        if self._metrics is not None:
            self._metrics.api_retries_total.labels(endpoint=endpoint, reason=reason).inc()

    def _backoff(self, attempt: int, *, base: float = BACKOFF_BASE_S) -> float:
        """Equal jitter: half the exponential step fixed, half random (attempt counts from 1)."""
        step = min(BACKOFF_CAP_S, base * 2.0 ** (attempt - 1))
        return step / 2 + self._rng.uniform(0, step / 2)

    def _poll_delay(self, polls: int) -> float:
        interval = self._config.action_poll_interval
        return min(max(interval, ACTION_POLL_MAX_S), interval * ACTION_POLL_GROWTH**polls)

    async def _sleep_within(self, seconds: float, deadline: Deadline, what: str) -> None:
        """Sleep, unless the next step would start past the deadline: then DeadlineExceeded."""
        if seconds + MIN_ATTEMPT_S > deadline.remaining():
            raise DeadlineExceeded(f"deadline exceeded while {what}")
        await asyncio.sleep(seconds)

    def _raise_for_status(self, endpoint: Endpoint, reply: _Reply, *, subject: str) -> None:
        status = reply.status
        error_id = _error_id(reply)
        message = _one_line(_error_message(reply))
        kwargs: dict[str, Any] = {
            "status": status,
            "error_id": error_id,
            "request_id": reply.request_id,
        }
        if status == 401:
            raise ApiAuthError(
                f"{reply.what}: DigitalOcean refused the API token (401 {message}): it is "
                "missing, wrong, expired or revoked; install a valid token as the systemd "
                "credential do-token (or api.token_file) and restart hafloatd",
                **kwargs,
            )
        if status == 403:
            scope = _SCOPE_BY_ENDPOINT.get(endpoint, "reserved_ip:update")
            raise ApiAuthError(
                f"{reply.what}: DigitalOcean denied the API token (403 {message}): it lacks the "
                f"{scope} scope; create a token with reserved_ip:read, reserved_ip:update and "
                "actions:read (or full write access) and install it",
                **kwargs,
            )
        if status == 404:
            raise ApiNotFound(
                f"{reply.what}: {subject} not found (404 {message}); check the address in the "
                "config and that the token belongs to the team that owns it",
                **kwargs,
            )
        if status == 422:
            raise ApiRejected(f"{reply.what}: DigitalOcean refused it (422 {message})", **kwargs)
        if 300 <= status < 400:
            raise ApiError(
                f"{reply.what}: unexpected redirect ({status}) to "
                f"{reply.headers.get('Location', '?')}; check api.base_url",
                **kwargs,
            )
        raise ApiError(f"{reply.what}: unexpected answer {status} ({message})", **kwargs)

    # -- session -----------------------------------------------------------------------------

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ApiError("DigitalOcean API client is closed (daemon shutting down)")
        if self._session is not None:
            return self._session
        async with self._start_lock:
            if self._session is None:
                ssl_context: ssl.SSLContext | bool = True
                if self._base_url.startswith("https://"):
                    # Reading the trust store is file I/O: off the loop.
                    ssl_context = await asyncio.to_thread(self._make_ssl_context)
                else:
                    log.warning(
                        "event=api_insecure_transport base_url=%s note=token_sent_without_tls",
                        self._base_url,
                    )
                if self._closed:
                    raise ApiError("DigitalOcean API client is closed (daemon shutting down)")
                self._session = self._build_session(ssl_context)
                log.info(
                    "event=api_client_started base_url=%s path_family=%s max_connections=%d "
                    "ca_file=%s",
                    self._base_url,
                    self._family,
                    self._config.max_connections,
                    self._config.ca_file or "system",
                )
            return self._session

    def _make_ssl_context(self) -> ssl.SSLContext:
        """Verifying context (certificates and host names); cafile None: the system store."""
        try:
            return ssl.create_default_context(cafile=self._config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ApiError(
                f"api.ca_file: cannot load {self._config.ca_file}: {_describe(exc)}; point it at "
                "a PEM file of the CA that signs the API's certificate"
            ) from None

    def _build_session(self, ssl_context: ssl.SSLContext | bool) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._config.max_connections,
            ssl=ssl_context,
            # Outlive the keep-warm interval so the warm connection is the one reused.
            keepalive_timeout=max(30.0, self._config.keepalive_interval * 2 + 5),
        )
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(self._on_connection_created)
        return aiohttp.ClientSession(
            connector=connector,
            headers={
                "Authorization": f"Bearer {self._token.reveal()}",
                "User-Agent": _user_agent(self._config.user_agent),
                "Accept": "application/json",
            },
            trace_configs=[trace],
            raise_for_status=False,
        )

    async def _on_connection_created(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceConnectionCreateEndParams,
    ) -> None:
        self.connections_opened += 1
        log.debug("event=api_connection_opened total=%d", self.connections_opened)

    def _ip_path(self, ip: str) -> str:
        try:
            address = ipaddress.IPv4Address(ip)
        except ValueError:
            raise ApiError(f"{ip!r} is not an IPv4 address; check ips[].address") from None
        return f"/v2/{self._family}/{address}"


# -- parsing ---------------------------------------------------------------------------------


def _make_reply(status: int, raw: bytes, headers: CIMultiDictProxy[str], what: str) -> _Reply:
    text = raw.decode("utf-8", errors="replace")
    body: object = None
    if text.strip():
        try:
            body = json.loads(text)
        except ValueError:
            body = None
    request_id = headers.get("x-request-id")
    if isinstance(body, dict) and isinstance(body.get("request_id"), str):
        request_id = body["request_id"]
    return _Reply(
        status=status,
        body=body,
        excerpt=_one_line(text)[:BODY_EXCERPT_CHARS],
        headers=headers,
        request_id=request_id,
        what=what,
    )


def _parse_reserved_ip(reply: _Reply, object_key: str) -> ReservedIp:
    body = _object(reply.body, reply, "response")
    item = _object(body.get(object_key), reply, object_key)
    ip = item.get("ip")
    if not isinstance(ip, str):
        raise _malformed(reply, f"{object_key}.ip is not a string")
    region_slug: str | None = None
    region = item.get("region")
    if isinstance(region, dict):
        slug = region.get("slug")
        if slug is not None and not isinstance(slug, str):
            raise _malformed(reply, f"{object_key}.region.slug is not a string")
        region_slug = slug
    elif region is not None:
        raise _malformed(reply, f"{object_key}.region is not an object")
    droplet_id: int | None = None
    droplet = item.get("droplet")
    if isinstance(droplet, dict):
        # The spec's "unassigned" variant is a (nullable) object without an id.
        if "id" in droplet:
            droplet_id = _int_field(droplet, "id", reply, f"{object_key}.droplet")
    elif droplet is not None:
        raise _malformed(reply, f"{object_key}.droplet is neither null nor an object")
    locked = item.get("locked", False)
    if not isinstance(locked, bool):
        raise _malformed(reply, f"{object_key}.locked is not a boolean")
    return ReservedIp(ip=ip, droplet_id=droplet_id, region=region_slug, locked=locked)


def _parse_action(reply: _Reply) -> Action:
    body = _object(reply.body, reply, "response")
    item = _object(body.get("action"), reply, "action")
    status = item.get("status")
    kind = item.get("type")
    if not isinstance(status, str):
        raise _malformed(reply, "action.status is not a string")
    if not isinstance(kind, str):
        raise _malformed(reply, "action.type is not a string")
    return Action(
        id=_int_field(item, "id", reply, "action"),
        status=status,
        type=kind,
        started_at=_opt_str(item, "started_at", reply, "action"),
        completed_at=_opt_str(item, "completed_at", reply, "action"),
    )


def _object(value: object, reply: _Reply, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        found = "no JSON" if reply.body is None else type(value).__name__
        raise _malformed(reply, f"{where} is not an object (got {found})")
    return value


def _int_field(item: Mapping[str, Any], key: str, reply: _Reply, where: str) -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(reply, f"{where}.{key} is not an integer")
    return value


def _opt_str(item: Mapping[str, Any], key: str, reply: _Reply, where: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise _malformed(reply, f"{where}.{key} is not a string")
    return value


def _malformed(reply: _Reply, problem: str) -> ApiError:
    return ApiError(
        f"malformed response to {reply.what} ({reply.status}): {problem}; body: {reply.excerpt!r}",
        status=reply.status,
        request_id=reply.request_id,
    )


def _error_id(reply: _Reply) -> str | None:
    if isinstance(reply.body, dict) and isinstance(reply.body.get("id"), str):
        return str(reply.body["id"])
    return None


def _error_message(reply: _Reply) -> str:
    if isinstance(reply.body, dict):
        message = reply.body.get("message")
        if isinstance(message, str) and message:
            return message
    return reply.excerpt or "no message"


def _retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """``retry-after`` in seconds (DigitalOcean sends seconds; HTTP dates are ignored)."""
    value = _header_float(headers, "retry-after")
    return None if value is None or value < 0 else value


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _user_agent(configured: str) -> str:
    """The configured product token, with hafloatd's version unless it carries its own."""
    return configured if "/" in configured else f"{configured}/{__version__}"


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _kv(text: str) -> str:
    """A log value: bare when it is one word, else double-quoted (logfmt)."""
    flat = _one_line(text)
    if flat and not any(ch in flat for ch in ' "='):
        return flat
    return json.dumps(flat, ensure_ascii=False)


@contextlib.contextmanager
def _explain_deadline(what: str) -> Iterator[None]:
    """Name the wait a poll belonged to when its request could not be sent in time."""
    try:
        yield
    except DeadlineExceeded as exc:
        raise DeadlineExceeded(f"deadline exceeded while {what} ({exc})") from None


def _fire(on_event: Callable[[str], None] | None, event: str) -> None:
    if on_event is None:
        return
    try:
        on_event(event)
    except Exception:
        # A broken observer must not break the assignment it observes.
        log.exception("event=api_on_event_failed event=%s", event)
