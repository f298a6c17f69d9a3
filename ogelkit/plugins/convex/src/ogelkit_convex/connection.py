"""One client of the sync WebSocket: login, the upstream socket, and the relay.

The gateway parses the messages it needs and relays the rest unchanged:

- client -> gateway: ``Connect`` (held until login), ``Authenticate`` (the platform token,
  swapped for the deployment's admin key), ``ModifyQuerySet`` (each ``Add`` is a query call
  through the layers), ``Mutation`` and ``Action`` (calls through the layers);
- deployment -> client: ``Transition`` (completes query calls, meters pushed updates),
  ``MutationResponse``/``ActionResponse`` (complete calls), everything else as is.

A refused call is answered in protocol and the socket stays up: a query with a
``QueryFailed`` carried by the deployment's ``Transition`` that acknowledges that query set
version (the refused ``Add`` is not sent upstream, so versions stay the deployment's own),
a mutation or action with a failed response followed by an empty ``Transition`` from the
last version to itself (the Rust client resolves a failed call carrying ``errorData`` only
at the next Transition).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import websockets
from starlette.websockets import WebSocket, WebSocketDisconnect

from ogelkit import Operation, Reason, Reject, Session
from ogelkit.frontdoor import format_address
from ogelkit_convex.backend import ConvexBackend
from ogelkit_convex.errors import error_data, login_refusal
from ogelkit_convex.wire import canonical, dumps, http_to_ws, initial_version, token_target

if TYPE_CHECKING:
    from ogelkit_convex.listener import ConvexDoor

log = logging.getLogger("ogelkit.convex")

UNREACHABLE = Reject(Reason.UNAVAILABLE, "the gateway cannot reach the Convex deployment",
                     hint="Retry in a few seconds.")
BAD_TOKEN = "the platform token is not valid for this deployment"
#: What parsing a message that is not the protocol raises (not JSON, not an object, fields
#: of the wrong type).
MALFORMED = (ValueError, AttributeError, TypeError, KeyError)


def _udf_path(msg: dict[str, Any]) -> str:
    path = msg.get("udfPath")
    if not isinstance(path, str) or not path:
        raise TypeError("udfPath must be a non-empty string")
    return canonical(path)


class _Query:
    __slots__ = ("added", "op", "path")

    def __init__(self, path: str, op: Operation | None, added: float):
        self.path = path
        self.op = op  # until its first result
        self.added = added


class _Refused(Exception):
    def __init__(self, reject: Reject, base_version: int = 0):
        self.reject = reject
        self.base_version = base_version


class SyncConnection:
    def __init__(self, door: ConvexDoor, ws: WebSocket):
        self.door = door
        self.ctx = door.context
        self.ws = ws
        client = ws.client
        self.peer = format_address(client.host, client.port) if client else "unknown"
        self.session: Session | None = None
        self.backend: ConvexBackend | None = None
        self.db: Any = None
        self.tenant = ""
        self.dbname = ""
        self.upstream: Any = None
        self.last_sent = time.monotonic()
        self.last_end: dict[str, Any] = initial_version()
        self.lock = asyncio.Lock()
        self.queries: dict[Any, _Query] = {}
        self.requests: dict[Any, tuple[Operation, str]] = {}
        self.cancelled: set[Any] = set()
        self.refused_queries: set[Any] = set()
        self.timed_out: set[Any] = set()  # answered QueryFailed by the gateway: drop updates
        self.inject: list[tuple[int, dict[str, Any]]] = []
        self.passthrough = False  # end-user auth: the client's Authenticate goes upstream
        self.replay: str | None = None  # a first message that was not Authenticate
        self.auth_failed = False  # the deployment answered AuthError (it closes next)
        self.closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- ClientSet interface -----------------------------------------------------------------
    def is_idle(self) -> bool:
        return not self.requests

    def close_with(self, reject: Reject) -> None:
        self._spawn(self._close_with(reject))

    def abort(self) -> None:
        self.closed = True
        self._spawn(self._shutdown(1011))

    def ping(self) -> None:
        if not self.closed:
            self._spawn(self.send('{"type":"Ping"}'))

    # -- the connection ------------------------------------------------------------------------
    async def run(self) -> None:
        door = self.door
        session = Session("convex", self.peer)
        self.session = session
        login = door.login(session)
        relay: list[asyncio.Task[Any]] = []
        try:
            try:
                async with asyncio.timeout(door.handshake_timeout):
                    connect_text, auth = await self._handshake()
                    await self._login(login, auth)
                    await self._open_upstream(login, connect_text, auth)
                await login.admit(self.close_with)
            except _Refused as refused:
                await self._refuse(refused)
                return
            except Reject as rej:  # already recorded and counted by Login
                await self._refuse(_Refused(rej))
                return
            except TimeoutError:
                login.refuse(Reject(Reason.AUTH, "no Authenticate within the handshake timeout"),
                             "auth_failed")
                await self._shutdown(1008)
                return
            except (WebSocketDisconnect, websockets.ConnectionClosed):
                return
            except MALFORMED:
                await self._refuse(_Refused(login.refuse(Reject(
                    Reason.AUTH, "malformed sync message during the handshake"),
                    "auth_failed")))
                return
            door.clients.add(self)
            relay = [asyncio.create_task(self._from_client()),
                     asyncio.create_task(self._from_upstream())]
            _done, _pending = await asyncio.wait(relay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in relay:
                task.cancel()
            self._finish_all()
            door.clients.discard(self)
            login.end()
            await self._shutdown(1000)

    async def _handshake(self) -> tuple[str, dict[str, Any] | None]:
        """``Connect``, then ``Authenticate`` (or, for a database with end-user auth, any
        first message: a client without auth sends none). Returns the Connect text and the
        Authenticate message, or None (the first message is then replayed upstream)."""
        first = await self.ws.receive_text()
        msg = json.loads(first)
        if not isinstance(msg, dict) or msg.get("type") != "Connect":
            raise _Refused(Reject(Reason.AUTH, "the first sync message must be Connect"))
        text = await self.ws.receive_text()
        second = json.loads(text)
        if not isinstance(second, dict):
            raise _Refused(Reject(Reason.AUTH, "sync messages are JSON objects"))
        if second.get("type") == "Authenticate" and second.get("tokenType") != "None":
            return first, second
        self.replay = text
        return first, None

    async def _login(self, login: Any, auth: dict[str, Any] | None) -> None:
        door = self.door
        token = str(auth.get("value") or "") if auth is not None else ""
        base = int(auth.get("baseVersion", 0) or 0) if auth is not None else 0
        target = door.target(self.ws.headers.get("host"), token)
        tenant, dbname = target or ("", "")
        self.session.user = tenant  # type: ignore[union-attr]
        try:
            entry = await login.lookup(tenant)
            login.check_ban()
        except Reject as rej:
            raise _Refused(rej, base) from None
        named = token_target(token)
        db = entry.databases.get(dbname) if entry is not None else None
        backend = self.ctx.backends.get(db.backend) if db is not None else None
        ours = backend is not None and backend in door.backends
        if ours and named is None and cast("ConvexBackend", backend).user_auth(db):
            # End-user auth: the client's own JWT (or none) goes to the deployment, which
            # verifies it; an Admin token that is not the platform token is not relayed.
            if auth is not None and auth.get("tokenType") == "Admin" and \
                    not ConvexBackend.token_matches(db, token):
                raise _Refused(login.bad_credentials(BAD_TOKEN), base)
            self.passthrough = True
        else:
            good = ours and bool(token) and ConvexBackend.token_matches(db, token)
            if named is not None and named != (tenant, dbname):
                good = False
            if not good:
                raise _Refused(login.bad_credentials(
                    BAD_TOKEN if token else "a platform token is required: call "
                    "client.set_auth(<token>) before any query"), base)
        try:
            login.use(db, backend)
        except Reject as rej:
            raise _Refused(rej, base) from None
        self.tenant, self.dbname, self.db = tenant, dbname, db
        self.backend = cast("ConvexBackend", backend)

    async def _open_upstream(self, login: Any, connect_text: str,
                             auth: dict[str, Any] | None) -> None:
        opts = self.backend.options  # type: ignore[union-attr]
        url = http_to_ws(self.db.upstream["deployment_url"])
        try:
            self.upstream = await websockets.connect(
                url, open_timeout=opts.connect_timeout, max_size=opts.max_message_size,
                compression=None, ping_interval=20, ping_timeout=20,
                user_agent_header="ogelkit-gateway")
        except Exception as exc:
            log.warning("cannot reach Convex deployment %s: %s", url, exc)
            raise _Refused(login.refuse(UNREACHABLE, "error")) from None
        await self.upstream.send(connect_text)
        if auth is not None:
            await self.upstream.send(self._authenticate(auth))
        if self.replay is not None:
            replay, self.replay = self.replay, None
            out = await self._client_message(replay)
            if out is not None:
                await self.upstream.send(out)

    def _authenticate(self, auth: dict[str, Any]) -> str:
        """What goes upstream for a client's Authenticate: the platform token becomes the
        admin key; with end-user auth anything else is the client's own and goes as is."""
        token = str(auth.get("value") or "")
        if token and ConvexBackend.token_matches(self.db, token):
            return dumps({"type": "Authenticate", "tokenType": "Admin",
                          "value": self.db.upstream["admin_key"],
                          "baseVersion": auth.get("baseVersion", 0)})
        return dumps(auth)

    async def _refuse(self, refused: _Refused) -> None:
        try:
            await self.send(dumps(login_refusal(refused.reject, refused.base_version)))
        except Exception:
            pass
        await self._shutdown(1008)

    # -- relay -------------------------------------------------------------------------------
    async def send(self, text: str, end: dict[str, Any] | None = None) -> None:
        async with self.lock:
            await self.ws.send_text(text)
            if end is not None:
                self.last_end = end
            self.last_sent = time.monotonic()

    async def _from_client(self) -> None:
        ws, up = self.ws, self.upstream
        try:
            while True:
                text = await ws.receive_text()
                out = await self._client_message(text)
                if out is not None:
                    await up.send(out)
        except (WebSocketDisconnect, websockets.ConnectionClosed, RuntimeError):
            return
        except MALFORMED as exc:
            # Not the protocol: a FatalError (the client restarts the protocol), once, with
            # no traceback; the socket ends, other clients are untouched.
            log.info("malformed sync message from %s: %s", self.peer, exc,
                     extra={"tenant": self.tenant})
            try:
                await self.send(dumps({"type": "FatalError",
                                       "error": "malformed sync message"}))
            except Exception:
                pass

    async def _from_upstream(self) -> None:
        try:
            async for text in self.upstream:
                if isinstance(text, bytes):
                    text = text.decode()
                await self._upstream_message(text)
        except websockets.ConnectionClosed:
            pass
        except MALFORMED as exc:  # a deployment (or something posing as one) off protocol
            log.warning("malformed sync message from the Convex deployment of %s/%s: %s",
                        self.tenant, self.dbname, exc)
        except (WebSocketDisconnect, RuntimeError):
            return
        # The deployment went away: tell the client (it restarts the protocol and reconnects).
        # After its own AuthError (a user JWT it rejected) the client restarts already.
        if not self.closed and not self.auth_failed:
            try:
                await self.send(dumps({"type": "FatalError",
                                       "error": "unavailable: the Convex deployment closed the "
                                                "connection"}))
            except Exception:
                pass

    async def _client_message(self, text: str) -> str | None:
        msg = json.loads(text)
        kind = msg.get("type")
        if kind == "ModifyQuerySet":
            return await self._modify(msg, text)
        if kind == "Mutation" or kind == "Action":
            return text if await self._call(msg, kind, len(text)) else None
        if kind == "Authenticate":
            token = str(msg.get("value") or "")
            platform = bool(token) and ConvexBackend.token_matches(self.db, token)
            user = self.passthrough and msg.get("tokenType") in ("User", "None")
            if not platform and not user:
                await self.send(dumps({"type": "AuthError", "error": BAD_TOKEN,
                                       "baseVersion": msg.get("baseVersion", 0)}))
                raise WebSocketDisconnect(1008)
            return self._authenticate(msg)
        return text

    def _op(self, kind: str, path: str, size: int) -> Operation:
        return Operation(self.session, kind, path, path, size)  # type: ignore[arg-type]

    async def _admit(self, op: Operation) -> Reject | None:
        chain = self.ctx.chain
        if chain is None:
            return None
        rej = await chain.try_admit(op)
        if rej is not None:
            chain.complete(op)
            self.door.metrics.rejected += 1
            self.door.meter.call(self.tenant, self.dbname, op.text or "", duration=0.0,
                                 bytes_in=op.size, bytes_out=0, error=False, rejected=True)
        return rej

    def _tier(self) -> str | None:
        tier = self.session.tier if self.session is not None else None
        return tier.name if tier is not None else None

    async def _modify(self, msg: dict[str, Any], text: str) -> str:
        mods = msg.get("modifications") or []
        adds = sum(1 for m in mods if m.get("type") == "Add") or 1
        size = len(text) // adds
        keep: list[dict[str, Any]] = []
        changed = False
        version = int(msg.get("newVersion", 0) or 0)
        for m in mods:
            kind = m.get("type")
            if kind == "Add":
                qid = m.get("queryId")
                path = _udf_path(m)
                op = self._op("query", path, size)
                rej = await self._admit(op)
                if rej is not None:
                    changed = True
                    self.refused_queries.add(qid)
                    self.inject.append((version, {
                        "type": "QueryFailed", "queryId": qid, "errorMessage": rej.message,
                        "errorData": error_data(rej, self._tier()), "logLines": []}))
                    continue
                op.canceller = lambda reject, qid=qid: self._cancel_query(qid, reject)
                self.queries[qid] = _Query(path, op, time.monotonic())
            elif kind == "Remove":
                qid = m.get("queryId")
                if qid in self.refused_queries:
                    self.refused_queries.discard(qid)
                    changed = True
                    continue
                query = self.queries.pop(qid, None)
                if query is not None:
                    self._end_query(query)
            keep.append(m)
        if not changed:
            return text
        msg["modifications"] = keep
        return dumps(msg)

    async def _call(self, msg: dict[str, Any], kind: str, size: int) -> bool:
        rid = msg.get("requestId")
        path = _udf_path(msg)
        op = self._op("mutation" if kind == "Mutation" else "action", path, size)
        rej = await self._admit(op)
        if rej is not None:
            await self._answer_failed(rid, f"{kind}Response", rej)
            return False
        op.canceller = lambda reject, rid=rid: self._cancel(rid, reject)
        self.requests[rid] = (op, f"{kind}Response")
        return True

    async def _answer_failed(self, rid: Any, kind: str, rej: Reject) -> None:
        await self.send(dumps({"type": kind, "requestId": rid, "success": False,
                               "result": rej.message, "logLines": [],
                               "errorData": error_data(rej, self._tier())}))
        # An empty Transition from the last version to itself: the client resolves a failed
        # call with errorData at the next Transition.
        await self.send_transition([])

    async def send_transition(self, mods: list[dict[str, Any]]) -> None:
        """A Transition of the gateway's own from the last version sent to itself. Built
        under the send lock, so a deployment's Transition cannot slip in between and make
        its ``startVersion`` stale (the client would reconnect on the mismatch)."""
        async with self.lock:
            end = self.last_end
            await self.ws.send_text(dumps({"type": "Transition", "startVersion": end,
                                           "endVersion": end, "modifications": mods}))
            self.last_sent = time.monotonic()

    def _cancel(self, rid: Any, reject: Reject) -> None:
        """The timeout layer's canceller: answer the call now, drop the late reply."""
        entry = self.requests.pop(rid, None)
        if entry is None:
            return
        op, kind = entry
        op.rejection = op.rejection or reject
        self.cancelled.add(rid)
        self._complete(op, 0, None)
        self._spawn(self._answer_failed(rid, kind, reject))
        self._idle()

    def _cancel_query(self, qid: Any, reject: Reject) -> None:
        """The timeout layer's canceller for a query whose first result is late: answer it
        ``QueryFailed`` now (in a Transition of the gateway's own) and drop the
        deployment's later updates of it until the client removes it."""
        query = self.queries.get(qid)
        if query is None or query.op is None:
            return
        op, query.op = query.op, None
        op.rejection = op.rejection or reject
        self._complete(op, 0, None)
        self.timed_out.add(qid)
        self._spawn(self.send_transition([{
            "type": "QueryFailed", "queryId": qid, "errorMessage": reject.message,
            "errorData": error_data(reject, self._tier()), "logLines": []}]))

    async def _upstream_message(self, text: str) -> None:
        msg = json.loads(text)
        kind = msg.get("type")
        if kind == "Transition":
            end = msg.get("endVersion")
            mods = msg.get("modifications") or []
            if self.timed_out:
                kept = self._drop_timed_out(mods)
                if len(kept) != len(mods):
                    msg["modifications"] = mods = kept
                    text = dumps(msg)
            share = len(text) // (len(mods) or 1)
            for m in mods:
                query = self.queries.get(m.get("queryId"))
                if query is None:
                    continue
                op = query.op
                if op is not None:
                    query.op = None
                    self._complete(op, share, "QueryFailed" if m.get("type") == "QueryFailed"
                                   else None)
                else:
                    self.door.meter.pushed(self.tenant, self.dbname, query.path, share)
            if self.inject and isinstance(end, dict):
                reached = int(end.get("querySet", 0) or 0)
                due = [m for v, m in self.inject if v <= reached]
                if due:
                    self.inject = [(v, m) for v, m in self.inject if v > reached]
                    msg["modifications"] = [*mods, *due]
                    text = dumps(msg)
            await self.send(text, end if isinstance(end, dict) else None)
            return
        if kind == "MutationResponse" or kind == "ActionResponse":
            rid = msg.get("requestId")
            if rid in self.cancelled:
                self.cancelled.discard(rid)
                return  # answered already (timeout)
            entry = self.requests.pop(rid, None)
            if entry is not None:
                self._complete(entry[0], len(text), None if msg.get("success") else "error")
            await self.send(text)
            self._idle()
            return
        if kind == "AuthError":
            self.auth_failed = True
        await self.send(text)

    def _drop_timed_out(self, mods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Updates of queries the gateway failed for their timeout are not relayed (the
        client saw them fail); their QueryRemoved ends that."""
        keep = []
        for m in mods:
            qid = m.get("queryId")
            if qid in self.timed_out:
                if m.get("type") != "QueryRemoved":
                    continue
                self.timed_out.discard(qid)
            keep.append(m)
        return keep

    # -- accounting --------------------------------------------------------------------------
    def _complete(self, op: Operation, nbytes: int, error: str | None) -> None:
        op.ended = time.monotonic()
        op.bytes_out = nbytes
        op.error = error
        chain = self.ctx.chain
        if chain is not None:
            chain.complete(op)
        metrics = self.door.metrics
        rejected = op.rejection is not None
        if rejected:
            metrics.rejected += 1
        elif error is not None:
            metrics.error += 1
        else:
            metrics.ok += 1
        self.door.meter.call(self.tenant, self.dbname, op.text or "", duration=op.duration,
                             bytes_in=op.size, bytes_out=nbytes, error=error is not None,
                             rejected=False)

    def _end_query(self, query: _Query) -> None:
        if query.op is not None:
            op, query.op = query.op, None
            self._complete(op, 0, None)
        self.door.meter.subscribed(self.tenant, self.dbname, query.path,
                                   time.monotonic() - query.added)

    def _finish_all(self) -> None:
        for op, _kind in list(self.requests.values()):
            self._complete(op, 0, "disconnected")
        self.requests.clear()
        for query in list(self.queries.values()):
            self._end_query(query)
        self.queries.clear()

    def _idle(self) -> None:
        if not self.requests:
            self.door.clients.idle(self)

    # -- closing -----------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_with(self, reject: Reject) -> None:
        if self.closed:
            return
        try:
            await self.send(dumps(login_refusal(reject) if reject.reason in (
                Reason.AUTH, Reason.UNKNOWN) else
                {"type": "FatalError", "error": f"{reject.reason}: {reject.message}"}))
        except Exception:
            pass
        await self._shutdown(1012 if reject.reason == Reason.SHUTDOWN else 1008)

    async def _shutdown(self, code: int) -> None:
        self.closed = True
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            try:
                await upstream.close()
            except Exception:
                pass
        try:
            await self.ws.close(code)
        except Exception:
            pass
