"""One MongoDB client connection: OP_MSG framing on asyncio ``Protocol`` callbacks.

After the handshake (``login.py``) every command is one ``Operation``: admitted by the
chain, refused, answered locally, or rewritten (``planning.py``) and multiplexed onto the
backend's upstream pool; the reply comes back with names mapped back to the tenant's
(``replies.py``).

Bounds before authentication: a message over 64 KiB is answered with an error document and
closes the connection, and a connection that sends no complete command for the door's
``handshake_timeout`` is closed. Every parser is total: malformed input is answered in
protocol (an error document; framing errors also close), logged once per connection,
without a traceback.

Closing with a reason (drain, suspension, ban): a command in flight is answered with it; an
idle connection is given a short grace during which any command it sends is answered with
the reason (code 91 ShutdownInProgress during a drain, which drivers retry elsewhere), then
it is closed cleanly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import bson

from ogelkit import Reason, Reject
from ogelkit.frontdoor import peer_address
from ogelkit_mongodb import bsonraw, commands, errors, wire
from ogelkit_mongodb.bsonraw import BsonError
from ogelkit_mongodb.commands import Refusal
from ogelkit_mongodb.local import LocalCommands
from ogelkit_mongodb.login import Handshake
from ogelkit_mongodb.planning import Planner, UnknownDatabase
from ogelkit_mongodb.replies import ReplyMapper
from ogelkit_mongodb.request import MongoOperation, Request
from ogelkit_mongodb.upstream import UpstreamConnection, Waiter

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, Session
    from ogelkit.frontdoor import Login
    from ogelkit_mongodb.listener import MongoFrontDoor

log = logging.getLogger("ogelkit.mongodb")

_client_ids = itertools.count(1)
_I32 = bsonraw.i32

#: Largest message accepted before authentication (a driver's hello with speculative
#: authentication and client metadata is under 1 KiB).
PRE_AUTH_MAX_MESSAGE = 64 * 1024
#: MongoDB's maxMessageSizeBytes (every version): what hello advertises at most.
MONGODB_MAX_MESSAGE = 48_000_000
#: An idle connection told to close (drain ...) answers commands with the reason this long.
CLOSE_GRACE = 1.0
#: Seconds before a closed connection that did not go away is aborted.
ABORT_AFTER = 5.0
#: Seconds a half-closed connection reads (and drops) what the client still sends.
LINGER = 2.0
#: Bytes of commands one tenant may have running on a backend's upstream at once (a command
#: bigger than this runs alone). The upstream is shared: six connections of one tenant
#: inserting 8 MB batches at once kept FerretDB (and the machine) so busy that another
#: tenant's find_one sent straight to FerretDB waited 29 ms at p50 and 150-470 ms at p99;
#: one batch at a time, 0.6 ms. A tenant's next big command waits for its earlier ones to
#: be answered; small commands (thousands of finds) never wait.
TENANT_INFLIGHT_BYTES = 8 * 1024 * 1024
#: Malformed-input log lines per second, for the whole door (see ``malformed``).
LOG_BURST = 5


class InflightShare:
    """One tenant's commands running upstream on one backend: their bytes, and its
    connections whose next command waits for room (in order)."""

    __slots__ = ("bytes", "waiting")

    def __init__(self) -> None:
        self.bytes = 0
        self.waiting: deque[MongoConnection] = deque()

    def release(self, size: int) -> None:
        self.bytes -= size
        waiting = self.waiting
        while waiting:
            conn = waiting[0]
            op = conn.op
            if not conn.queued or conn.closed or op is None or op.ended is not None:
                waiting.popleft()  # gone or cancelled meanwhile
                conn.queued = False
                continue
            if self.bytes and self.bytes + len(op.request.data) > TENANT_INFLIGHT_BYTES:
                return
            waiting.popleft()
            conn.queued = False
            conn._submit(op)


class MongoConnection(asyncio.Protocol, Planner, ReplyMapper, LocalCommands):
    """One client connection."""

    def __init__(self, door: MongoFrontDoor):
        self.door = door
        self.ctx = door.context
        self.clients = door.clients
        self.id = next(_client_ids)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buf = bytearray()
        self.busy = False  # a command is being answered: later ones wait in buf
        self.paused = False
        self.write_paused = False  # the client reads slower than its replies come
        self.closed = False
        self._processing = False
        self._reply_ids = itertools.count(1)
        self.limit = PRE_AUTH_MAX_MESSAGE
        self.handshake: Handshake | None = None
        self.login: Login | None = None
        self.session: Session | None = None
        self.authenticated = False
        self.databases: dict[str, DatabaseRecord] = {}
        self.unmap: dict[str, str] = {}  # upstream database name -> the tenant's name
        self._ns_values: dict[bytes, tuple[str, bytes | None]] = {}  # see ReplyMapper
        self.auth_db = "admin"
        self.op: MongoOperation | None = None
        self.task: asyncio.Task[Any] | None = None
        self.refreshed_at = 0.0
        self.closing: Reject | None = None  # told to close: commands get this answer
        self.last_seen = 0.0  # before authentication: when the last complete message came
        self._timer: asyncio.TimerHandle | None = None
        self._logged = False
        #: this tenant's commands running on the upstream (``TENANT_INFLIGHT_BYTES``) and
        #: what this connection's command counts there (0: none running)
        self.share: InflightShare | None = None
        self.share_key: object = None  # the backend ``share`` is for
        self.share_bytes = 0
        self.queued = False  # its command waits in share.waiting

    # -- what ClientSet needs --------------------------------------------------------------
    def is_idle(self) -> bool:
        return not self.busy and self.task is None and not self.buf

    def close_with(self, reject: Reject) -> None:
        """Tell the client ``reject`` and close (drain, suspension, ban: ``session.closer``).

        A command in flight is answered with it at once. An idle connection answers any
        command that arrives within ``CLOSE_GRACE`` with it (a MongoDB server speaks only
        when asked), then closes; a second call closes at once."""
        if self.closed:
            return
        op = self.op
        if op is not None and op.ended is None:
            task, self.task = self.task, None
            if task is not None:
                task.cancel()
            self._abandon_upstream(op)
            op.rejection = op.rejection or reject
            if not (op.request.flags & wire.MORE_TO_COME):
                self._send_doc(op.request.request_id, errors.reject_doc(reject))
            self.closing = reject
            self._finish(op)
            self.close()
            return
        if self.task is not None or self.closing is not None:
            self.close()  # an authentication running, or the grace is over
            return
        self.closing = reject
        loop = asyncio.get_running_loop()
        loop.call_later(CLOSE_GRACE, self.close)
        if self.buf:
            self._process()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def became_idle(self) -> None:
        """After answering: the drain closes an idle connection; buffered commands go on."""
        if self.clients.draining is not None:
            self.clients.idle(self)
        self._resume()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a create_server transport
        self.peer = peer_address(transport)
        self.last_seen = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(self.door.handshake_timeout,
                                                            self._check_handshake)
        self.clients.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.busy and not self.write_paused and not self.buf and len(data) >= 16:
            n = _I32(data, 0)[0]
            if n == len(data) and n <= self.limit:
                self._message(data)
                return
        self.buf += data
        self._process()

    def _process(self) -> None:
        if self._processing:
            return  # the outer loop continues
        self._processing = True
        try:
            buf = self.buf
            while not self.busy and not self.write_paused and not self.closed \
                    and len(buf) >= 16:
                n = _I32(buf, 0)[0]
                if n < 16 or n > self.limit:
                    request_id = _I32(buf, 4)[0]
                    if n < 16:
                        self._fatal(request_id, errors.FAILED_TO_PARSE,
                                    f"invalid message length {n}")
                    elif not self.authenticated:
                        self._fatal(request_id, errors.MESSAGE_TOO_LARGE,
                                    f"message of {n} bytes before authentication: the limit "
                                    f"is {self.limit} bytes until the client authenticates")
                    else:
                        self._fatal(request_id, errors.MESSAGE_TOO_LARGE,
                                    f"message of {n} bytes is over the gateway's limit of "
                                    f"{self.limit} bytes")
                    return
                if len(buf) < n:
                    break
                if len(buf) == n:  # the common end of a long message: one copy, not two
                    msg = bytes(buf)
                    buf.clear()
                else:
                    with memoryview(buf) as view:
                        msg = bytes(view[:n])
                    del buf[:n]
                self._message(msg)
            if not self.paused and len(buf) > self.limit and (
                    self.busy or self.write_paused or not self.authenticated):
                self.paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        finally:
            self._processing = False

    def pause_writing(self) -> None:
        # The client does not read its replies: run none of its next commands until it
        # does (buffered commands wait in buf, then its socket); the output guard refuses
        # it if the replies already written pile up past the ceilings.
        self.write_paused = True
        self.door.output_guard.writing_paused(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.door.output_guard.writing_resumed(self)
        if not self.busy:
            self._resume()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self.transport is None:
            return
        self.closed = True
        self.clients.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
        op = self.op
        if op is not None and op.ended is None:
            self._abandon_upstream(op)
            op.error = "ClientDisconnected"
            self._complete(op)
        if self.login is not None:
            self.login.end()
        self.transport = None

    # -- bounds before authentication -------------------------------------------------------
    def _check_handshake(self) -> None:
        self._timer = None
        if self.authenticated or self.closed:
            return
        timeout = self.door.handshake_timeout
        left = self.last_seen + timeout - time.monotonic()
        if left > 0:  # a command came since: wait from that one
            self._timer = asyncio.get_running_loop().call_later(left, self._check_handshake)
            return
        self.malformed(f"no complete command for {timeout:g} s before authentication")
        login = self.login
        if login is not None and not login.ended and not login.admitted \
                and login.session.rejection is None:
            login.refuse(Reject(Reason.TIMEOUT, "authentication timed out"), "error")
        self.close()

    def authenticated_now(self) -> None:
        self.authenticated = True
        # No more than hello advertised: MongoDB's own maxMessageSizeBytes caps it.
        self.limit = min(self.door.max_message, MONGODB_MAX_MESSAGE)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- writing ---------------------------------------------------------------------------
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
        try:
            body = bson.encode(doc)
        except UnicodeEncodeError:  # a client's non-UTF-8 name (surrogate-escaped) quoted back
            body = bson.encode(_printable(doc))
        return self._send_parts(response_to, [body], len(body))

    def malformed(self, message: str) -> None:
        """Log a client's malformed input (or a gateway bug it triggered) once per
        connection and at most ``LOG_BURST`` lines a second for the whole door, without a
        traceback: an attacker opening connection after connection cannot flood the log
        (mongo_flood's twenty malformed-message threads made 700 lines a second)."""
        if self._logged:
            return
        self._logged = True
        window = self.door.log_window  # [second started, lines in it, lines suppressed]
        now = time.monotonic()
        if now - window[0] >= 1.0:
            window[0] = now
            window[1] = 0
        if window[1] >= LOG_BURST:
            window[2] += 1
            return
        window[1] += 1
        suppressed, window[2] = window[2], 0
        log.info("mongodb client %s: %s%s", self.peer, message[:300],
                 f" ({suppressed} more such lines suppressed)" if suppressed else "",
                 extra={"tenant": self.session.tenant_slug if self.session else None})

    def _fatal(self, request_id: int, code: tuple[int, str], message: str) -> None:
        """A malformed or oversized message: say why, then close this client only."""
        self.malformed(f"closing: {message}")
        login = self.login
        if login is not None and not login.admitted and login.session.rejection is None:
            login.refuse(Reject(Reason.FORBIDDEN, message), "error")
        self._send_doc(request_id, errors.error_doc(code, message))
        self.close()

    def close(self) -> None:
        """Half-close, then close: the client reads a clean end of stream. What it still
        sends is read and dropped until it closes too (or LINGER passes): closing at once
        would answer a request already on its way with a TCP reset."""
        first = not self.closed
        self.closed = True
        transport = self.transport
        if transport is None or transport.is_closing() or not first:
            return
        loop = asyncio.get_running_loop()
        try:
            if not transport.can_write_eof():
                raise RuntimeError("no half-close")
            transport.write_eof()
            transport.resume_reading()
            loop.call_later(LINGER, transport.close)
        except (OSError, RuntimeError):
            transport.close()
        loop.call_later(ABORT_AFTER, self.abort)

    def set_databases(self, dbs: dict[str, DatabaseRecord]) -> None:
        self.databases = dbs
        self.unmap = {d.upstream.get("database", ""): n for n, d in dbs.items()}
        self._ns_values = {}

    # -- dispatch --------------------------------------------------------------------------
    def _message(self, msg: bytes) -> None:
        if self.session is not None:
            self.session.bytes_in += len(msg)
        if not self.authenticated:
            self.last_seen = time.monotonic()
        opcode = _I32(msg, 12)[0]
        request_id = _I32(msg, 4)[0]
        if self.closing is not None:
            self._answer_closing(msg, opcode, request_id)
            return
        try:
            if opcode == wire.OP_MSG:
                try:
                    m = wire.parse_op_msg(msg)
                    name, index = self._index(msg, m.body_start)
                except (wire.ProtocolError, BsonError) as exc:
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
        except Exception as exc:  # bson.errors.InvalidBSON deeper down, or a gateway bug
            if not self.closed:
                self._fatal(request_id, errors.FAILED_TO_PARSE,
                            f"malformed message: {type(exc).__name__}: {exc}"[:300])

    def _answer_closing(self, msg: bytes, opcode: int, request_id: int) -> None:
        reject = self.closing
        assert reject is not None
        doc = errors.reject_doc(reject)
        if opcode == wire.OP_QUERY:
            out = wire.op_reply(next(self._reply_ids), request_id,
                                {"$err": doc["errmsg"], **doc}, failure=True)
            if self.transport is not None:
                self.transport.write(out)
        elif not (opcode == wire.OP_MSG and len(msg) >= 20
                  and _I32(msg, 16)[0] & wire.MORE_TO_COME):
            self._send_doc(request_id, doc)
        self.close()

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
            self._handshake().hello(doc, name, lambda d, *_: self._send_doc(m.request_id, d))
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
                    errors.UNAUTHORIZED, f"command {name[:100]} requires authentication"))
            return
        self._operation(m, name, index, db)

    def _handshake(self) -> Handshake:
        hs = self.handshake
        if hs is None:
            hs = self.handshake = Handshake(self)
        return hs

    def _sasl(self, name: str, doc: dict[str, Any], db: str, respond: Any) -> None:
        if self.authenticated and self.handshake is None:
            respond(errors.error_doc(errors.AUTHENTICATION_FAILED, "this connection already "
                                     "authenticated; open a new one to change users")
                    if name == "saslStart" else
                    errors.error_doc(errors.PROTOCOL_ERROR, "no SASL conversation in progress"))
            return
        self._handshake().sasl(name, doc, db, respond)

    def _legacy(self, msg: bytes, request_id: int) -> None:
        try:
            q = wire.parse_op_query(msg)
        except wire.ProtocolError as exc:
            self._fatal(request_id, errors.FAILED_TO_PARSE, str(exc))
            return
        name = next(iter(q.query), "")

        def respond(doc: dict[str, Any], *_: Any) -> None:
            failure = not doc.get("ok")
            if failure:
                doc = {"$err": doc.get("errmsg", ""), **doc}
            out = wire.op_reply(next(self._reply_ids), request_id, doc, failure=failure)
            if self.transport is not None and not self.closed:
                self.transport.write(out)

        if name.lower() in ("ismaster", "hello") and q.collection.endswith(".$cmd"):
            self._handshake().hello(q.query, "hello" if name == "hello" else "isMaster", respond)
        else:
            respond(errors.error_doc((352, "UnsupportedOpQueryCommand"),
                                     "OP_QUERY is only supported for the hello handshake; "
                                     "use a driver that speaks OP_MSG (MongoDB 3.6+)"))

    # -- operations ------------------------------------------------------------------------
    def _operation(self, m: wire.OpMsg, name: str, index: dict[str, Any], db: str) -> None:
        session = self.session
        assert session is not None
        req = Request(name, m.request_id, db)
        req.data = m.data
        req.index = index
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
        except Exception as exc:  # malformed content (InvalidBSON ...): answered, not raised
            self._refuse_malformed(op, m, exc)
            return
        self._admit(op, m)

    async def _refresh_then_plan(self, op: MongoOperation, m: wire.OpMsg, index: dict[str, Any],
                                 db: str) -> None:
        self.refreshed_at = time.monotonic()
        session = self.session
        try:
            entry = await self.ctx.directory.lookup(session.tenant_slug or "")  # type: ignore[union-attr]
            if entry is not None:
                ids = self.door.backend_ids
                self.set_databases({n: d for n, d in entry.databases.items()
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
        except Exception as exc:
            self._refuse_malformed(op, m, exc)
            return
        self._admit(op, m)

    def _refuse(self, op: MongoOperation, m: wire.OpMsg, r: Refusal) -> None:
        op.rejection = Reject(Reason.FORBIDDEN, r.message)
        if not m.more_to_come:
            self._send_doc(op.request.request_id, errors.error_doc(r.code, r.message))
        self._finish(op)

    def _refuse_malformed(self, op: MongoOperation, m: wire.OpMsg, exc: Exception) -> None:
        message = f"malformed {op.request.name[:100]} command: {type(exc).__name__}: {exc}"[:300]
        self.malformed(message)
        self._refuse(op, m, Refusal(errors.FAILED_TO_PARSE, message))

    def _admit(self, op: MongoOperation, m: wire.OpMsg) -> None:
        req = op.request
        if m.more_to_come and req.local is not None:
            self._finish(op)  # nothing to answer
            return
        chain = self.ctx.chain
        assert chain is not None  # built before any door accepts a client
        try:
            pending = chain.admit(op)
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
            share = self.share
            if share is None or self.share_key is not backend:
                share = self.share = self.door.inflight_share(backend, self.session)
                self.share_key = backend
            if share.bytes and share.bytes + len(req.data) > TENANT_INFLIGHT_BYTES:
                self.queued = True  # InflightShare.release submits it
                share.waiting.append(self)
                return
            self._submit(op)

    def _submit(self, op: MongoOperation) -> None:
        req = op.request
        size = len(req.data)
        self.share.bytes += size  # type: ignore[union-attr]
        self.share_bytes = size
        op.upstream = req.backend.pool.submit(req.parts, self._on_reply)  # type: ignore[union-attr]

    def _release_share(self) -> None:
        size = self.share_bytes
        self.queued = False
        if size:
            self.share_bytes = 0
            self.share.release(size)  # type: ignore[union-attr]

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
        if self.share_bytes:
            self._release_share()
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
                self.malformed(f"unreadable upstream reply to {req.name[:100]}: "
                               f"{type(exc).__name__}: {exc}")
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
        if self.clients.draining is not None:
            self.clients.idle(self)
        self._resume()

    def _complete(self, op: MongoOperation) -> None:
        op.ended = time.monotonic()
        m = self.door.metrics
        if op.rejection is not None:
            m.rejected += 1
        elif op.error is not None:
            m.error += 1
        else:
            m.ok += 1
        chain = self.ctx.chain
        assert chain is not None  # built before any door accepts a client
        chain.complete(op)

    def _resume(self) -> None:
        if self.closed:
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self.buf:
            self._process()

    # -- cancel (timeout layer) ------------------------------------------------------------
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
        if self.share_bytes or self.queued:
            self._release_share()
        up, op.upstream = op.upstream, None
        if isinstance(up, Waiter):
            up.callback = None  # never sent
        elif isinstance(up, UpstreamConnection):
            backend = op.request.backend
            if backend is not None:
                backend.stop_running(up)


def _printable(value: Any) -> Any:
    """``value`` with every string made valid UTF-8 (undecodable bytes become U+FFFD)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value
