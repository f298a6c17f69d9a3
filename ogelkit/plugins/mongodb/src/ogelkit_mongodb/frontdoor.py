"""The MongoDB front door: OP_MSG server on asyncio ``Protocol`` callbacks.

Connection path (docs/dev/frontdoors.md): ``hello`` works before authentication (drivers and
their monitors call it first; monitor connections never authenticate and never become
sessions). SCRAM-SHA-256 via ``saslStart``/``saslContinue`` or ``speculativeAuthenticate`` in
``hello`` identifies the tenant (the user name); then the chain admits the connection. Every
later command is one ``Operation``: admitted by the chain, refused, answered locally, or
rewritten (``$db`` and the few namespaces commands carry) and multiplexed onto the backend's
upstream pool; the reply comes back with names mapped back to the tenant's.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

import bson

from ogelkit import FrontDoor, Reason, Reject, Session
from ogelkit.runtime import bind_host
from ogelkit.scram import ScramError, ScramServer
from ogelkit_mongodb import bsonraw, commands, errors, wire
from ogelkit_mongodb.bsonraw import BsonError
from ogelkit_mongodb.commands import Refusal
from ogelkit_mongodb.request import MongoOperation, Request
from ogelkit_mongodb.upstream import DECODE_OPTIONS, UpstreamConnection, Waiter

if TYPE_CHECKING:
    from ogelkit.control.records import DatabaseRecord
    from ogelkit.directory import TenantEntry
    from ogelkit_mongodb.backend import MongoBackend

log = logging.getLogger("ogelkit.mongodb")

MAX_WIRE_VERSION = 21  # MongoDB 7.0: the newest command set the gateway maps
_client_ids = itertools.count(1)
_I32 = bsonraw.i32


class MongoFrontDoor(FrontDoor):
    protocol = "mongodb"
    default_port = 27017

    def __init__(self, context: Any, *, host: str, port: int, backends: list[Any]):
        super().__init__(context, host=host, port=port, backends=backends)
        self.clients: set[MongoClient] = set()
        self.server: asyncio.AbstractServer | None = None
        self.backend_ids = {b.name for b in backends}
        self.max_message = max(b.config.max_message_size for b in backends)
        m = context.metrics
        self.m_conn = {o: m.connections.labels("mongodb", o)
                       for o in ("accepted", "rejected", "auth_failed", "error")}
        self.m_active = m.connections_active.labels("mongodb")
        self.m_ops = {o: m.operations.labels("mongodb", o) for o in ("ok", "error", "rejected")}

    async def start(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: MongoClient(self), bind_host(self.host),
                                               self.port, reuse_address=True)
        return [(s.getsockname()[0], s.getsockname()[1]) for s in self.server.sockets]

    async def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self) -> None:
        while self.clients:
            for client in list(self.clients):
                if client.idle:
                    client.close()
            await asyncio.sleep(0.05)

    async def close(self, reason: Reject) -> None:
        for client in list(self.clients):
            client.close_with(reason)

    def stats(self) -> dict[str, Any]:
        return {"clients": len(self.clients),
                "authenticated": sum(1 for c in self.clients if c.authenticated)}

    # -- what hello advertises ---------------------------------------------------------------
    def server_limits(self) -> dict[str, Any]:
        infos = [b.server_info for b in self.backends]
        out: dict[str, Any] = {
            "maxBsonObjectSize": min(i["maxBsonObjectSize"] for i in infos),
            "maxMessageSizeBytes": min(min(i["maxMessageSizeBytes"] for i in infos),
                                       self.max_message),
            "maxWriteBatchSize": min(i["maxWriteBatchSize"] for i in infos),
        }
        timeouts = [i.get("logicalSessionTimeoutMinutes") for i in infos]
        if all(t is not None for t in timeouts):
            out["logicalSessionTimeoutMinutes"] = min(timeouts)  # type: ignore[type-var]
        out["minWireVersion"] = 0
        out["maxWireVersion"] = min(MAX_WIRE_VERSION, *(i["maxWireVersion"] for i in infos))
        return out


class MongoClient(asyncio.Protocol):
    """One client connection."""

    def __init__(self, fd: MongoFrontDoor):
        self.fd = fd
        self.ctx = fd.context
        self.id = next(_client_ids)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buf = bytearray()
        self.busy = False  # a command is being answered: later ones wait in buf
        self.paused = False
        self.closed = False
        self._draining = False
        self._reply_ids = itertools.count(1)
        self.session: Session | None = None
        self.entry: TenantEntry | None = None
        self.authenticated = False
        self.admitted = False
        self.databases: dict[str, DatabaseRecord] = {}
        self.unmap: dict[str, str] = {}  # upstream database name -> the tenant's name
        self.scram: ScramServer | None = None
        self.scram_done = False
        self.skip_empty = False
        self.auth_db = "admin"
        self.op: MongoOperation | None = None
        self.task: asyncio.Task[None] | None = None
        self.refreshed_at = 0.0

    @property
    def idle(self) -> bool:
        return not self.busy and self.task is None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            host, port = peer[0], peer[1]
            self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.fd.clients.add(self)
        self.fd.m_active.inc()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.busy and not self.buf and len(data) >= 16:
            n = _I32(data, 0)[0]
            if n == len(data) and n <= self.fd.max_message:
                self._message(data)
                return
        self.buf += data
        self._process()

    def _process(self) -> None:
        if self._draining:
            return  # the outer loop continues
        self._draining = True
        try:
            buf = self.buf
            while not self.busy and not self.closed and len(buf) >= 16:
                n = _I32(buf, 0)[0]
                if n < 16 or n > self.fd.max_message:
                    self._fatal(_I32(buf, 4)[0], errors.MESSAGE_TOO_LARGE if n > 16 else
                                errors.FAILED_TO_PARSE,
                                f"message of {n} bytes is over the gateway's limit of "
                                f"{self.fd.max_message} bytes" if n > 16 else
                                f"invalid message length {n}")
                    return
                if len(buf) < n:
                    break
                msg = bytes(buf[:n])
                del buf[:n]
                self._message(msg)
            if self.busy and not self.paused and len(buf) > self.fd.max_message:
                self.paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        finally:
            self._draining = False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self.transport is None:
            return
        self.closed = True
        self.fd.clients.discard(self)
        self.fd.m_active.dec()
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
        op = self.op
        if op is not None and op.ended is None:
            self._abandon_upstream(op)
            op.error = "ClientDisconnected"
            self._complete(op)
        session = self.session
        if session is not None:
            self.ctx.sessions.discard(session)
            session.closed_at = time.monotonic()
            self.ctx.chain.disconnect(session)
        self.transport = None

    # -- writing -----------------------------------------------------------------------------
    def _send_parts(self, response_to: int, parts: list[Any], size: int) -> int:
        header = wire._MSG_PREFIX.pack(21 + size, next(self._reply_ids), response_to,
                                       wire.OP_MSG, 0) + b"\x00"
        if self.transport is not None and not self.closed:
            # One write: writelines() of small pieces costs a send() (and a packet) per piece.
            self.transport.write(b"".join((header, *parts)))
        if self.session is not None:
            self.session.bytes_out += 21 + size
        return 21 + size

    def _send_doc(self, response_to: int, doc: dict[str, Any]) -> int:
        body = bson.encode(doc)
        return self._send_parts(response_to, [body], len(body))

    def _fatal(self, request_id: int, code: tuple[int, str], message: str) -> None:
        """A malformed or oversized message: say why, then close this client only."""
        log.info("closing mongodb client %s: %s", self.peer, message,
                 extra={"tenant": self.session.tenant_slug if self.session else None})
        self.fd.m_conn["error"].inc()
        self._send_doc(request_id, errors.error_doc(code, message))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            asyncio.get_running_loop().call_later(5.0, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close_with(self, reason: Reject) -> None:
        """``session.closer``: answer the command in flight with ``reason``, then close."""
        op = self.op
        if op is not None and op.ended is None:
            self._abandon_upstream(op)
            op.rejection = op.rejection or reason
            self._send_doc(op.request.request_id, errors.reject_doc(reason))
            self._finish(op)
        self.close()

    # -- dispatch ----------------------------------------------------------------------------
    def _message(self, msg: bytes) -> None:
        if self.session is not None:
            self.session.bytes_in += len(msg)
        opcode = _I32(msg, 12)[0]
        request_id = _I32(msg, 4)[0]
        if opcode == wire.OP_MSG:
            try:
                m = wire.parse_op_msg(msg)
                name, index = self._index(msg, m.body_start)
            except (wire.ProtocolError, BsonError, ValueError) as exc:
                self._fatal(request_id, errors.FAILED_TO_PARSE, str(exc))
                return
            self._command(m, name, index)
        elif opcode == wire.OP_QUERY:
            self._legacy(msg, request_id)
        elif opcode == wire.OP_COMPRESSED:
            self._fatal(request_id, errors.FAILED_TO_PARSE,
                        "OP_COMPRESSED was not negotiated: the gateway does not compress")
        else:
            self._fatal(request_id, errors.FAILED_TO_PARSE, f"unsupported opcode {opcode}")

    @staticmethod
    def _index(msg: bytes, start: int) -> tuple[str, dict[str, tuple[int, int, int, int]]]:
        index = bsonraw.index(msg, start)
        if not index:
            raise BsonError("empty command document")
        return next(iter(index)), index

    def _command(self, m: wire.OpMsg, name: str, index: dict[str, Any]) -> None:
        data = m.data
        el = index.get("$db")
        if el is None or el[0] != bsonraw.STRING:
            self._send_doc(m.request_id, errors.error_doc(
                (40571, "Location40571"), "OP_MSG requests require a $db argument"))
            return
        db = bsonraw.read_string(data, el[2])
        if name in ("hello", "isMaster", "ismaster"):
            doc = bson.decode(data[m.body_start:m.body_end])
            self._hello(doc, name, lambda d: self._send_doc(m.request_id, d))
            return
        if name in ("saslStart", "saslContinue"):
            doc = bson.decode(data[m.body_start:m.body_end])
            self._sasl(name, doc, db, lambda d: self._send_doc(m.request_id, d))
            return
        if not self.authenticated:
            if name in commands.LOCAL_ANY_TIME:
                self._send_doc(m.request_id, self._local(name, db))
            else:
                self._send_doc(m.request_id, errors.error_doc(
                    errors.UNAUTHORIZED, f"command {name} requires authentication"))
            return
        self._operation(m, name, index, db)

    # -- hello and the legacy handshake --------------------------------------------------------
    def _hello(self, doc: dict[str, Any], name: str, respond: Any) -> None:
        reply: dict[str, Any] = {}
        if doc.get("helloOk"):
            reply["helloOk"] = True
        reply["isWritablePrimary" if name == "hello" else "ismaster"] = True
        reply.update(self.fd.server_limits())
        reply["localTime"] = datetime.datetime.now(datetime.UTC)
        reply["connectionId"] = self.id
        reply["readOnly"] = False
        if "saslSupportedMechs" in doc:
            reply["saslSupportedMechs"] = ["SCRAM-SHA-256"]
        spec = doc.get("speculativeAuthenticate")
        if isinstance(spec, dict) and spec.get("saslStart") and not self.authenticated:
            def finish(auth: dict[str, Any]) -> None:
                if auth.get("ok"):
                    auth.pop("ok", None)
                    reply["speculativeAuthenticate"] = auth
                reply["ok"] = 1.0
                respond(reply)
            self._sasl("saslStart", spec, spec.get("db") or "admin", finish, speculative=True)
            return
        reply["ok"] = 1.0
        respond(reply)

    def _legacy(self, msg: bytes, request_id: int) -> None:
        try:
            q = wire.parse_op_query(msg)
        except wire.ProtocolError as exc:
            self._fatal(request_id, errors.FAILED_TO_PARSE, str(exc))
            return
        name = next(iter(q.query), "")

        def respond(doc: dict[str, Any]) -> None:
            failure = not doc.get("ok")
            if failure:
                doc = {"$err": doc.get("errmsg", ""), **doc}
            out = wire.op_reply(next(self._reply_ids), request_id, doc, failure=failure)
            if self.transport is not None and not self.closed:
                self.transport.write(out)

        if name.lower() in ("ismaster", "hello") and q.collection.endswith(".$cmd"):
            self._hello(q.query, "hello" if name == "hello" else "isMaster", respond)
        else:
            respond(errors.error_doc((352, "UnsupportedOpQueryCommand"),
                                     "OP_QUERY is only supported for the hello handshake; "
                                     "use a driver that speaks OP_MSG (MongoDB 3.6+)"))

    # -- authentication ----------------------------------------------------------------------
    def _sasl(self, name: str, doc: dict[str, Any], db: str, respond: Any, *,
              speculative: bool = False) -> None:
        if self.task is not None:
            respond(errors.error_doc(errors.BAD_VALUE, "an authentication is already running"))
            return
        self.busy = True
        coro = self._sasl_start(doc, db) if name == "saslStart" else self._sasl_continue(doc)
        self.task = asyncio.get_running_loop().create_task(coro)

        def done(task: asyncio.Task[tuple[dict[str, Any], bool]]) -> None:
            self.task = None
            if task.cancelled() or self.closed:
                return
            try:
                reply, close = task.result()
            except Exception as exc:
                log.exception("mongodb authentication failed unexpectedly")
                reply, close = errors.error_doc(errors.INTERNAL_ERROR, f"internal error: {exc}"), True
            respond(reply)
            self.busy = False
            if close:
                self.close()
            else:
                self._resume()

        self.task.add_done_callback(done)

    async def _sasl_start(self, doc: dict[str, Any], db: str) -> tuple[dict[str, Any], bool]:
        if self.authenticated or self.session is not None:
            return errors.error_doc(errors.AUTHENTICATION_FAILED,
                                    "this connection already authenticated; open a new one to "
                                    "change users"), False
        mech = doc.get("mechanism")
        if mech != "SCRAM-SHA-256":
            return errors.error_doc(errors.AUTHENTICATION_FAILED,
                                    f"mechanism {mech} is not supported by the gateway; use "
                                    "SCRAM-SHA-256"), False
        payload = bytes(doc.get("payload") or b"")
        user = _scram_user(payload)
        session = Session("mongodb", self.peer, user=user)
        self.session = session
        self.auth_db = db
        opts = doc.get("options")
        self.skip_empty = bool(isinstance(opts, dict) and opts.get("skipEmptyExchange"))
        directory = self.ctx.directory
        try:
            entry = await directory.lookup(user)
        except Exception as exc:
            log.warning("control plane lookup failed: %s", exc)
            rej = Reject(Reason.UNAVAILABLE, "the gateway cannot reach its control plane",
                         hint="Retry in a few seconds.", retry_after=1.0)
            session.rejection = rej
            return errors.reject_doc(rej, during_auth=True), True
        self.entry = entry
        if entry is not None:
            session.tenant = entry.tenant
        try:
            self.ctx.chain.auth(session)
        except Reject as rej:
            self.fd.m_conn["rejected"].inc()
            return errors.reject_doc(rej, during_auth=True), True
        self.scram = ScramServer(directory.verifier_for(user, entry))
        try:
            server_first = self.scram.first(payload)
        except ScramError as exc:
            return self._auth_failed(str(exc)), True
        return {"conversationId": 1, "done": False, "payload": server_first.encode(),
                "ok": 1.0}, False

    def _auth_failed(self, why: str) -> dict[str, Any]:
        rej = Reject(Reason.AUTH, "Authentication failed.")
        if self.session is not None:
            self.session.rejection = rej
        self.fd.m_conn["auth_failed"].inc()
        log.info("mongodb authentication failed", extra={
            "user": self.session.user if self.session else None, "client": self.peer,
            "why": why})
        return errors.reject_doc(rej, during_auth=True)

    async def _sasl_continue(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        scram, session = self.scram, self.session
        if scram is None or session is None:
            return errors.error_doc((17, "ProtocolError"), "no SASL conversation in progress"), False
        if self.scram_done:
            self.scram = None
            return {"conversationId": 1, "done": True, "payload": b"", "ok": 1.0}, False
        try:
            server_final = scram.final(bytes(doc.get("payload") or b""))
        except ScramError as exc:
            return self._auth_failed(str(exc)), True
        entry = self.entry
        reply = {"conversationId": 1, "done": self.skip_empty, "payload": server_final.encode(),
                 "ok": 1.0}
        try:
            self._route(session, entry)
            await self.ctx.chain.connect(session)
        except Reject as rej:
            session.rejection = rej
            self.fd.m_conn["rejected"].inc()
            return errors.reject_doc(rej), True
        self.ctx.sessions.add(session)
        session.closer = self.close_with
        self.authenticated = True
        self.admitted = True
        self.fd.m_conn["accepted"].inc()
        if self.skip_empty:
            self.scram = None
        else:
            self.scram_done = True
        return reply, False

    def _route(self, session: Session, entry: TenantEntry | None) -> None:
        if entry is None:
            raise Reject(Reason.UNKNOWN, "Authentication failed.")
        if entry.tenant.suspended:
            raise Reject(Reason.SUSPENDED, f'tenant "{entry.tenant.slug}" is suspended',
                         hint="Contact the platform operator.")
        ids = self.fd.backend_ids
        dbs = {n: d for n, d in entry.databases.items() if d.kind == "mongodb" and d.backend in ids}
        if not dbs:
            raise Reject(Reason.UNKNOWN, f'tenant "{entry.tenant.slug}" has no MongoDB database',
                         hint="Create one with `ogelkit databases create "
                              f"{entry.tenant.slug} main --kind mongodb`.")
        self._set_databases(dbs)
        home = dbs.get(self.auth_db) or dbs[min(dbs)]
        session.tier = entry.tier
        session.database = home.name
        session.db = home
        session.backend = self.ctx.backends[home.backend]

    def _set_databases(self, dbs: dict[str, DatabaseRecord]) -> None:
        self.databases = dbs
        self.unmap = {d.upstream.get("database", ""): n for n, d in dbs.items()}

    # -- operations --------------------------------------------------------------------------
    def _operation(self, m: wire.OpMsg, name: str, index: dict[str, Any], db: str) -> None:
        session = self.session
        assert session is not None
        req = Request(name, m.request_id, db)
        op = MongoOperation(session, commands.bounded_name(name), len(m.data), req)
        session.operations += 1
        self.op = op
        self.busy = True
        try:
            self._plan(req, m, index, db)
        except UnknownDatabase as r:
            if time.monotonic() - self.refreshed_at > 1.0:
                # Maybe provisioned since this client connected: look again, then retry.
                self.task = asyncio.get_running_loop().create_task(
                    self._refresh_then_plan(op, m, index, db))
            else:
                self._refuse(op, m, r)
            return
        except Refusal as r:
            self._refuse(op, m, r)
            return
        self._admit(op, m)

    async def _refresh_then_plan(self, op: MongoOperation, m: wire.OpMsg, index: dict[str, Any],
                                 db: str) -> None:
        self.refreshed_at = time.monotonic()
        session = self.session
        try:
            entry = await self.ctx.directory.lookup(session.tenant_slug or "")  # type: ignore[union-attr]
            if entry is not None:
                ids = self.fd.backend_ids
                self._set_databases({n: d for n, d in entry.databases.items()
                                     if d.kind == "mongodb" and d.backend in ids})
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.warning("control plane lookup failed: %s", exc)
        self.task = None
        if op.ended is not None or self.closed:
            return
        try:
            self._plan(op.request, m, index, db)
        except Refusal as r:
            self._refuse(op, m, r)
            return
        self._admit(op, m)

    def _refuse(self, op: MongoOperation, m: wire.OpMsg, r: Refusal) -> None:
        op.rejection = Reject(Reason.FORBIDDEN, r.message)
        if not m.more_to_come:
            self._send_doc(op.request.request_id, errors.error_doc(r.code, r.message))
        self._finish(op)

    def _admit(self, op: MongoOperation, m: wire.OpMsg) -> None:
        req = op.request
        if m.more_to_come and req.local is not None:
            self._finish(op)  # nothing to answer
            return
        try:
            pending = self.ctx.chain.admit(op)
        except Reject as rej:
            self._reject(op, rej)
            return
        except Exception as exc:
            log.exception("layer chain failed to admit %r", op)
            self._reject(op, Reject(Reason.UNAVAILABLE, f"internal error in the gateway: {exc}"))
            return
        op.canceller = self._cancel
        if pending is None:
            self._execute(op)
        else:
            self.task = asyncio.get_running_loop().create_task(self._admit_later(op, pending))

    async def _admit_later(self, op: MongoOperation, pending: Any) -> None:
        try:
            await pending
        except Reject as rej:
            self.task = None
            self._reject(op, rej)
            return
        except asyncio.CancelledError:
            return  # cancelled by the timeout layer or a closing client: already answered
        except Exception as exc:
            self.task = None
            log.exception("layer chain failed to admit %r", op)
            self._reject(op, Reject(Reason.UNAVAILABLE, f"internal error in the gateway: {exc}"))
            return
        self.task = None
        if op.ended is None and not self.closed:
            self._execute(op)

    def _reject(self, op: MongoOperation, rej: Reject) -> None:
        op.rejection = op.rejection or rej
        if not (op.request.flags & wire.MORE_TO_COME):
            self._send_doc(op.request.request_id, errors.reject_doc(rej))
        self._finish(op)

    def _execute(self, op: MongoOperation) -> None:
        req = op.request
        if req.local is not None:
            n = self._send_doc(req.request_id, req.local) if not (req.flags & wire.MORE_TO_COME) else 0
            op.bytes_out = n
            self._finish(op)
        elif req.run is not None:
            self.task = asyncio.get_running_loop().create_task(self._run_local(op))
        else:
            backend = req.backend
            assert backend is not None
            op.upstream = backend.pool.submit(req.parts, self._on_reply)

    async def _run_local(self, op: MongoOperation) -> None:
        req = op.request
        try:
            doc = await req.run()
        except asyncio.CancelledError:
            return
        except Refusal as r:
            doc = errors.error_doc(r.code, r.message)
            op.error = str(r.code[0])
        except Exception as exc:
            log.warning("mongodb %s failed: %s", req.name, exc)
            doc = errors.error_doc(errors.HOST_UNREACHABLE, f"upstream unavailable: {exc}")
            op.error = "6"
        self.task = None
        if op.ended is not None or self.closed:
            return
        op.bytes_out = self._send_doc(req.request_id, doc)
        self._finish(op)

    def _on_reply(self, reply: bytes | None, err: str | None) -> None:
        op = self.op
        if op is None or op.ended is not None:
            return
        op.upstream = None
        req = op.request
        if reply is None:
            op.error = "6"
            doc = errors.error_doc(errors.HOST_UNREACHABLE, f"upstream unavailable: {err}",
                                   hint="Retry; the gateway reconnects as soon as the server "
                                        "is back.")
            if not (req.flags & wire.MORE_TO_COME):
                op.bytes_out = self._send_doc(req.request_id, doc)
        else:
            try:
                parts, size = self._map_reply(op, reply)
            except Exception as exc:  # a reply we cannot read must not take the gateway down
                log.exception("unreadable upstream reply to %s", req.name)
                op.error = "1"
                parts = [bson.encode(errors.error_doc(errors.INTERNAL_ERROR,
                                                      f"unreadable upstream reply: {exc}"))]
                size = len(parts[0])
            if not (req.flags & wire.MORE_TO_COME):
                op.bytes_out = self._send_parts(req.request_id, parts, size)
        self._finish(op)

    def _finish(self, op: MongoOperation) -> None:
        self._complete(op)
        self.op = None
        self.busy = False
        self._resume()

    def _complete(self, op: MongoOperation) -> None:
        op.ended = time.monotonic()
        self.fd.m_ops[op.outcome].inc()
        self.ctx.chain.complete(op)

    def _resume(self) -> None:
        if self.closed:
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self.buf:
            self._process()

    # -- cancel (timeout layer) ----------------------------------------------------------------
    def _cancel(self, reject: Reject) -> None:
        op = self.op
        if op is None or op.ended is not None or self.closed:
            return
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
        self._abandon_upstream(op)
        op.rejection = op.rejection or reject
        if not (op.request.flags & wire.MORE_TO_COME):
            op.bytes_out = self._send_doc(op.request.request_id, errors.reject_doc(reject))
        self._finish(op)

    def _abandon_upstream(self, op: MongoOperation) -> None:
        up, op.upstream = op.upstream, None
        if isinstance(up, Waiter):
            up.callback = None  # never sent
        elif isinstance(up, UpstreamConnection):
            backend = op.request.backend
            if backend is not None:
                backend.stop_running(up)

    # -- planning: refuse, answer locally, or rewrite for the upstream -------------------------
    def _plan(self, req: Request, m: wire.OpMsg, index: dict[str, Any], db: str) -> None:
        name = req.name
        data = m.data
        req.flags = m.flags
        if name in commands.LOCAL_ANY_TIME:
            req.local = self._local(name, db)
            return
        if commands.is_server_level(name):
            raise Refusal(errors.UNAUTHORIZED, f"{name} is a server-level command: the gateway "
                                               "does not let tenants run it")
        if db == "admin":
            self._plan_admin(req, m, index)
            return
        mode = commands.FORWARD.get(name)
        if mode is None:
            raise Refusal(errors.COMMAND_NOT_FOUND, f"no such command: '{name}' (the gateway "
                                                    "forwards only commands it knows)")
        record = self._record(db)
        req.mode = mode
        req.record = record
        backend: MongoBackend = self.ctx.backends[record.backend]
        req.backend = backend
        req.upstream_db = record.upstream["database"]
        req.body = data[m.body_start:m.body_end]
        edits: list[bsonraw.Edit] = []
        el = index["$db"]
        edits.append((el[2], el[3], _string_value(req.upstream_db)))
        if name in backend.max_time_commands:
            self._max_time(index, m, edits)
        if name == "getMore":
            self._plan_get_more(req, index, data)
        elif name == "killCursors":
            if self._plan_kill_cursors(req, index, data, edits):
                return
        elif name == "aggregate" or name in ("create", "collMod"):
            self._map_array(index.get("pipeline"), data, edits)
        elif name == "explain":
            self._plan_explain(index, data, edits, backend)
        elif name == "dataSize":
            t, _e, v, q = index["dataSize"]
            if t == bsonraw.STRING:
                edits.append((v, q, _string_value(self._map_ns(bsonraw.read_string(data, v)))))
        self._build(req, m, edits)

    def _build(self, req: Request, m: wire.OpMsg, edits: list[bsonraw.Edit]) -> None:
        data = m.data
        parts, size = bsonraw.splice(data, m.body_start, m.body_end, edits)
        view = memoryview(data)
        for _ident, s, e in m.sequences:
            parts.append(view[s:e])
            size += e - s
        flags = m.flags & ~(wire.CHECKSUM_PRESENT | wire.MORE_TO_COME | wire.EXHAUST_ALLOWED)
        assert req.backend is not None
        req.parts = wire.op_msg_parts(req.backend.pool.next_request_id(), 0, flags, parts, size)

    def _record(self, db: str) -> DatabaseRecord:
        record = self.databases.get(db)
        if record is None:
            mine = ", ".join(sorted(self.databases)) or "none"
            slug = self.session.tenant_slug if self.session else "<tenant>"
            raise UnknownDatabase(errors.UNAUTHORIZED,
                          f"database '{db}' is not one of your databases (yours: {mine}); "
                          f"provision it with `ogelkit databases create {slug} {db} "
                          "--kind mongodb`")
        return record

    def _map_db(self, db: str) -> str:
        return self._record(db).upstream["database"]

    def _map_ns(self, ns: str) -> str:
        db, dot, coll = ns.partition(".")
        if not dot:
            raise Refusal(errors.INVALID_NAMESPACE, f"invalid namespace '{ns}'")
        return f"{self._map_db(db)}.{coll}"

    def _max_time(self, index: dict[str, Any], m: wire.OpMsg, edits: list[bsonraw.Edit]) -> None:
        session = self.session
        limit_text = session.settings.get("maxTimeMS") if session is not None else None
        if not limit_text:
            return
        limit = int(limit_text)
        # int32 when it fits, as drivers send it.
        element = (bsonraw.int32_element("maxTimeMS", limit) if limit < 2**31
                   else bsonraw.int64_element("maxTimeMS", limit))
        el = index.get("maxTimeMS")
        if el is None:
            edits.append((m.body_end - 1, m.body_end - 1, element))
            return
        current = bsonraw.read_number(m.data, el[0], el[2])
        if current is None or current <= 0 or current > limit:
            edits.append((el[1], el[3], element))

    def _map_array(self, el: Any, data: bytes, edits: list[bsonraw.Edit]) -> None:
        if el is None or el[0] != bsonraw.ARRAY:
            return
        stages_doc = bson.decode(data[el[2]:el[3]])
        stages = list(stages_doc.values())
        if commands.map_pipeline(stages, self._map_db):
            edits.append((el[2], el[3], bson.encode({str(i): s for i, s in enumerate(stages)})))

    def _plan_explain(self, index: dict[str, Any], data: bytes, edits: list[bsonraw.Edit],
                      backend: MongoBackend) -> None:
        t, _e, v, q = index["explain"]
        if t != bsonraw.DOCUMENT:
            return
        inner = bson.decode(data[v:q])
        inner_name = next(iter(inner), "")
        if commands.is_server_level(inner_name) or inner_name not in commands.FORWARD:
            raise Refusal(errors.UNAUTHORIZED, f"explain of {inner_name or 'nothing'} is not "
                                               "available through the gateway")
        if inner_name == "aggregate" and commands.map_pipeline(inner.get("pipeline"), self._map_db):
            edits.append((v, q, bson.encode(inner)))

    def _plan_get_more(self, req: Request, index: dict[str, Any], data: bytes) -> None:
        t, _e, v, _q = index["getMore"]
        cursor_id = bsonraw.i64(data, v)[0] if t == bsonraw.INT64 else bsonraw.read_number(data, t, v)
        session = self.session
        assert req.backend is not None and session is not None
        if cursor_id is None or req.backend.cursors.owned(int(cursor_id), session.tenant_slug) is None:
            raise Refusal(errors.CURSOR_NOT_FOUND, f"cursor id {cursor_id} not found")
        req.cursor_id = int(cursor_id)

    def _plan_kill_cursors(self, req: Request, index: dict[str, Any], data: bytes,
                           edits: list[bsonraw.Edit]) -> bool:
        """True when answered locally (no cursor of this tenant among them)."""
        el = index.get("cursors")
        if el is None or el[0] != bsonraw.ARRAY:
            return False
        ids = [int(x) for x in bson.decode(data[el[2]:el[3]]).values()]
        assert req.backend is not None and self.session is not None
        table, tenant = req.backend.cursors, self.session.tenant_slug
        mine = [i for i in ids if table.owned(i, tenant) is not None]
        req.extra_not_found = [i for i in ids if i not in mine]
        for i in mine:
            table.remove(i)
        if not mine:
            req.local = {"cursorsKilled": [], "cursorsNotFound": [bson.Int64(i) for i in ids],
                         "cursorsAlive": [], "cursorsUnknown": [], "ok": 1.0}
            return True
        if req.extra_not_found:
            edits.append((el[2], el[3], bson.encode({str(i): bson.Int64(c)
                                                     for i, c in enumerate(mine)})))
        return False

    def _plan_admin(self, req: Request, m: wire.OpMsg, index: dict[str, Any]) -> None:
        name = req.name
        data = m.data
        if name not in commands.ADMIN:
            if name in commands.FORWARD:
                raise Refusal(errors.UNAUTHORIZED, f"{name} on the admin database is not "
                                                   "available through the gateway; use one of "
                                                   "your databases")
            raise Refusal(errors.COMMAND_NOT_FOUND, f"no such command: '{name}' (the gateway "
                                                    "forwards only commands it knows)")
        if name == "listDatabases":
            doc = bson.decode(data[m.body_start:m.body_end])
            req.run = lambda: self._list_databases(doc)
            return
        session = self.session
        assert session is not None and session.db is not None
        edits: list[bsonraw.Edit] = []
        record = session.db
        if name == "renameCollection":
            src_el, to_el = index.get("renameCollection"), index.get("to")
            if not src_el or not to_el or src_el[0] != bsonraw.STRING or to_el[0] != bsonraw.STRING:
                raise Refusal(errors.BAD_VALUE, "renameCollection needs 'from' and 'to' namespaces")
            src = bsonraw.read_string(data, src_el[2])
            dst = bsonraw.read_string(data, to_el[2])
            record = self._record(src.partition(".")[0])
            if self._record(dst.partition(".")[0]).backend != record.backend:
                raise Refusal(errors.BAD_VALUE, "cannot rename a collection across database "
                                                "servers")
            edits.append((src_el[2], src_el[3], _string_value(self._map_ns(src))))
            edits.append((to_el[2], to_el[3], _string_value(self._map_ns(dst))))
        req.mode = commands.GENERIC
        req.record = record
        req.backend = self.ctx.backends[record.backend]
        req.upstream_db = "admin"
        req.body = data[m.body_start:m.body_end]
        self._build(req, m, edits)

    async def _list_databases(self, doc: dict[str, Any]) -> dict[str, Any]:
        sizes: dict[str, dict[str, Any]] = {}
        by_backend: dict[str, list[str]] = {}
        for record in self.databases.values():
            by_backend.setdefault(record.backend, []).append(record.upstream["database"])
        for bid, names in by_backend.items():
            backend: MongoBackend = self.ctx.backends[bid]
            reply = await backend.pool.command("admin", {"listDatabases": 1})
            if not reply.get("ok"):
                raise Refusal((int(reply.get("code", 1)), str(reply.get("codeName", "Error"))),
                              str(reply.get("errmsg", "listDatabases failed")))
            wanted = set(names)
            for item in reply.get("databases", []):
                if item.get("name") in wanted:
                    sizes[item["name"]] = item
        out = []
        for name, record in sorted(self.databases.items()):
            up = sizes.get(record.upstream["database"], {})
            size = int(up.get("sizeOnDisk", 0))
            out.append({"name": name, "sizeOnDisk": size, "empty": bool(up.get("empty", size == 0))})
        flt = doc.get("filter")
        if isinstance(flt, dict) and flt:
            out = [d for d in out if _matches(d, flt)]
        if doc.get("nameOnly"):
            return {"databases": [{"name": d["name"]} for d in out], "ok": 1.0}
        return {"databases": out, "totalSize": sum(d["sizeOnDisk"] for d in out),
                "totalSizeMb": sum(d["sizeOnDisk"] for d in out) // (1024 * 1024), "ok": 1.0}

    def _local(self, name: str, db: str) -> dict[str, Any]:
        if name in ("ping", "endSessions", "logout"):
            return {"ok": 1.0}
        if name in ("buildInfo", "buildinfo"):
            return self._build_info()
        if name == "whatsmyuri":
            return {"you": self.peer, "ok": 1.0}
        if name == "getLog":
            return {"totalLinesWritten": 0, "log": [], "ok": 1.0}
        if name == "connectionStatus":
            users, roles = [], []
            if self.authenticated and self.session is not None:
                users = [{"user": self.session.user, "db": self.auth_db}]
                roles = [{"role": "dbOwner", "db": n} for n in sorted(self.databases)]
            return {"authInfo": {"authenticatedUsers": users, "authenticatedUserRoles": roles},
                    "ok": 1.0}
        return errors.error_doc(errors.COMMAND_NOT_FOUND, f"no such command: '{name}'")

    def _build_info(self) -> dict[str, Any]:
        info = self.fd.backends[0].build_info or {}
        version = str(info.get("version", "7.0.0"))
        parts = [int(p) if p.isdigit() else 0 for p in version.split(".")[:3]]
        limits = self.fd.server_limits()
        return {"version": version, "versionArray": [*parts, 0][:4], "gitVersion": "ogelkit",
                "modules": [], "allocator": "system", "javascriptEngine": "none",
                "sysInfo": "deprecated", "bits": 64, "debug": False,
                "maxBsonObjectSize": limits["maxBsonObjectSize"], "storageEngines": [],
                "ok": 1.0}

    # -- replies -------------------------------------------------------------------------------
    def _map_reply(self, op: MongoOperation, reply: bytes) -> tuple[list[Any], int]:
        req = op.request
        s, e = wire.reply_body(reply)
        index = bsonraw.index(reply, s)
        ok_el = index.get("ok")
        ok = bsonraw.read_number(reply, ok_el[0], ok_el[2]) if ok_el else 0
        if ok != 1:
            doc = bson.decode(reply[s:e], DECODE_OPTIONS)
            op.error = str(doc.get("code", "error"))
            if req.mode == commands.CURSOR and doc.get("code") == 43 and req.cursor_id:
                req.backend.cursors.remove(req.cursor_id)  # type: ignore[union-attr]
            body = bson.encode(self._unmap_deep(doc))
            return [body], len(body)
        mode = req.mode
        if mode == commands.CURSOR:
            return self._map_cursor_reply(op, reply, s, e, index)
        if mode == commands.WRITE or mode == commands.UPDATE:
            n = _number(reply, index.get("nModified" if mode == commands.UPDATE else "n"))
            up = index.get("upserted")
            if up is not None and up[0] == bsonraw.ARRAY:
                n += bsonraw.count(reply, up[2])
            op.written = n
            if "writeErrors" in index or "writeConcernError" in index:
                op.error = "WriteError"
                body = bson.encode(self._unmap_deep(bson.decode(reply[s:e], DECODE_OPTIONS)))
                return [body], len(body)
        elif mode == commands.COUNT:
            op.rows = _number(reply, index.get("n"))
        elif mode == commands.DISTINCT:
            el = index.get("values")
            op.rows = bsonraw.count(reply, el[2]) if el is not None and el[0] == bsonraw.ARRAY else 0
        elif mode == commands.FIND_AND_MODIFY:
            doc = bson.decode(reply[s:e], DECODE_OPTIONS)
            leo = doc.get("lastErrorObject") or {}
            op.written = int(leo.get("n", 0)) if isinstance(leo, dict) else 0
            op.rows = 0 if doc.get("value") is None else 1
        elif mode == commands.GENERIC:
            doc = bson.decode(reply[s:e], DECODE_OPTIONS)
            if req.extra_not_found:
                doc.setdefault("cursorsNotFound", []).extend(bson.Int64(i) for i in req.extra_not_found)
            body = bson.encode(self._unmap_deep(doc))
            return [body], len(body)
        return [memoryview(reply)[s:e]], e - s

    def _map_cursor_reply(self, op: MongoOperation, reply: bytes, s: int, e: int,
                          index: dict[str, Any]) -> tuple[list[Any], int]:
        req = op.request
        el = index.get("cursor")
        if el is None or el[0] != bsonraw.DOCUMENT:
            return [memoryview(reply)[s:e]], e - s
        cstart = el[2]
        cursor = bsonraw.index(reply, cstart)
        batch = cursor.get("firstBatch") or cursor.get("nextBatch")
        if batch is not None and batch[0] == bsonraw.ARRAY:
            op.rows = bsonraw.count(reply, batch[2])
        id_el = cursor.get("id")
        cursor_id = _number(reply, id_el)
        ns_el = cursor.get("ns")
        ns = bsonraw.read_string(reply, ns_el[2]) if ns_el and ns_el[0] == bsonraw.STRING else ""
        backend = req.backend
        assert backend is not None and self.session is not None
        if req.name == "getMore":
            if cursor_id == 0:
                backend.cursors.remove(req.cursor_id)
        elif cursor_id:
            backend.cursors.add(cursor_id, self.session.tenant_slug or "", ns)
        if req.name == "listCollections" and op.rows:
            return self._filter_collections(op, reply, s, e)
        edits: list[bsonraw.Edit] = []
        if ns:
            db, dot, rest = ns.partition(".")
            mine = self.unmap.get(db)
            if mine is not None:
                edits.append((ns_el[2], ns_el[3], _string_value(f"{mine}{dot}{rest}")))
        if not edits:
            return [memoryview(reply)[s:e]], e - s
        return bsonraw.splice(reply, s, e, edits, containers=(cstart,))

    def _filter_collections(self, op: MongoOperation, reply: bytes, s: int,
                            e: int) -> tuple[list[Any], int]:
        from ogelkit_mongodb.backend import MARKER
        doc = bson.decode(reply[s:e], DECODE_OPTIONS)
        cursor = doc["cursor"]
        batch = [c for c in cursor.get("firstBatch", []) if c.get("name") != MARKER]
        cursor["firstBatch"] = batch
        op.rows = len(batch)
        body = bson.encode(self._unmap_deep(doc))
        return [body], len(body)

    def _unmap_deep(self, value: Any) -> Any:
        """Upstream database names back to the tenant's, in every string (errmsg included)."""
        if isinstance(value, str):
            for up, mine in self.unmap.items():
                if up and up in value:
                    value = value.replace(up, mine)
            return value
        if isinstance(value, dict):
            return {k: self._unmap_deep(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._unmap_deep(v) for v in value]
        return value


class UnknownDatabase(Refusal):
    """A ``$db`` that is not one of the tenant's databases (as far as this client knows)."""


def _string_value(text: str) -> bytes:
    raw = text.encode()
    return bsonraw._I32.pack(len(raw) + 1) + raw + b"\0"


def _number(buf: bytes, el: tuple[int, int, int, int] | None) -> int:
    if el is None:
        return 0
    value = bsonraw.read_number(buf, el[0], el[2])
    return int(value) if value is not None else 0


def _scram_user(payload: bytes) -> str:
    """The user name of a SCRAM client-first-message (``n,,n=user,r=...``)."""
    text = payload.decode("utf-8", "replace")
    for part in text.split(","):
        if part.startswith("n=") and len(part) > 2:
            return part[2:].replace("=2C", ",").replace("=3D", "=")
    return ""


def _matches(doc: dict[str, Any], flt: dict[str, Any]) -> bool:
    """A small matcher for listDatabases filters (equality, $eq/$ne/$in/$nin/$regex)."""
    import re
    for key, cond in flt.items():
        value = doc.get(key)
        if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
            for opname, arg in cond.items():
                if opname == "$eq" and value != arg:
                    return False
                if opname == "$ne" and value == arg:
                    return False
                if opname == "$in" and value not in arg:
                    return False
                if opname == "$nin" and value in arg:
                    return False
                if opname == "$regex":
                    pattern = arg.pattern if hasattr(arg, "pattern") else str(arg)
                    if not isinstance(value, str) or not re.search(pattern, value):
                        return False
        elif value != cond:
            return False
    return True
