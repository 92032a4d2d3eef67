"""DigitalOcean's refusals of an action request: status, error id and message.

``SimApiError`` is raised by the state's rules and turned into DigitalOcean's error body by the
API server. The messages the field notes record (``shared/do-api/README.md``) are exact; the
others are this simulator's wording (docs/simulator.md, "Choices"): clients key on the status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MSG_IP_PENDING = "The floating IP already has a pending event."
MSG_DROPLET_PENDING = "Droplet already has a pending event."
MSG_DROPLET_HAS_IP = "Droplet already has a floating IP assigned."
MSG_OTHER_REGION = "The floating IP and the Droplet must be in the same region."
MSG_NOT_ASSIGNED = "The floating IP is not assigned to a Droplet."
MSG_NOT_FOUND = "The resource you were accessing could not be found."
MSG_BAD_TYPE = "The action type must be one of: assign, unassign."
MSG_BAD_DROPLET_ID = "droplet_id must be the integer id of a Droplet to assign the floating IP to."
MSG_NOT_AN_OBJECT = "The request body must be a JSON object."

# The classic recipe sends "droplet_id":"1002" and DigitalOcean answered 201 (defect 13): a
# string of ASCII decimal digits counts as that integer. 19 digits hold any int64 id.
_DECIMAL_DIGITS = re.compile(r"[0-9]{1,19}")


class SimApiError(Exception):
    """A refusal the API answers with ``status`` and ``{"id": error_id, "message": message}``."""

    def __init__(self, status: int, error_id: str, message: str) -> None:
        super().__init__(f"{status} {error_id}: {message}")
        self.status = status
        self.error_id = error_id
        self.message = message


def not_found() -> SimApiError:
    return SimApiError(404, "not_found", MSG_NOT_FOUND)


def unprocessable(message: str) -> SimApiError:
    return SimApiError(422, "unprocessable_entity", message)


def assign_target(body: object) -> int | None:
    """The droplet a ``POST …/actions`` body assigns to (None: an unassign), or the refusal
    DigitalOcean answers.

    ``droplet_id`` is a positive integer, or a string of decimal digits read as one. Anything
    else (float, boolean, sign, blank, digits other than ASCII) is a 422.
    """
    if not isinstance(body, Mapping):
        raise SimApiError(400, "bad_request", MSG_NOT_AN_OBJECT)
    action_type = body.get("type")
    if action_type == "unassign":
        return None
    if action_type != "assign":
        raise unprocessable(MSG_BAD_TYPE)
    return _droplet_id(body.get("droplet_id"))


def _droplet_id(raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and _DECIMAL_DIGITS.fullmatch(raw):
        value = int(raw)
    else:
        raise unprocessable(MSG_BAD_DROPLET_ID)
    if value < 1:
        raise unprocessable(MSG_BAD_DROPLET_ID)
    return value
