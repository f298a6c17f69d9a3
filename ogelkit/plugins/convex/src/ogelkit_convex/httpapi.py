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
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import Response

from ogelkit import Operation, Reason, Reject, Session
from ogelkit.frontdoor import SHUTDOWN, format_address
from ogelkit_convex.backend import ConvexBackend
from ogelkit_convex.connection import BAD_TOKEN, UNREACHABLE
from ogelkit_convex.errors import error_data, http_error
from ogelkit_convex.upstream import UpstreamError
from ogelkit_convex.wire import canonical, token_target

if TYPE_CHECKING:
    from ogelkit_convex.listener import ConvexDoor

KINDS = {"query": "query", "mutation": "mutation", "action": "action", "function": "function",
         "query_ts": "query", "query_at_ts": "query", "query_batch": "query"}
#: The HTTP API's GET endpoints (the rest are POST).
GET_ROUTES = ("query", "query_ts")
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
    path = request.url.path
    batch = False
    if path.startswith("/api/run/"):
        kind = "function"
        parts = request.path_params.get("path", "").strip("/").split("/")
        udf = canonical("/".join(parts[:-1]) + ":" + parts[-1]) if len(parts) > 1 else \
            canonical(parts[0])
    else:
        route = request.path_params.get("kind", "")
        kind = KINDS.get(route, "")
        if request.method == "GET" and route not in GET_ROUTES:
            kind = ""
        if not kind:
            return _json(404, {"code": "NotFound", "message": f"no route {request.method} {path}"})
        batch = route == "query_batch"
        # GET /api/query names its function in the query string; /api/query_ts none.
        udf = request.query_params.get("path", "") if request.method == "GET" else ""
        udf = canonical(udf) if udf else ("(query_ts)" if route == "query_ts" else "")
    if door.clients.draining is not None:
        status, out, headers = http_error(SHUTDOWN)
        return _json(status, out, headers)
    client = request.client
    peer = format_address(client.host, client.port) if client else "unknown"
    session = Session("convex", peer)
    login = door.login(session)
    try:
        body = await request.body()
        if len(body) > door.options.max_message_size:
            return _json(413, {"code": "RequestTooLarge", "message": "request body too large"})
        paths = [udf]
        doc: dict[str, Any] = {}
        if not udf:
            try:
                doc = json.loads(body or b"{}")
                paths = [canonical(str(q.get("path", ""))) for q in doc["queries"]] if batch \
                    else [canonical(str(doc.get("path", "")))]
            except (ValueError, AttributeError, KeyError, TypeError):
                return _json(400, {"code": "BadJsonBody", "message": "the body is not JSON of "
                                   "this endpoint's shape"})
        token = _token(request)
        try:
            backend, db, platform = await _login(door, login, request, token)
            await login.admit(lambda _rej: None)
        except Reject as rej:
            status, out, headers = http_error(rej, session.tier)
            return _json(status, out, headers)
        size = len(body) // max(1, len(paths))
        ops = [Operation(session, kind, p, p, size) for p in paths]
        refused = [await _admit(door, op) for op in ops]
        if not batch:
            if refused[0] is not None:
                status, out, headers = http_error(refused[0], session.tier)
                return _json(status, out, headers)
            return await _relay(door, request, ops[0], backend, db, body, platform)
        return await _relay_batch(door, request, ops, refused, backend, db, doc, platform)
    finally:
        login.end()


async def _admit(door: ConvexDoor, op: Operation) -> Reject | None:
    """One call through the chain's admission; a refusal is completed (logged) here."""
    chain = door.context.chain
    rej = await chain.try_admit(op) if chain is not None else None
    if rej is not None:
        _complete(door, op, 0, None)
    return rej


async def _login(door: ConvexDoor, login: Any, request: Request, token: str
                 ) -> tuple[Any, Any, bool]:
    """(backend, database, whether the platform token was presented) or a Reject."""
    target = door.target(request.headers.get("host"), token)
    tenant, dbname = target or ("", "")
    login.session.user = tenant
    entry = await login.lookup(tenant)
    login.check_ban()
    db = entry.databases.get(dbname) if entry is not None else None
    backend = door.context.backends.get(db.backend) if db is not None else None
    ours = backend is not None and backend in door.backends
    named = token_target(token) if token else None
    platform = ours and bool(token) and ConvexBackend.token_matches(db, token)
    if named is not None and named != (tenant, dbname):
        platform = False
    # End-user auth (routed by host): the client's own Authorization goes to the deployment.
    user = ours and not platform and named is None and \
        cast("ConvexBackend", backend).user_auth(db) and \
        not request.headers.get("authorization", "").lower().startswith("convex ")
    if not platform and not user:
        raise login.bad_credentials(BAD_TOKEN if token else
                                    "a platform token is required (Authorization: Bearer <token>)")
    login.use(db, backend)
    return backend, db, platform


