"""The gateway's HTTP side: health, readiness, Prometheus metrics, the admin API, and the
routes plugins mount (the Convex front door's HTTP API and ``/api/sync`` WebSocket).

It is a Starlette application served by uvicorn (httptools for HTTP/1.1, the
``websockets`` library's sans-I/O protocol for WebSocket upgrades) *inside the gateway's
own event loop*: ``uvicorn.Server.serve()`` runs as one task of the runtime's task group,
with ``lifespan="off"`` (the runtime opens and closes everything) and without uvicorn's
signal handlers (the runtime owns SIGTERM and SIGINT). The runtime binds the listening
sockets itself so ``::`` keeps meaning "both families" and ``PORT`` works as before.

Why uvicorn rather than hypercorn: uvicorn's ``Server`` is designed to be embedded in an
existing asyncio loop (``serve(sockets=...)``, ``should_exit``), its httptools parser and
``websockets`` protocol are the fastest maintained pair for the Convex sync traffic, and it
needs no trio/anyio shim; hypercorn adds HTTP/2 and HTTP/3, which no client of the gateway
uses, at a higher per-request cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Generator, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

log = logging.getLogger("ogelkit.http")

MAX_BODY = 8 * 1024 * 1024
#: Seconds uvicorn waits for in-flight requests at shutdown before cancelling them.
GRACEFUL_SHUTDOWN = 3.0
#: Seconds startup waits for uvicorn to accept.
STARTUP_WAIT = 10.0


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON body the way every gateway route answers (one line, ``default=str``)."""
    body = json.dumps(data, default=str).encode() + b"\n"
    return Response(body, status, headers=headers, media_type="application/json")


def error_response(status: int, code: str, message: str, *,
                   headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """``{"error": {"code", "message", ...}}`` with ``status``."""
    return json_response({"error": {"code": code, "message": message, **extra}}, status, headers)


async def read_json(request: Request) -> Any:
    """The request body as JSON (``null`` when empty); ``ValueError`` when it is not JSON or
    larger than ``MAX_BODY``."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise ValueError("request body too large")
    return json.loads(body or b"null")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(404, "not_found", f"no route for {request.url.path}")
    if exc.status_code == 405:
        return error_response(405, "method_not_allowed", f"{request.method} not allowed",
                              headers=dict(exc.headers or {}))
    return error_response(exc.status_code, "http_error", str(exc.detail),
                          headers=dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("HTTP handler failed for %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error")


def build_app(routes: Sequence[BaseRoute]) -> Starlette:
    """The gateway's ASGI app: ``routes`` in order (the first match wins), JSON errors."""
    return Starlette(routes=list(routes),
                     exception_handlers={HTTPException: _http_error, Exception: _internal_error})


def bind_sockets(host: str | None, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for ``host`` (``None``: every interface of both families, one
    dual-stack socket when the system has one). ``OSError`` when the port is taken.
    ``reuse_port``: SO_REUSEPORT, so that every worker process binds the same port."""
    if host is None:
        if socket.has_dualstack_ipv6():
            sock = socket.create_server(("::", port), family=socket.AF_INET6, backlog=2048,
                                        reuse_port=reuse_port, dualstack_ipv6=True)
        else:
            sock = socket.create_server(("0.0.0.0", port), backlog=2048, reuse_port=reuse_port)
        sock.setblocking(False)
        return [sock]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048, reuse_port=reuse_port)
    sock.setblocking(False)
    return [sock]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the gateway's runtime owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """uvicorn serving ``app`` on already bound ``sockets`` inside the running loop."""

    def __init__(self, app: Any, sockets: list[socket.socket], *, server_name: str = "ogelkit"):
        self.app = app
        self.sockets = sockets
        config = uvicorn.Config(
            app, lifespan="off", http="httptools", ws="websockets-sansio", log_config=None,
            access_log=False, server_header=False, headers=[("server", server_name)],
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN), ws_max_size=16 * 1024 * 1024,
            ws_per_message_deflate=False, proxy_headers=False, timeout_keep_alive=30)
        self.server = _EmbeddedServer(config)
        self._done = asyncio.Event()

    def addresses(self) -> list[tuple[str, int]]:
        return [tuple(s.getsockname()[:2]) for s in self.sockets]

    async def serve(self) -> None:
        try:
            await self.server.serve(sockets=self.sockets)
        finally:
            self._done.set()
            for sock in self.sockets:
                sock.close()

    async def started(self) -> None:
        """Return once uvicorn accepts (the sockets already listen, so clients queue), or
        once it has given up; bounded by ``STARTUP_WAIT``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_WAIT
        while not self.server.started and not self._done.is_set() and loop.time() < deadline:  # noqa: ASYNC110 (uvicorn exposes a flag, no event)
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close."""
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self._done.wait(), GRACEFUL_SHUTDOWN + 2.0)
        except TimeoutError:
            self.server.force_exit = True


__all__ = [
    "HttpServer",
    "JSONResponse",
    "Request",
    "Response",
    "bind_sockets",
    "build_app",
    "error_response",
    "json_response",
    "read_json",
]
