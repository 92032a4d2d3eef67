"""The exception tree of hafloatd; each class names the OCF exit code it maps to.

    HafloatdError                    OCF_ERR_GENERIC (1)
    ├── ConfigError                  OCF_ERR_CONFIGURED (6)   bad YAML, bad key, bad value
    │   └── TokenError               OCF_ERR_CONFIGURED (6)   token missing, unreadable, insecure
    ├── DeadlineExceeded             OCF_ERR_GENERIC (1)      the caller's deadline ran out
    ├── ApiError                     OCF_ERR_GENERIC (1)      any DigitalOcean API failure
    │   ├── ApiAuthError             OCF_ERR_PERM (4)         401/403: token wrong or lacks scope
    │   ├── ApiNotFound              OCF_ERR_CONFIGURED (6)   404: no such reserved IP / droplet
    │   ├── ApiRejected              OCF_ERR_GENERIC (1)      422 that waiting cannot fix
    │   ├── ApiUnavailable           OCF_ERR_GENERIC (1)      5xx/429/timeouts/resets, retries spent
    │   └── ActionFailed             OCF_ERR_GENERIC (1)      an action ended "errored"
    ├── MetadataError                OCF_ERR_GENERIC (1)      metadata service unreachable / garbled
    ├── ControlError                 OCF_ERR_GENERIC (1)      control socket: cannot serve / reach
    │   └── ProtocolError            OCF_ERR_ARGS (2)         malformed control request
    └── UnknownIpError               OCF_ERR_INSTALLED (5)    IP not in this daemon's config

Messages say what to do, never contain the API token, and are one line.
"""

from __future__ import annotations

from typing import ClassVar

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_ARGS = 2
OCF_ERR_UNIMPLEMENTED = 3
OCF_ERR_PERM = 4
OCF_ERR_INSTALLED = 5
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7


class HafloatdError(Exception):
    """Base of every error hafloatd raises on purpose."""

    ocf_code: ClassVar[int] = OCF_ERR_GENERIC


class ConfigError(HafloatdError):
    """The configuration is invalid; ``problems`` lists every ``key.path: what is wrong``."""

    ocf_code = OCF_ERR_CONFIGURED

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(self.problems))


class TokenError(ConfigError):
    """The DigitalOcean API token could not be obtained safely."""


class DeadlineExceeded(HafloatdError):
    """The operation did not finish before the caller's deadline."""


class ApiError(HafloatdError):
    """A DigitalOcean API request failed.

    ``status`` is the HTTP status (None for transport errors), ``error_id`` the API's error
    slug (``unprocessable_entity``...), ``request_id`` DigitalOcean's request id when known.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.error_id = error_id
        self.request_id = request_id
        suffix = f" (request_id={request_id})" if request_id else ""
        super().__init__(message + suffix)


class ApiAuthError(ApiError):
    ocf_code = OCF_ERR_PERM


class ApiNotFound(ApiError):
    ocf_code = OCF_ERR_CONFIGURED


class ApiRejected(ApiError):
    """A 422 that waiting for a pending event will not fix (other region, droplet busy...)."""


class ApiUnavailable(ApiError):
    """Retryable failures that outlasted the deadline: 5xx, 429, timeouts, resets."""


class ActionFailed(ApiError):
    """A DigitalOcean action ended with status ``errored``."""

    def __init__(self, message: str, *, action_id: int, request_id: str | None = None) -> None:
        self.action_id = action_id
        super().__init__(message, request_id=request_id)


class MetadataError(HafloatdError):
    """The droplet metadata service gave no usable answer."""


class ControlError(HafloatdError):
    """The control socket could not be created (server) or reached (client)."""


class ProtocolError(ControlError):
    """A control request was malformed."""

    ocf_code = OCF_ERR_ARGS


class UnknownIpError(HafloatdError):
    """The reserved IP is not among this daemon's configured ``ips``."""

    ocf_code = OCF_ERR_INSTALLED
