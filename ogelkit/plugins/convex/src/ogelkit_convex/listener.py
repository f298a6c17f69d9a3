"""``ConvexDoor``: the Convex front door, served on the gateway's HTTP port.

It binds no port of its own: ``http_routes()`` gives the runtime the sync WebSocket
(``/api/sync``, and ``/api/<version>/sync`` for the JS client) and the HTTP API
(``/api/query|mutation|action|function``, ``/api/run/...``), mounted on the gateway's
Starlette app next to ``/healthz`` and the admin API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from ogelkit import Reject
from ogelkit.frontdoor import SHUTDOWN, FrontDoor
from ogelkit_convex.backend import ConvexBackend
from ogelkit_convex.connection import SyncConnection
from ogelkit_convex.httpapi import serve_http
from ogelkit_convex.usage import FunctionMeter
from ogelkit_convex.wire import host_target, token_target

log = logging.getLogger("ogelkit.convex")


class ConvexDoor(FrontDoor):
    protocol = "convex"
    default_port = 0
    handshake_timeout = 10.0

    def __init__(self, context: Any, *, host: str, port: int, backends: list[Any]):
        super().__init__(context, host=host, port=port, backends=backends)
        self.meter = FunctionMeter(context.gateway_id)
        first: ConvexBackend = backends[0]
        self.options = first.options  # routing options: the first convex backend's

    # -- routing -----------------------------------------------------------------------------
    def target(self, host: str | None, token: str | None) -> tuple[str, str] | None:
        """(tenant, database) named by the Host header or, failing that, the token."""
        for backend in self.backends:
            found = host_target(host or "", cast(ConvexBackend, backend).options.domain)
            if found is not None:
                return found
        return token_target(token) if token else None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> list[tuple[str, int]]:
        """No listener of its own (the runtime mounts ``http_routes()``)."""
        self.loop = asyncio.get_running_loop()
        self.observe = self.observes_operations()
        self.spawn(self._publish_metrics())
        self.spawn(self._ping_loop())
        self.spawn(self._usage_loop())
        return []

    def http_routes(self) -> list[BaseRoute]:
        return [
            WebSocketRoute("/api/sync", self._sync),
            WebSocketRoute("/api/{version}/sync", self._sync),
            Route("/api/run/{path:path}", self._http, methods=["POST"]),
            Route("/api/{kind:str}", self._http, methods=["GET", "POST"]),
        ]

    async def stop_accepting(self) -> None:
        self.clients.draining = self.clients.draining or SHUTDOWN

    async def close(self, reason: Reject) -> None:
        await self.clients.close(reason)
        try:
            await self.meter.flush(self.context.store)
        except Exception:
            log.exception("writing the per-function usage failed")
        for task in list(self._tasks):
            task.cancel()
        self.metrics.flush()

    # -- endpoints ---------------------------------------------------------------------------
    async def _sync(self, ws: WebSocket) -> None:
        if self.clients.draining is not None:
            await ws.close(1012)
            return
        await ws.accept()
        await SyncConnection(self, ws).run()

    async def _http(self, request: Request) -> Response:
        return await serve_http(self, request)

    # -- background --------------------------------------------------------------------------
    async def _ping_loop(self) -> None:
        interval = self.options.ping_interval
        while True:
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for conn in self.clients:
                if now - conn.last_sent >= interval:
                    conn.ping()

    async def _usage_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.usage_interval)
            try:
                await self.meter.flush(self.context.store)
            except Exception as exc:
                log.warning("writing the per-function usage failed: %s", exc)
