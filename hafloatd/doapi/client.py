"""``DoApiClient``: the operations hafloatd performs on reserved IPs through the DigitalOcean API.

Owns what each call means: reserved-IP lookups, assign and unassign actions, action polling
(with a fallback to the holder when an action cannot be looked up), waiting out a ``locked``
IP, and the keep-warm request. Every call takes a ``Deadline`` and never outlives it. The
requests themselves, their retries and the error mapping are the transport's (``transport``).

A POST whose fate is unknown (timeout, reset or 5xx after it went out) is never re-sent blindly:
the holder is checked first (GET), and only an IP that still points elsewhere gets a new POST.
A 422 "pending event" (the IP is ``locked`` while an action runs) is waited out, then retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final

from hafloatd.config import ApiConfig
from hafloatd.deadline import Deadline
from hafloatd.doapi.models import (
    Action,
    AssignResult,
    RateLimit,
    ReservedIp,
    check_list,
    error_id,
    error_message,
    parse_action,
    parse_reserved_ip,
)
from hafloatd.doapi.transport import (
    MIN_ATTEMPT_S,
    ApiTransport,
    TransportFailure,
    raise_for_status,
    retryable_status,
)
from hafloatd.errors import ActionFailed, ApiError, ApiNotFound, ApiRejected, DeadlineExceeded
from hafloatd.logs import kv, one_line
from hafloatd.metrics import Metrics
from hafloatd.token import ApiToken

log = logging.getLogger("hafloatd.doapi")

# Action polling slows down gently after the first seconds (rate limit: 250 requests/minute).
ACTION_POLL_GROWTH: Final = 1.15
ACTION_POLL_MAX_S: Final = 2.0
# After an action lookup 404, this many unlocked polls showing the wrong holder mean failure.
HOLDER_MISMATCH_POLLS: Final = 3


class DoApiClient:
    """The daemon's one DigitalOcean API session; safe to share between controllers."""

    def __init__(
        self, config: ApiConfig, token: ApiToken, *, metrics: Metrics | None = None
    ) -> None:
        self._config = config
        self._family = config.path_family
        self._object_key = "reserved_ip" if self._family == "reserved_ips" else "floating_ip"
        self._transport = ApiTransport(config, token, metrics=metrics)

    def __repr__(self) -> str:
        return f"DoApiClient(base_url={self._transport.base_url!r}, path_family={self._family!r})"

    @property
    def token_valid(self) -> bool | None:
        """None until the first authenticated answer; False after a 401/403."""
        return self._transport.token_valid

    @property
    def rate_limit(self) -> RateLimit:
        """The ``ratelimit-*`` headers of the last answer."""
        return self._transport.rate_limit

    @property
    def connections_opened(self) -> int:
        """TCP(+TLS) connections opened so far: 1 in a healthy steady state."""
        return self._transport.session.connections_opened

    @property
    def requests_last_hour(self) -> int:
        """Requests sent in the last hour (to the minute), every endpoint and attempt."""
        return self._transport.requests_last_hour()

    def quiet_for(self) -> float:
        """Seconds since the last request ended; 0 while one is in flight."""
        return self._transport.session.quiet_for()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session (idempotent); the first request opens it too."""
        await self._transport.session.get()

    async def close(self) -> None:
        await self._transport.session.close()

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
        reply = await self._transport.call("get_reserved_ip", "GET", path, deadline)
        if reply.status != 200:
            raise_for_status("get_reserved_ip", reply, subject=f"reserved IP {ip}")
        return parse_reserved_ip(reply, self._object_key)

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
        reply = await self._transport.call("get_action", "GET", path, deadline)
        if reply.status != 200:
            raise_for_status("get_action", reply, subject=f"action {action_id}")
        return parse_action(reply)

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
        """Cheap authenticated GET: keeps the TLS connection warm and proves the token (the
        daemon sends it only when nothing else has used the connection for a while)."""
        path = f"/v2/{self._family}"
        reply = await self._transport.call(
            "list_reserved_ips", "GET", path, deadline, params={"per_page": "1"}
        )
        if reply.status != 200:
            raise_for_status("list_reserved_ips", reply, subject="the reserved IP list")
        check_list(reply, self._family)

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
        transport = self._transport
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
                reply = await transport.attempt(
                    "post_action", "POST", path, deadline, json_body=body
                )
            except TransportFailure as failure:
                if not failure.sent:
                    await transport.backoff_or_fail("post_action", what, attempt, failure, deadline)
                    continue
                # The POST may have been applied: look before sending another.
                transport.count_retry("post_action", "unknown_fate")
                log.warning(
                    "event=api_post_fate_unknown ip=%s type=%s attempt=%d reason=%s detail=%s "
                    "next=holder_check",
                    ip,
                    kind,
                    attempt,
                    failure.reason,
                    kv(failure.detail),
                )
                if await self._holder_is(ip, want_droplet_id, deadline):
                    return None
                await transport.backoff_or_fail("post_action", what, attempt, failure, deadline)
                continue

            if 200 <= reply.status < 300:
                _fire(on_event, "api_accepted")
                action = parse_action(reply)
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
                message = error_message(reply)
                if "pending event" in message.lower():
                    transport.count_retry("post_action", "pending_event")
                    log.info(
                        "event=api_retry endpoint=post_action ip=%s type=%s attempt=%d "
                        "reason=pending_event message=%s",
                        ip,
                        kind,
                        attempt,
                        kv(message),
                    )
                    current = await self.wait_unlocked(ip, deadline)
                    if current.droplet_id == want_droplet_id:
                        return None  # the pending action put it where wanted
                    # The droplet (not the IP) may be the busy one: do not hammer it.
                    await self._sleep_within(
                        transport.backoff(attempt, base=self._config.action_poll_interval),
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
                        kv(message),
                    )
                    return None
                if current.locked:
                    transport.count_retry("post_action", "pending_event")
                    if (await self.wait_unlocked(ip, deadline)).droplet_id == want_droplet_id:
                        return None
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
                    f"DigitalOcean refused to {kind} {ip}{target} (422: {one_line(message)}); "
                    f"current holder {holder}{hint}",
                    status=422,
                    error_id=error_id(reply),
                    request_id=reply.request_id,
                )
            if retryable_status(reply.status):
                if reply.status == 429:
                    # A 429 is a refusal before any work: safe to send again after the wait.
                    await transport.wait_after_reply("post_action", what, attempt, reply, deadline)
                    continue
                # A 5xx may come from a proxy after DigitalOcean applied the POST.
                await transport.wait_after_reply("post_action", what, attempt, reply, deadline)
                if await self._holder_is(ip, want_droplet_id, deadline):
                    return None
                continue
            raise_for_status("post_action", reply, subject=f"reserved IP {ip}")

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

    # -- polling -----------------------------------------------------------------------------

    def _poll_delay(self, polls: int) -> float:
        interval = self._config.action_poll_interval
        return min(max(interval, ACTION_POLL_MAX_S), interval * ACTION_POLL_GROWTH**polls)

    async def _sleep_within(self, seconds: float, deadline: Deadline, what: str) -> None:
        """Sleep, unless the next step would start past the deadline: then DeadlineExceeded."""
        if seconds + MIN_ATTEMPT_S > deadline.remaining():
            raise DeadlineExceeded(f"deadline exceeded while {what}")
        await asyncio.sleep(seconds)

    def _ip_path(self, ip: str) -> str:
        try:
            address = ipaddress.IPv4Address(ip)
        except ValueError:
            raise ApiError(f"{ip!r} is not an IPv4 address; check ips[].address") from None
        return f"/v2/{self._family}/{address}"


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
