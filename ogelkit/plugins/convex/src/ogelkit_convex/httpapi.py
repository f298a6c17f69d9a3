"""The HTTP API through the gateway: ``POST /api/query|mutation|action|function`` and
``/api/run/<module>/<function>``.

Each request is one short session (login by host and/or platform token, admission, one call
through the layers, end), relayed to the deployment with ``Authorization: Convex <admin
key>`` and answered with the deployment's own status and body. Refusals: 401 (token), 403
(suspended, cost), 429 with ``Retry-After`` and ``RateLimit`` headers (rate, connections,
bans), 504 (timeout), 503 (deployment unreachable), as ``{code, message, ...}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from ogelkit import Operation, Reason, Reject, Session
from ogelkit.frontdoor import SHUTDOWN, format_address
from ogelkit_convex.backend import ConvexBackend
from ogelkit_convex.connection import BAD_TOKEN, UNREACHABLE
from ogelkit_convex.errors import http_error
from ogelkit_convex.upstream import UpstreamError
from ogelkit_convex.wire import canonical, token_target

if TYPE_CHECKING:
    from ogelkit_convex.listener import ConvexDoor

KINDS = {"query": "query", "mutation": "mutation", "action": "action", "function": "function"}
_SKIP = {"host", "authorization", "content-length", "connection", "transfer-encoding",
         "keep-alive", "upgrade", "accept-encoding"}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body).encode(), status, headers=headers,
                    media_type="application/json")


def _token(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "convex"):
        return value.strip()
    return ""


async def serve_http(door: ConvexDoor, request: Request) -> Response:
    if request.url.path.startswith("/api/run/"):
        kind = "function"
        parts = request.path_params.get("path", "").strip("/").split("/")
        udf = canonical("/".join(parts[:-1]) + ":" + parts[-1]) if len(parts) > 1 else \
            canonical(parts[0])
    else:
        kind = KINDS.get(request.path_params.get("kind", ""), "")
        if not kind:
            return _json(404, {"code": "NotFound", "message": f"no route {request.url.path}"})
        udf = ""
    if door.clients.draining is not None:
        status, out, headers = http_error(SHUTDOWN)
        return _json(status, out, headers)
    client = request.client
    peer = format_address(client.host, client.port) if client else "unknown"
    session = Session("convex", peer)
    login = door.login(session)
    tier = None
    try:
        body = await request.body()
        if len(body) > door.options.max_message_size:
            return _json(413, {"code": "RequestTooLarge", "message": "request body too large"})
        if not udf:
            try:
                udf = canonical(str(json.loads(body or b"{}").get("path", "")))
            except (ValueError, AttributeError):
                return _json(400, {"code": "BadJsonBody", "message": "the body is not JSON"})
        token = _token(request)
        try:
            backend, db = await _login(door, login, request, token)
            tier = session.tier
            await login.admit(lambda _rej: None)
        except Reject as rej:
            tier = session.tier
            status, out, headers = http_error(rej, tier)
            return _json(status, out, headers)
        op = Operation(session, kind, udf, udf, len(body))
        chain = door.context.chain
        try:
            if chain is not None:
                pending = chain.admit(op)
                if pending is not None:
                    await pending
        except Reject as rej:
            op.ended = time.monotonic()
            _complete(door, op, 0, None)
            status, out, headers = http_error(rej, tier)
            return _json(status, out, headers)
        return await _relay(door, request, op, backend, db, body)
    finally:
        login.end()


async def _login(door: ConvexDoor, login: Any, request: Request, token: str) -> tuple[Any, Any]:
    target = door.target(request.headers.get("host"), token)
    tenant, dbname = target or ("", "")
    login.session.user = tenant
    entry = await login.lookup(tenant)
    login.check_ban()
    db = entry.databases.get(dbname) if entry is not None else None
    backend = door.context.backends.get(db.backend) if db is not None else None
    good = bool(token) and backend is not None and backend in door.backends and \
        ConvexBackend.token_matches(db, token)
    named = token_target(token) if token else None
    if named is not None and named != (tenant, dbname):
        good = False
    if not good:
        raise login.bad_credentials(BAD_TOKEN if token else
                                    "a platform token is required (Authorization: Bearer <token>)")
    login.use(db, backend)
    return backend, db


async def _relay(door: ConvexDoor, request: Request, op: Operation, backend: Any, db: Any,
                 body: bytes) -> Response:
    url = db.upstream["deployment_url"].rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
    headers["authorization"] = f"Convex {db.upstream['admin_key']}"
    headers.setdefault("content-type", "application/json")
    call = asyncio.ensure_future(asyncio.wait_for(
        backend.upstream.post(url, body, headers), backend.options.http_timeout))
    timed_out: list[Reject] = []

    def cancel(reject: Reject) -> None:
        timed_out.append(reject)
        call.cancel()

    op.canceller = cancel
    try:
        reply = await call
    except asyncio.CancelledError:
        if not timed_out:
            raise
        rej = timed_out[0]
        op.rejection = op.rejection or rej
        _complete(door, op, 0, None)
        status, out, hdrs = http_error(rej, op.session.tier)
        return _json(status, out, hdrs)
    except (UpstreamError, TimeoutError):
        op.rejection = UNREACHABLE
        _complete(door, op, 0, "unreachable")
        status, out, hdrs = http_error(UNREACHABLE, op.session.tier)
        return _json(status, out, hdrs)
    status_code, reply_headers, content = reply
    error = None
    if status_code >= 400:
        error = str(status_code)
    elif b'"status":"error"' in content.replace(b" ", b""):
        error = "error"
    _complete(door, op, len(content), error)
    out_headers = {k: v for k, v in reply_headers
                   if k == "content-type" or k.startswith("x-convex")}
    return Response(content, status_code, headers=out_headers)


def _complete(door: ConvexDoor, op: Operation, nbytes: int, error: str | None) -> None:
    op.ended = time.monotonic()
    op.bytes_out = nbytes
    op.error = error
    chain = door.context.chain
    if chain is not None:
        chain.complete(op)
    session = op.session
    tenant = session.tenant_slug or ""
    rejected = op.rejection is not None and op.rejection.reason != Reason.TIMEOUT
    if op.rejection is not None:
        door.metrics.rejected += 1
    elif error is not None:
        door.metrics.error += 1
    else:
        door.metrics.ok += 1
    door.meter.call(tenant, session.database or "", op.text or "", duration=op.duration,
                    bytes_in=op.size, bytes_out=nbytes, error=error is not None or (
                        op.rejection is not None and not rejected), rejected=rejected)
