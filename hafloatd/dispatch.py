"""One control request -> the controller's operation -> the reply (DESIGN §7).

``Dispatcher`` is the control server's handler. It answers nothing before ``open()``: the
daemon opens it once the roles are settled (``apply_stop_records``), so no request is
answered from a role a stop record is about to change. The operation's deadline is fixed
once, from the request's receipt; the controller's result is the reply. An IP that is not
configured gets what Pacemaker needs to hear: stop succeeds, a probe says not running,
anything else is "not installed" with the key to add.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping

from hafloatd import stop_records
from hafloatd.control.protocol import ControlReply, ControlRequest
from hafloatd.controller import IpController
from hafloatd.errors import OCF_ERR_INSTALLED, OCF_NOT_RUNNING, OCF_SUCCESS

__all__ = ["REPLY_MARGIN_S", "Dispatcher", "apply_stop_records"]

log = logging.getLogger("hafloatd.dispatch")

# Reply this much before the caller's deadline so the answer reaches the agent in time.
REPLY_MARGIN_S = 0.05


class Dispatcher:
    """The ``ControlHandler`` of the control server: what each request does."""

    def __init__(
        self,
        controllers: Mapping[str, IpController],
        *,
        config_path: str,
        status: Callable[[], dict[str, object]],
    ) -> None:
        self._controllers = controllers  # the daemon's, live: a reload changes it
        self._config_path = config_path
        self._status = status
        self._open = asyncio.Event()

    def open(self) -> None:
        """Start answering (requests received before wait for this)."""
        self._open.set()

    async def handle(self, request: ControlRequest) -> ControlReply:
        await self._open.wait()
        if request.op == "status":
            return ControlReply(OCF_SUCCESS, "", self._status())
        controller = self._controllers.get(request.ip or "")
        if controller is None:
            return self._unknown_ip_reply(request)
        deadline = request.deadline(margin_s=REPLY_MARGIN_S)  # anchored at receipt
        # Every request may carry the Pacemaker names (kept with the role for notify_failures).
        controller.remember_names(request.resource, request.node)
        if request.op == "start":
            return await controller.start(deadline)
        if request.op == "stop":
            return await controller.stop(deadline)
        if request.op == "monitor":
            return controller.monitor(probe=request.probe)
        return ControlReply(OCF_SUCCESS, "", {"droplet_id": controller.identity.droplet_id})

    def _unknown_ip_reply(self, request: ControlRequest) -> ControlReply:
        known = ", ".join(self._controllers) or "none"
        reason = (
            f"reserved IP {request.ip} is not in {self._config_path} (ips: {known}); add it "
            "under ips: and reload (systemctl reload hafloatd)"
        )
        if request.op == "stop":
            return ControlReply(OCF_SUCCESS, reason)
        if request.op == "monitor" and request.probe:
            return ControlReply(OCF_NOT_RUNNING, reason)
        return ControlReply(OCF_ERR_INSTALLED, reason)


async def apply_stop_records(controllers: Mapping[str, IpController], socket_path: str) -> None:
    """Stops the agent recorded while the daemon was down, beside its socket (stop_records).

    Run once the control socket is bound, so a stop is either recorded by now or reaches us.
    """
    directory = os.path.dirname(socket_path)
    records = await asyncio.to_thread(stop_records.consume, directory, list(controllers))
    for ip, record in records.items():
        controller = controllers[ip]
        role_before = controller.role.value
        applied = controller.apply_stop_record(record)  # persisted, like a delivered stop
        log.info(
            "event=stop_record ip=%s stopped_at=%.3f resource=%s node=%s role=%s applied=%s",
            ip,
            record.stopped_at,
            record.resource,
            record.node,
            role_before,
            applied,
        )