async def _call_upstream(request: Request, ops: list[Operation], backend: Any, db: Any,
                         body: bytes, platform: bool
                         ) -> tuple[int, list[tuple[str, str]], bytes] | Reject:
    """The deployment's reply to this request (with ``body``), or the Reject that ended it:
    a timeout layer deadline of any of ``ops`` (it cancels the call) or an unreachable
    deployment."""
    url = db.upstream["deployment_url"].rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
    if platform:
        headers["authorization"] = f"Convex {db.upstream['admin_key']}"
    elif request.headers.get("authorization"):
        headers["authorization"] = request.headers["authorization"]  # the user's own JWT
    headers.setdefault("content-type", "application/json")
    call = asyncio.ensure_future(asyncio.wait_for(
        backend.upstream.request(request.method, url, body, headers),
        backend.options.http_timeout))
    timed_out: list[Reject] = []

    def cancel(reject: Reject) -> None:
        timed_out.append(reject)
        call.cancel()

    for op in ops:
        op.canceller = cancel
    try:
        return await call
    except asyncio.CancelledError:
        if not timed_out:
            raise
        return timed_out[0]
    except (UpstreamError, TimeoutError):
        return UNREACHABLE


def _failed(door: ConvexDoor, ops: list[Operation], rej: Reject) -> Response:
    """Complete ``ops`` ended by ``rej`` (timeout or unreachable) and answer it."""
    for op in ops:
        op.rejection = op.rejection or rej
        _complete(door, op, 0, "unreachable" if rej is UNREACHABLE else None)
    status, out, hdrs = http_error(rej, ops[0].session.tier)
    return _json(status, out, hdrs)


def _error_of(status_code: int, content: bytes) -> str | None:
    if status_code >= 400:
        return str(status_code)
    return "error" if b'"status":"error"' in content.replace(b" ", b"") else None


async def _relay(door: ConvexDoor, request: Request, op: Operation, backend: Any, db: Any,
                 body: bytes, platform: bool) -> Response:
    reply = await _call_upstream(request, [op], backend, db, body, platform)
    if isinstance(reply, Reject):
        return _failed(door, [op], reply)
    status_code, reply_headers, content = reply
    _complete(door, op, len(content), _error_of(status_code, content))
    out_headers = {k: v for k, v in reply_headers
                   if k == "content-type" or k.startswith("x-convex")}
    return Response(content, status_code, headers=out_headers)


async def _relay_batch(door: ConvexDoor, request: Request, ops: list[Operation],
                       refused: list[Reject | None], backend: Any, db: Any, doc: dict[str, Any],
                       platform: bool) -> Response:
    """``/api/query_batch``: each query is a call of its own. Refused ones are answered in
    place (``status: error`` with the gateway's ``errorData``), the rest go upstream as one
    smaller batch and their results are put back in order. All refused: the first
    refusal's HTTP error (429 with Retry-After), so clients back off."""
    tier = ops[0].session.tier
    live = [i for i, rej in enumerate(refused) if rej is None]
    if not live:
        status, out, headers = http_error(refused[0], tier)  # type: ignore[arg-type]
        return _json(status, out, headers)
    results: list[Any] = [
        None if rej is None else {"status": "error", "errorMessage": rej.message,
                                  "errorData": error_data(rej, getattr(tier, "name", None))}
        for rej in refused]
    sub = {**doc, "queries": [doc["queries"][i] for i in live]}
    live_ops = [ops[i] for i in live]
    reply = await _call_upstream(request, live_ops, backend, db,
                                 json.dumps(sub).encode(), platform)
    if isinstance(reply, Reject):
        return _failed(door, live_ops, reply)
    status_code, _headers, content = reply
    try:
        answers = json.loads(content)["results"] if status_code == 200 else None
        if not isinstance(answers, list) or len(answers) != len(live):
            answers = None
    except (ValueError, KeyError, TypeError):
        answers = None
    if answers is None:  # an infrastructure error: the deployment's own answer, as is
        for op in live_ops:
            _complete(door, op, len(content) // len(live_ops), str(status_code))
        return Response(content, status_code, media_type="application/json")
    share = len(content) // len(live)
    for i, answer in zip(live, answers, strict=True):
        results[i] = answer
        failed = isinstance(answer, dict) and answer.get("status") == "error"
        _complete(door, ops[i], share, "error" if failed else None)
    return _json(200, {"results": results})


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
