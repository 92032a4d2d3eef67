"""The simulated API's answers as bytes on the wire: JSON bodies and DigitalOcean's error shape.

DigitalOcean's errors are ``{"id": slug, "message": text, "request_id": id}`` with the slug and
text below per status; the request id is the ``x-request-id`` header of the same answer.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

JSON_CONTENT_TYPE = "application/json"
ERROR_IDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "server_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}
ERROR_MESSAGES = {
    401: "Unable to authenticate you",
    403: "You are not authorized to perform this operation",
    404: "The resource you were accessing could not be found.",
    405: "Method not allowed",
    429: "API rate limit exceeded.",
    500: "Unexpected server-side error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


def json_response(status: int, payload: Any) -> web.Response:
    """Compact JSON, ``application/json; charset=utf-8``, as DigitalOcean answers."""
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type=JSON_CONTENT_TYPE,
        charset="utf-8",
    )


def error_response(status: int, error_id: str, message: str, request_id: str) -> web.Response:
    return json_response(status, {"id": error_id, "message": message, "request_id": request_id})


def status_response(status: int, request_id: str) -> web.Response:
    """The generic error answer for ``status`` (401, 429, an injected 503...)."""
    return error_response(status, ERROR_IDS.get(status, "error"), message(status), request_id)


def message(status: int) -> str:
    return ERROR_MESSAGES.get(status, "The request could not be processed.")
