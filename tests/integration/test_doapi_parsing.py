"""DoApiClient on answers DigitalOcean's spec does not promise: garbled bodies, odd statuses.

The simulator only answers what the real API would (its exchanges are contract-checked), so
these tests use a small scripted aiohttp server on 127.0.0.1: each route answers the next
scripted response.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from hafloatd.config import ApiConfig
from hafloatd.deadline import Deadline
from hafloatd.doapi import DoApiClient
from hafloatd.errors import ApiError
from hafloatd.token import ApiToken

IP = "203.0.113.10"
TOKEN = "scripted-token"


@dataclass(frozen=True)
class Answer:
    status: int
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Scripted:
    """Answers queued per (method, path); the last one repeats."""

    url: str = ""
    answers: dict[tuple[str, str], list[Answer]] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)

    def add(self, method: str, path: str, *answers: Answer) -> None:
        self.answers.setdefault((method, path), []).extend(answers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = (request.method, request.path)
        self.seen.append(key)
        queue = self.answers.get(key)
        if not queue:
            return web.Response(status=404, text="{}")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return web.Response(
            status=answer.status,
            text=answer.text,
            content_type=answer.content_type,
            headers=answer.headers,
        )


def body(status: int, payload: Any, **headers: str) -> Answer:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return Answer(status, text, headers)


def action(status: str, action_id: int = 7) -> dict[str, Any]:
    return {
        "action": {
            "id": action_id,
            "status": status,
            "type": "assign_ip",
            "started_at": "2026-01-01T00:00:00Z",
            "completed_at": None,
        }
    }


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    script = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    script.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield script
    finally:
        await runner.cleanup()


@pytest.fixture
async def api(scripted: Scripted) -> AsyncIterator[DoApiClient]:
    config = ApiConfig(base_url=scripted.url, action_poll_interval=0.01, request_timeout=2.0)
    async with DoApiClient(config, ApiToken(TOKEN)) as client:
        yield client


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ("<html>oops</html>", "response is not an object (got no JSON)"),
        ({"reserved_ip": None}, "reserved_ip is not an object"),
        ({"reserved_ip": {"ip": 1}}, "reserved_ip.ip is not a string"),
        ({"reserved_ip": {"ip": IP, "locked": "yes"}}, "reserved_ip.locked is not a boolean"),
        ({"reserved_ip": {"ip": IP, "droplet": {"id": "1001"}}}, "droplet.id is not an integer"),
        ({"reserved_ip": {"ip": IP, "droplet": {"id": True}}}, "droplet.id is not an integer"),
        ({"reserved_ip": {"ip": IP, "droplet": 5}}, "droplet is neither null nor an object"),
        ({"reserved_ip": {"ip": IP, "region": "nyc3"}}, "region is not an object"),
    ],
)
async def test_malformed_reserved_ip_is_an_api_error_naming_the_field(
    scripted: Scripted, api: DoApiClient, payload: Any, problem: str
) -> None:
    scripted.add("GET", f"/v2/reserved_ips/{IP}", body(200, payload))
    with pytest.raises(ApiError) as info:
        await api.get_reserved_ip(IP, Deadline.after(2))
    message = str(info.value)
    assert message.startswith(f"malformed response to GET /v2/reserved_ips/{IP} (200): ")
    assert problem in message
    assert "\n" not in message


async def test_droplet_object_without_id_reads_as_unassigned(
    scripted: Scripted, api: DoApiClient
) -> None:
    payload = {"reserved_ip": {"ip": IP, "droplet": {}, "region": {"slug": "nyc3"}}}
    scripted.add("GET", f"/v2/reserved_ips/{IP}", body(200, payload))
    view = await api.get_reserved_ip(IP, Deadline.after(2))
    assert view.droplet_id is None
    assert view.locked is False


async def test_malformed_action_after_201_is_an_api_error(
    scripted: Scripted, api: DoApiClient
) -> None:
    payload = action("in-progress")
    payload["action"]["id"] = "7"
    scripted.add("POST", f"/v2/reserved_ips/{IP}/actions", body(201, payload))
    with pytest.raises(ApiError, match=r"action\.id is not an integer"):
        await api.assign(IP, 1001, Deadline.after(2))


async def test_unknown_action_status_counts_as_pending(
    scripted: Scripted, api: DoApiClient
) -> None:
    # The API once briefly answered "done": not completed, not errored, so keep polling.
    scripted.add(
        "GET",
        "/v2/actions/7",
        body(200, action("done")),
        body(200, action("in-progress")),
        body(200, action("completed")),
    )
    done = await api.wait_action(7, Deadline.after(2))
    assert done.completed
    assert scripted.seen.count(("GET", "/v2/actions/7")) == 3


async def test_redirect_is_not_followed(scripted: Scripted, api: DoApiClient) -> None:
    scripted.add(
        "GET",
        f"/v2/reserved_ips/{IP}",
        Answer(302, headers={"Location": "https://evil.example/steal"}),
    )
    with pytest.raises(ApiError, match=r"unexpected redirect .*api\.base_url"):
        await api.get_reserved_ip(IP, Deadline.after(2))
    assert scripted.seen == [("GET", f"/v2/reserved_ips/{IP}")]


async def test_error_without_json_body_still_gives_a_one_line_message(
    scripted: Scripted, api: DoApiClient
) -> None:
    scripted.add(
        "GET", f"/v2/reserved_ips/{IP}", Answer(418, "I'm\na teapot", content_type="text/plain")
    )
    with pytest.raises(ApiError) as info:
        await api.get_reserved_ip(IP, Deadline.after(2))
    assert str(info.value) == f"GET /v2/reserved_ips/{IP}: unexpected answer 418 (I'm a teapot)"


async def test_request_id_header_is_quoted_in_errors(scripted: Scripted, api: DoApiClient) -> None:
    scripted.add(
        "GET",
        f"/v2/reserved_ips/{IP}",
        body(404, {"id": "not_found", "message": "nope"}, **{"x-request-id": "req-123"}),
    )
    with pytest.raises(ApiError) as info:
        await api.get_reserved_ip(IP, Deadline.after(2))
    assert info.value.request_id == "req-123"
    assert str(info.value).endswith("(request_id=req-123)")


async def test_garbled_rate_limit_headers_are_ignored(scripted: Scripted, api: DoApiClient) -> None:
    payload = {"reserved_ip": {"ip": IP, "droplet": None}}
    scripted.add(
        "GET",
        f"/v2/reserved_ips/{IP}",
        body(200, payload, **{"ratelimit-limit": "lots", "ratelimit-remaining": "12"}),
    )
    await api.get_reserved_ip(IP, Deadline.after(2))
    assert api.rate_limit.limit is None
    assert api.rate_limit.remaining == 12
