"""The metrics HTTP server: ``/metrics`` (Prometheus exposition) and ``/healthz``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from hafloatd.config import split_host_port
from hafloatd.metrics import Metrics


class MetricsServer:
    """aiohttp server on ``host:port``; ``healthy()`` decides what ``/healthz`` answers."""

    def __init__(self, metrics: Metrics, listen: str, healthy: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.host, self.port = split_host_port(listen)
        self._healthy = healthy
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.metrics.registry))
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno, f"metrics.listen {self.host}:{self.port}: {exc.strerror}"
            ) from None
        self._runner = runner
        # The port actually bound: differs from self.port when listen asked for port 0.
        addresses = runner.addresses  # (host, port, ...) per listening socket
        self.bound_port = int(addresses[0][1]) if addresses else self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _request: web.Request) -> web.Response:
        if self._healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="unhealthy\n")
