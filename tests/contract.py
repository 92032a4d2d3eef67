"""DigitalOcean's OpenAPI spec as a contract for every exchange the simulator records.

The spec (``shared/do-api/digitalocean-api-subset.openapi.yaml``, or ``$HAFLOATD_OPENAPI_SPEC``)
is loaded once per session with openapi-core. ``check_exchange`` validates both halves of one
recorded exchange: the request a client sent (path, method, parameters, security, body) and the
response the simulator gave (status, headers, body). A failure on either side is a bug: in the
client under test, or in the simulator's fidelity.

Exceptions, kept narrow on purpose:
- ``/_sim/...`` admin requests are not part of DigitalOcean's API and are never checked.
- A request answered 401 may lack a valid ``Authorization`` header: that is what the 401 is
  about, so only the *security* part of its request check is waived.
- A request a test marked with ``Simulator.expect_invalid_requests(reason)`` is not checked
  (it is deliberately malformed); its response still is, when its path is in the spec.
- A dropped exchange has no response; only its request is checked.

One addition to the spec: an action body's ``droplet_id`` must be an integer. The spec's body is
an ``anyOf`` whose first branch leaves ``droplet_id`` unconstrained, so openapi-core accepts
``"1002"``; the second branch and DigitalOcean's documentation say integer, and our clients must
send one, whatever DigitalOcean (and so the simulator) tolerates (defect 13).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import PathError
from openapi_core.validation.request.exceptions import SecurityValidationError
from werkzeug.datastructures import Headers, ImmutableMultiDict

from hafloatd.lab.sim.recording import Exchange

SPEC_ENV = "HAFLOATD_OPENAPI_SPEC"
DEFAULT_SPEC = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "do-api"
    / "digitalocean-api-subset.openapi.yaml"
)
MAX_MESSAGE = 600
ACTIONS_PATH = re.compile(r"/v2/(?:reserved|floating)_ips/[^/]+/actions")


def spec_path() -> Path:
    """The spec file: ``$HAFLOATD_OPENAPI_SPEC`` if set, else the shared copy beside the repo."""
    configured = os.environ.get(SPEC_ENV)
    return Path(configured) if configured else DEFAULT_SPEC


@functools.cache
def load_spec(path: Path | None = None) -> OpenAPI:
    """Parse the spec once per process (about a second); FileNotFoundError says how to fix."""
    chosen = path or spec_path()
    if not chosen.is_file():
        raise FileNotFoundError(
            f"DigitalOcean OpenAPI spec not found at {chosen}; set {SPEC_ENV} to its path"
        )
    return OpenAPI.from_file_path(str(chosen))


@dataclass(frozen=True)
class ContractViolation:
    exchange: str  # the exchange's one-line summary
    part: Literal["request", "response"]
    message: str

    def __str__(self) -> str:
        return f"{self.exchange}: {self.part} violates the DigitalOcean spec: {self.message}"


def check_exchange(exchange: Exchange, spec: OpenAPI | None = None) -> list[ContractViolation]:
    """Every way ``exchange`` departs from the spec (empty when it conforms)."""
    if exchange.path == "/_sim" or exchange.path.startswith("/_sim/"):
        return []
    openapi = spec or load_spec()
    request = _RecordedRequest(exchange, _server_url(openapi))
    violations: list[ContractViolation] = []
    summary = exchange.summary()
    path_known = True
    if exchange.contract_exempt is None:
        try:
            openapi.validate_request(request)
        except PathError as exc:
            path_known = False
            violations.append(ContractViolation(summary, "request", _describe(exc)))
        except SecurityValidationError as exc:
            if exchange.status != 401:
                violations.append(ContractViolation(summary, "request", _describe(exc)))
        except Exception as exc:  # openapi-core raises a family of ValidationError subclasses
            violations.append(ContractViolation(summary, "request", _describe(exc)))
        else:
            problem = _droplet_id_problem(exchange)
            if problem is not None:
                violations.append(ContractViolation(summary, "request", problem))
    if exchange.dropped or exchange.status is None or not path_known:
        return violations
    try:
        openapi.validate_response(request, _RecordedResponse(exchange))
    except PathError:
        pass  # only an exempt request reaches here with a path the spec does not have
    except Exception as exc:
        violations.append(ContractViolation(summary, "response", _describe(exc)))
    return violations


def check_exchanges(
    exchanges: Iterable[Exchange], spec: OpenAPI | None = None
) -> list[ContractViolation]:
    openapi = spec or load_spec()
    return [v for e in exchanges for v in check_exchange(e, openapi)]


def assert_conforms(exchanges: Iterable[Exchange], spec: OpenAPI | None = None) -> None:
    """AssertionError listing every violation, if any."""
    violations = check_exchanges(exchanges, spec)
    if violations:
        listing = "\n".join(f"  - {v}" for v in violations)
        raise AssertionError(f"{len(violations)} contract violation(s):\n{listing}")


def _droplet_id_problem(exchange: Exchange) -> str | None:
    """The integer ``droplet_id`` the spec's anyOf fails to enforce (module docstring)."""
    if exchange.method != "POST" or not ACTIONS_PATH.fullmatch(exchange.path):
        return None
    try:
        body = json.loads(exchange.request_body)
    except ValueError:
        return None
    if not isinstance(body, dict) or "droplet_id" not in body:
        return None
    value = body["droplet_id"]
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    return f"droplet_id: {json.dumps(value)} is not of type 'integer' at /droplet_id"


