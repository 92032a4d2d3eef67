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

    client.py     DoApiClient: the operations, POST actions of unknown fate, action polling
    transport.py  one bounded attempt, retries and backoff, rate limit and token observation,
                  request metrics, requests in the last hour, final statuses -> exceptions
    session.py    the one aiohttp session: TLS, connector, keep-alive (pool and TCP), headers,
                  connections opened, requests in flight
    window.py     SlidingCount: events in the last hour, by the minute
    models.py     ReservedIp, Action, AssignResult, RateLimit; parsing and validating replies

Imports run client -> transport -> session -> models (and transport -> window). Importers
use this package's names only.
"""

from hafloatd.doapi.client import DoApiClient
from hafloatd.doapi.models import Action, AssignResult, RateLimit, ReservedIp

__all__ = ["Action", "AssignResult", "DoApiClient", "RateLimit", "ReservedIp"]
