"""DigitalOcean's refusals of an action request: status, error id and message.

``SimApiError`` is raised by the state's rules and turned into DigitalOcean's error body by the
API server. The messages the field notes record (``shared/do-api/README.md``) are exact; the
others are this simulator's wording (docs/simulator.md, "Choices"): clients key on the status.
"""

from __future__ import annotations

MSG_IP_PENDING = "The floating IP already has a pending event."
MSG_DROPLET_PENDING = "Droplet already has a pending event."
MSG_DROPLET_HAS_IP = "Droplet already has a floating IP assigned."
MSG_OTHER_REGION = "The floating IP and the Droplet must be in the same region."
MSG_NOT_ASSIGNED = "The floating IP is not assigned to a Droplet."
MSG_NOT_FOUND = "The resource you were accessing could not be found."
MSG_BAD_TYPE = "The action type must be one of: assign, unassign."
MSG_BAD_DROPLET_ID = "droplet_id must be the integer id of a Droplet to assign the floating IP to."


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
