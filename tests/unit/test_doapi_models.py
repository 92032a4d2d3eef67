"""Parsing API replies (``hafloatd.doapi.models``): hostile bodies are no body, never a crash."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from hafloatd.doapi.models import make_reply


def test_an_absurdly_deep_api_body_is_no_body_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # json.loads raises RecursionError on this
    reply = make_reply(200, deep, CIMultiDictProxy(CIMultiDict()), "GET /v2/reserved_ips/x")
    assert reply.body is None
    assert reply.excerpt.startswith("[[[")
