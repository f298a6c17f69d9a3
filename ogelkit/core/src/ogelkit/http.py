"""The gateway's HTTP listener: health, readiness, Prometheus metrics, the admin API, and
routes that HTTP-speaking backends (Convex) mount.

Not a hot path for SQL/Redis/Mongo traffic, so it uses anyio streams and h11 (a correct,
well-kept HTTP/1.1 state machine) instead of hand-parsing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import attrs
import h11
from anyio.abc import SocketStream

log = logging.getLogger("ogelkit.http")

MAX_BODY = 8 * 1024 * 1024
READ_TIMEOUT = 30.0


@attrs.define
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    client: str = ""

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@attrs.define
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = attrs.field(factory=dict)
    content_type: str = "application/json"

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(data, default=str).encode() + b"\n", headers or {})

    @classmethod
    def error(cls, status: int, code: str, message: str, **extra: Any) -> Response:
        return cls.json({"error": {"code": code, "message": message, **extra}}, status)


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Exact paths, and prefixes ending in ``/`` (longest prefix wins)."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._prefix: list[tuple[str, str, Handler]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        if path.endswith("/"):
            self._prefix.append((method.upper(), path, handler))
            self._prefix.sort(key=lambda r: -len(r[1]))
        else:
            self._exact[(method.upper(), path)] = handler

    def find(self, method: str, path: str) -> tuple[Handler | None, bool]:
        """(handler, path_exists): path_exists distinguishes 405 from 404."""
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler, True
        exists = any(p == path for (_, p) in self._exact)
        for m, prefix, h in self._prefix:
            if path.startswith(prefix):
                if m == method or m == "*":
                    return h, True
                exists = True
        return None, exists


class HttpServer:
    def __init__(self, router: Router, *, server_name: str = "ogelkit"):
        self.router = router
        self.server_name = server_name.encode()
        self._listeners: list[Any] = []

    async def handle(self, stream: SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        client = ""
        try:
            peer = stream.extra(anyio.abc.SocketAttribute.remote_address)
            client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        except Exception:
            pass
        try:
            while True:
                request = await self._read_request(conn, stream, client)
                if request is None:
                    return
                response = await self._dispatch(request)
                await self._send(conn, stream, response)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                TimeoutError, ConnectionError):
            return
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    await self._send(conn, stream, Response.error(400, "bad_request", str(exc)))
                except Exception:
                    pass
        finally:
            await stream.aclose()

    async def _read_request(self, conn: h11.Connection, stream: SocketStream,
                            client: str) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with anyio.fail_after(READ_TIMEOUT):
                    try:
                        data = await stream.receive(65536)
                    except anyio.EndOfStream:
                        data = b""
                conn.receive_data(data)
                if not data and head is None and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", 413)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                url = urlsplit(head.target.decode("latin-1"))
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
                return Request(head.method.decode(), url.path or "/", parse_qs(url.query), headers,
                               bytes(body), client)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _dispatch(self, request: Request) -> Response:
        handler, exists = self.router.find(request.method, request.path)
        if handler is None:
            if exists:
                return Response.error(405, "method_not_allowed", f"{request.method} not allowed")
            return Response.error(404, "not_found", f"no route for {request.path}")
        try:
            return await handler(request)
        except json.JSONDecodeError as exc:
            return Response.error(400, "bad_json", f"request body is not JSON: {exc}")
        except Exception:
            log.exception("HTTP handler failed for %s %s", request.method, request.path)
            return Response.error(500, "internal", "internal error")

    async def _send(self, conn: h11.Connection, stream: SocketStream, response: Response) -> None:
        headers = [(b"content-type", response.content_type.encode()),
                   (b"content-length", str(len(response.body)).encode()),
                   (b"server", self.server_name)]
        headers += [(k.encode(), str(v).encode()) for k, v in response.headers.items()]
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data += conn.send(h11.Data(data=response.body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        await stream.send(data)
