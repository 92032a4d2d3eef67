"""Parsing API replies (``hafloatd.doapi.models``): hostile bodies are no body, never a crash."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from hafloatd.doapi.models import make_reply, mask_secret


def test_an_absurdly_deep_api_body_is_no_body_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000  # json.loads raises RecursionError on this
    reply = make_reply(200, deep, CIMultiDictProxy(CIMultiDict()), "GET /v2/reserved_ips/x")
    assert reply.body is None
    assert reply.excerpt.startswith("[[[")


def test_an_echoed_token_is_masked_in_the_body_and_the_headers() -> None:
    secret = "dop_v1_" + "ab12" * 16
    headers = CIMultiDictProxy(CIMultiDict({"x-echo": f"Bearer {secret}", "x-request-id": "r1"}))
    raw = f'{{"id":"unauthorized","message":"bad token {secret}"}}'.encode()
    masked_raw, masked_headers, echoed = mask_secret(raw, headers, secret)
    assert echoed
    assert secret.encode() not in masked_raw and b"bad token ***" in masked_raw
    assert dict(masked_headers) == {"x-echo": "Bearer ***", "x-request-id": "r1"}
    reply = make_reply(401, masked_raw, masked_headers, "GET /v2/reserved_ips/x")
    assert secret not in reply.excerpt and secret not in str(reply.body)
    clean, no_headers = b'{"id":"unauthorized"}', CIMultiDictProxy(CIMultiDict())
    assert mask_secret(clean, no_headers, secret) == (clean, no_headers, False)
