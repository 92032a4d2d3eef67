"""How a request reaches the DigitalOcean API and when it is sent again (DESIGN §5).

Owns one bounded attempt on the session (``attempt``: timeouts inside the deadline, the
request metrics, failures sorted into ``TransportFailure`` reasons), the retry loop for
idempotent requests (``call``), jittered exponential backoff, the waits for 429s
(``retry-after``, ``ratelimit-reset``), what every answer tells about the rate limit and the
token (``rate_limit``, ``token_valid`` and their gauges), the requests sent in the last hour
(``requests_last_hour``, against ``api.hourly_budget``), and the mapping of final statuses to
exceptions (``raise_for_status``):

- retried inside the deadline: 429, 5xx, timeouts and connection errors; a wait that would
  pass the deadline fails at once with ApiUnavailable instead of sleeping past it;
- final at once: 401/403 (ApiAuthError), 404 (ApiNotFound), 422 (ApiRejected), a TLS
  verification failure or a server that does not speak TLS (ApiError).

An answer that carries the token back has it masked before anything reads it
(``models.mask_secret``, logged as ``api_answer_contained_token``): no message can quote it.

A POST is never retried here: ``attempt`` reports whether a failed request may have reached
the server (``TransportFailure.sent``) and the client decides (see ``client``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
import time
from collections.abc import Mapping
from typing import Any, Final, Literal, NoReturn

import aiohttp

from hafloatd.config import ApiConfig
from hafloatd.deadline import Deadline
from hafloatd.doapi.models import (
    ECHO_ADVICE,
    RateLimit,
    Reply,
    error_id,
    error_message,
    make_reply,
    mask_secret,
)
from hafloatd.doapi.session import ApiSession
from hafloatd.doapi.window import SlidingCount
from hafloatd.errors import (
    ApiAuthError,
    ApiError,
    ApiNotFound,
    ApiRejected,
    ApiUnavailable,
    DeadlineExceeded,
)
from hafloatd.logs import describe, kv, one_line
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

_SCOPE_BY_ENDPOINT: Final[dict[str, str]] = {
    "get_reserved_ip": "reserved_ip:read",
    "list_reserved_ips": "reserved_ip:read",
    "post_action": "reserved_ip:update",
    "get_action": "actions:read (or reserved_ip:read for per-IP action lookups)",
}


class TransportFailure(Exception):
    """No HTTP answer: ``sent`` False when the request surely never reached the server."""

    def __init__(self, reason: RetryReason, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.reason: RetryReason = reason
        self.detail = detail
        self.sent = sent


class ApiTransport:
    """Attempts and retries on the one session; ``DoApiClient`` builds the requests on top."""

    def __init__(
        self, config: ApiConfig, token: ApiToken, *, metrics: Metrics | None = None
    ) -> None:
        self._config = config
        self._metrics = metrics
        self.session = ApiSession(config, token, metrics=metrics)
        self._secret = token.reveal  # only to mask it out of answers (models.mask_secret)
        self.base_url = self.session.base_url
        self._rng = random.Random()
        self.token_valid: bool | None = None
        self.rate_limit = RateLimit()
        self._sent = SlidingCount()  # every request that went out, each attempt counted
        if metrics is not None:
            metrics.api_hourly_budget.set(config.hourly_budget)
            metrics.api_requests_last_hour.set_function(self.requests_last_hour)

    def requests_last_hour(self) -> int:
        """Requests sent in the last hour (to the minute), all endpoints and attempts."""
        return self._sent.count(time.monotonic())

    # -- requests ----------------------------------------------------------------------------

    async def call(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        deadline: Deadline,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        """An idempotent request, retried on 429/5xx/timeouts/resets inside the deadline."""
        what = f"{method} {path}"
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = await self.attempt(endpoint, method, path, deadline, params=params)
            except TransportFailure as failure:
                await self.backoff_or_fail(endpoint, what, attempt, failure, deadline)
                continue
            if not retryable_status(reply.status):
                return reply
            await self.wait_after_reply(endpoint, what, attempt, reply, deadline)

    async def attempt(
        self,
        endpoint: Endpoint,
        method: str,
        path: str,
        deadline: Deadline,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request, bounded by ``request_timeout`` and the deadline; never retried here."""
        what = f"{method} {path}"
        remaining = deadline.remaining()
        if remaining <= MIN_ATTEMPT_S:
            raise DeadlineExceeded(f"deadline exceeded before {what} could be sent")
        session = await self.session.get()
        total = min(self._config.request_timeout, remaining)
        timeout = aiohttp.ClientTimeout(
            total=total,
            connect=min(self._config.connect_timeout, total),
            # aiohttp rounds long timeouts up to whole seconds by default: past the deadline.
            ceil_threshold=float("inf"),
        )
        started = time.monotonic()
        code = "0"
        self._sent.add(started)  # counted as sent: the budget errs on the side of too many
        try:
            with self.session.request_in_flight():
                async with session.request(
                    method,
                    self.base_url + path,
                    json=json_body,
                    params=params,
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    raw = await response.read()
                    code = str(response.status)
                    raw, headers, echoed = mask_secret(raw, response.headers, self._secret())
                    reply = make_reply(response.status, raw, headers, what)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ApiError(
                f"TLS certificate verification failed for {self.base_url}: "
                f"{one_line(str(exc.certificate_error))}; set api.ca_file to the CA that signs "
                "the API's certificate or fix the system trust store"
            ) from None
        except aiohttp.ClientConnectorSSLError as exc:
            if not tls_disagreement(exc):
                raise TransportFailure("connection_error", describe(exc), sent=False) from None
            raise ApiError(
                f"TLS handshake with {self.base_url} failed: {one_line(exc.os_error)}; the "
                "server on that port does not speak TLS (or no TLS version both accept): "
                "check api.base_url (scheme, host and port)"
            ) from None
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransportFailure(
                "timeout", f"connect timed out after {timeout.connect:.2f}s ({exc})", sent=False
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportFailure("connection_error", describe(exc), sent=False) from None
        except TimeoutError:
            raise TransportFailure("timeout", f"no answer within {total:.2f}s", sent=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportFailure("connection_error", describe(exc), sent=True) from None
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
        if echoed:
            log.warning(
                "event=api_answer_contained_token endpoint=%s code=%s action=masked note=%s",
                endpoint, code, kv(ECHO_ADVICE),
            )  # fmt: skip
        self._observe(reply)
        return reply

    # -- retry waits -------------------------------------------------------------------------

    async def wait_after_reply(
        self, endpoint: Endpoint, what: str, attempt: int, reply: Reply, deadline: Deadline
    ) -> None:
        """Sleep before retrying a 429/5xx, honouring retry-after and ratelimit-reset."""
        detail = f"{reply.status} {error_id(reply) or ''}".strip()
        backoff = self.backoff(attempt)
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
                    f"{what}: DigitalOcean answered {detail} ({one_line(error_message(reply))}) "
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

    async def backoff_or_fail(
        self,
        endpoint: Endpoint,
        what: str,
        attempt: int,
        failure: TransportFailure,
        deadline: Deadline,
    ) -> None:
        """Sleep before retrying after a transport failure, or give up if the deadline is near."""
        reason, detail = failure.reason, failure.detail
        wait = self.backoff(attempt)
        if wait + MIN_ATTEMPT_S > deadline.remaining():
            self._give_up(
                endpoint,
                f"{what}: {reason.replace('_', ' ')} ({one_line(detail)}) after {attempt} "
                f"attempt(s); no time left in the deadline to retry; check connectivity to "
                f"{self.base_url}",
                None,
            )
        self._log_retry(endpoint, attempt, reason, wait, detail)
        await asyncio.sleep(wait)
        if deadline.remaining() <= MIN_ATTEMPT_S:  # the sleep overran (busy loop)
            self._give_up(
                endpoint,
                f"{what}: {reason.replace('_', ' ')} ({one_line(detail)}) after {attempt} "
                "attempt(s); the deadline ran out before the retry",
                None,
            )

    def backoff(self, attempt: int, *, base: float = BACKOFF_BASE_S) -> float:
        """Equal jitter: half the exponential step fixed, half random (attempt counts from 1)."""
        step = min(BACKOFF_CAP_S, base * 2.0 ** (attempt - 1))
        return step / 2 + self._rng.uniform(0, step / 2)

    def count_retry(self, endpoint: Endpoint, reason: RetryReason) -> None:
        if self._metrics is not None:
            self._metrics.api_retries_total.labels(endpoint=endpoint, reason=reason).inc()

    def _give_up(self, endpoint: Endpoint, message: str, reply: Reply | None) -> NoReturn:
        log.warning("event=api_give_up endpoint=%s message=%s", endpoint, kv(message))
        raise ApiUnavailable(
            message,
            status=reply.status if reply else None,
            error_id=error_id(reply) if reply else None,
            request_id=reply.request_id if reply else None,
        )

    def _log_retry(
        self, endpoint: Endpoint, attempt: int, reason: RetryReason, wait: float, detail: str
    ) -> None:
        self.count_retry(endpoint, reason)
        log.warning(
            "event=api_retry endpoint=%s attempt=%d reason=%s wait_ms=%d detail=%s",
            endpoint,
            attempt,
            reason,
            wait * 1000,
            kv(detail),
        )

    # -- what every answer tells -------------------------------------------------------------

    def _observe(self, reply: Reply) -> None:
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
                "event=api_token_valid valid=%s previous=%s",
                str(valid).lower(),
                "unknown" if self.token_valid is None else str(self.token_valid).lower(),
            )
        self.token_valid = valid
        if self._metrics is not None:
            self._metrics.api_token_valid.set(1 if valid else 0)


def raise_for_status(endpoint: Endpoint, reply: Reply, *, subject: str) -> NoReturn:
    """The exception a final (non-retryable, non-2xx) answer means, with what to do about it."""
    status = reply.status
    message = one_line(error_message(reply))
    kwargs: dict[str, Any] = {
        "status": status,
        "error_id": error_id(reply),
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


def tls_disagreement(exc: aiohttp.ClientConnectorSSLError) -> bool:
    """A handshake the peer answered with something else than the TLS we speak (a plain-HTTP
    server, a protocol version neither accepts): retrying cannot help. A connection cut
    during the handshake (EOF, reset) is a transport failure like any other, retried."""
    cut = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ConnectionError)
    return not isinstance(exc.os_error, cut)


def retryable_status(status: int) -> bool:
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
