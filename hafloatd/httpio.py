"""Reading HTTP answers the daemon does not trust to be small (metadata, the health check)."""

from __future__ import annotations

import aiohttp

__all__ = ["read_limited"]


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to EOF or ``limit`` bytes, whichever comes first (the rest is not read).

    Ask for ``limit + 1`` bytes to tell "exactly at the limit" from "over it".
    """
    data = bytearray()
    while len(data) < limit:
        chunk = await response.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)
