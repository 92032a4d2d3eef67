"""What the DigitalOcean API answers, as values: the public value types and the parsing and
validation of response bodies into them.

Owns ``ReservedIp``, ``Action``, ``AssignResult`` and ``RateLimit``; the ``Reply`` record every
request yields (status, parsed JSON, a one-line excerpt, headers, request id), built from an
answer the token has been masked out of (``mask_secret``); and the parsers that turn a reply
into a value or raise ApiError naming the malformed field. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from multidict import CIMultiDict, CIMultiDictProxy

from hafloatd.errors import ApiError
from hafloatd.logs import one_line

# Longest error body excerpt quoted in a message.
BODY_EXCERPT_CHARS: Final = 200


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
class Reply:
    """One HTTP answer, read in full: what the parsers and the error mapping look at."""

    status: int
    body: object  # parsed JSON, or None when empty or not JSON
    excerpt: str  # the body as text, shortened, one line: for messages
    headers: CIMultiDictProxy[str]
    request_id: str | None
    what: str  # "GET /v2/reserved_ips/203.0.113.10"


ECHO_ADVICE: Final = (
    "the answer echoed the API token (a proxy on the path?); masked in every message; "
    "rotate the token if the answer came from anywhere but DigitalOcean"
)


def mask_secret(
    raw: bytes, headers: CIMultiDictProxy[str], secret: str
) -> tuple[bytes, CIMultiDictProxy[str], bool]:
    """The answer with every copy of ``secret`` (the token an edge proxy or a broken API could
    echo back) replaced by ``***`` in the body and the headers, before any of it can reach a
    message; and whether there was one."""
    needle = secret.encode()
    if not secret or (needle not in raw and not any(secret in v for v in headers.values())):
        return raw, headers, False
    masked = CIMultiDict((name, value.replace(secret, "***")) for name, value in headers.items())
    return raw.replace(needle, b"***"), CIMultiDictProxy(masked), True


def make_reply(status: int, raw: bytes, headers: CIMultiDictProxy[str], what: str) -> Reply:
    text = raw.decode("utf-8", errors="replace")
    body: object = None
    if text.strip():
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            body = None
    request_id = headers.get("x-request-id")
    if isinstance(body, dict) and isinstance(body.get("request_id"), str):
        request_id = body["request_id"]
    return Reply(
        status=status,
        body=body,
        excerpt=one_line(text)[:BODY_EXCERPT_CHARS],
        headers=headers,
        request_id=request_id,
        what=what,
    )


def parse_reserved_ip(reply: Reply, object_key: str) -> ReservedIp:
    """``{object_key: {...}}`` (``reserved_ip`` or ``floating_ip``) -> ReservedIp."""
    body = _object(reply.body, reply, "response")
    item = _object(body.get(object_key), reply, object_key)
    ip = item.get("ip")
    if not isinstance(ip, str):
        raise malformed(reply, f"{object_key}.ip is not a string")
    region_slug: str | None = None
    region = item.get("region")
    if isinstance(region, dict):
        slug = region.get("slug")
        if slug is not None and not isinstance(slug, str):
            raise malformed(reply, f"{object_key}.region.slug is not a string")
        region_slug = slug
    elif region is not None:
        raise malformed(reply, f"{object_key}.region is not an object")
    droplet_id: int | None = None
    droplet = item.get("droplet")
    if isinstance(droplet, dict):
        # The spec's "unassigned" variant is a (nullable) object without an id.
        if "id" in droplet:
            droplet_id = _int_field(droplet, "id", reply, f"{object_key}.droplet")
    elif droplet is not None:
        raise malformed(reply, f"{object_key}.droplet is neither null nor an object")
    locked = item.get("locked", False)
    if not isinstance(locked, bool):
        raise malformed(reply, f"{object_key}.locked is not a boolean")
    return ReservedIp(ip=ip, droplet_id=droplet_id, region=region_slug, locked=locked)


def parse_action(reply: Reply) -> Action:
    """``{"action": {...}}`` -> Action."""
    body = _object(reply.body, reply, "response")
    item = _object(body.get("action"), reply, "action")
    status = item.get("status")
    kind = item.get("type")
    if not isinstance(status, str):
        raise malformed(reply, "action.status is not a string")
    if not isinstance(kind, str):
        raise malformed(reply, "action.type is not a string")
    return Action(
        id=_int_field(item, "id", reply, "action"),
        status=status,
        type=kind,
        started_at=_opt_str(item, "started_at", reply, "action"),
        completed_at=_opt_str(item, "completed_at", reply, "action"),
    )


def check_list(reply: Reply, key: str) -> None:
    """A list answer (``GET /v2/reserved_ips``) must carry ``key`` as a list."""
    body = _object(reply.body, reply, "response")
    if not isinstance(body.get(key), list):
        raise malformed(reply, f"{key} is not a list")


def malformed(reply: Reply, problem: str) -> ApiError:
    return ApiError(
        f"malformed response to {reply.what} ({reply.status}): {problem}; body: {reply.excerpt!r}",
        status=reply.status,
        request_id=reply.request_id,
    )


def error_id(reply: Reply) -> str | None:
    """DigitalOcean's error ``id`` (``not_found``, ``unprocessable_entity``...), if any."""
    if isinstance(reply.body, dict) and isinstance(reply.body.get("id"), str):
        return str(reply.body["id"])
    return None


def error_message(reply: Reply) -> str:
    """DigitalOcean's error ``message``, else the body excerpt."""
    if isinstance(reply.body, dict):
        message = reply.body.get("message")
        if isinstance(message, str) and message:
            return message
    return reply.excerpt or "no message"


def _object(value: object, reply: Reply, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        found = "no JSON" if reply.body is None else type(value).__name__
        raise malformed(reply, f"{where} is not an object (got {found})")
    return value


def _int_field(item: Mapping[str, Any], key: str, reply: Reply, where: str) -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise malformed(reply, f"{where}.{key} is not an integer")
    return value


def _opt_str(item: Mapping[str, Any], key: str, reply: Reply, where: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise malformed(reply, f"{where}.{key} is not a string")
    return value