class _RecordedRequest:
    """openapi-core's Request protocol over a recorded exchange.

    The host is the spec's own server URL: the simulator's address is not the contract.
    """

    def __init__(self, exchange: Exchange, host_url: str) -> None:
        self.host_url = host_url
        self.path = exchange.path
        self.method = exchange.method.lower()
        self.body: bytes | None = exchange.request_body or None
        self.content_type = exchange.request_headers.get("Content-Type", "").lower()
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qsl(exchange.query_string, keep_blank_values=True)),
            header=Headers(list(exchange.request_headers.items())),
            cookie=ImmutableMultiDict(),
            path={},
        )


class _RecordedResponse:
    def __init__(self, exchange: Exchange) -> None:
        self.status_code = exchange.status or 0
        self.headers = Headers(list(exchange.response_headers.items()))
        self.content_type = exchange.response_headers.get("Content-Type", "").lower()
        self.data: bytes | None = exchange.response_body


def _server_url(openapi: OpenAPI) -> str:
    servers: Any = (openapi.spec / "servers").read_value()
    if isinstance(servers, list) and servers and isinstance(servers[0], Mapping):
        return str(servers[0]["url"]).rstrip("/")
    return "https://api.digitalocean.com"


def _describe(exc: BaseException) -> str:
    """A short message: the schema errors with their JSON paths, not the whole document."""
    details: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for error in getattr(current, "schema_errors", None) or ():
            details.append(_schema_error(error))
            # anyOf/oneOf failures hide the useful reasons in their context.
            reasons = {_schema_error(sub) for sub in getattr(error, "context", None) or ()}
            details.extend(sorted(reasons)[:4])
        current = current.__cause__ or current.__context__
    head = f"{type(exc).__name__}: {_first_line(exc).rstrip(':')}"
    text = head + (" — " + "; ".join(details) if details else "")
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _schema_error(error: Any) -> str:
    where = "/".join(str(p) for p in getattr(error, "absolute_path", ()))
    message = str(getattr(error, "message", error))
    return f"{message} at /{where}" if where else message


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if "Value {" in text:  # openapi-core repeats the whole payload; the details say enough
        text = text.split("Value {", 1)[0].strip() or "invalid value"
    return text


def pretty(exchange: Exchange) -> str:
    """Debug helper: the exchange with JSON bodies indented (Authorization masked)."""
    body = exchange.response_body
    try:
        rendered = json.dumps(json.loads(body), indent=2) if body else ""
    except ValueError:
        rendered = body.decode("utf-8", "replace")
    return f"{exchange!r}\n{rendered}"
