"""One client connection: login (see ``login.py``), then the relay.

The relay forwards bytes in the chunks they arrive and reads only message headers, except
for the few messages it acts on:

* client -> server: Query and Execute become one ``Operation`` each (admitted by the layer
  chain before they are forwarded); Parse/Bind/Describe/Close are rewritten in transaction
  mode so named prepared statements follow the client from server to server; Sync and
  Query are counted so the server is released only when everything sent was answered.
* server -> client: CommandComplete (row counts), ErrorResponse (SQLSTATE), ReadyForQuery
  (completion, transaction status, release), ParameterStatus, ParseComplete (swallowed
  when the gateway itself re-prepared a statement).

DataRow and CopyData are never buffered: a message longer than the chunk is forwarded as it
arrives and the rest of it is skipped by length. Back-pressure pauses reading on one side
while the other side's write buffer is full, so a 100 MB result flows through a few
hundred kilobytes of memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from itertools import count
from typing import TYPE_CHECKING, Any

from ogelkit import Operation, Reason, Reject, format_duration
from ogelkit.frontdoor import peer_address
from ogelkit_postgres import wire as pg
from ogelkit_postgres.errors import (
    FEATURE_NOT_SUPPORTED,
    PROTOCOL_VIOLATION,
    reject_error,
)
from ogelkit_postgres.pool import PoolTimeout
from ogelkit_postgres.sql import verb_of
from ogelkit_postgres.upstream import UpstreamError, client_sqlstate

if TYPE_CHECKING:
    from ogelkit import Session
    from ogelkit.frontdoor import Login
    from ogelkit_postgres.listener import PostgresFrontDoor
    from ogelkit_postgres.pool import Pool
    from ogelkit_postgres.upstream import ServerConnection

log = logging.getLogger("ogelkit.postgres")

STARTUP, RELAY, CLOSED, DRAINING = 0, 1, 2, 3

# Reasons to stop reading from the client (bit flags).
WAITING = 1  # an operation waits for the chain or for a server connection
#: Client messages read per event-loop turn; the rest of the chunk waits for the next turn.
#: Every connection that floods takes this many per turn, and the turn is the latency of
#: every other client: at 512, 10 connections pipelining Parse messages made each turn
#: about 10 ms of CPU (pg_flood's canary p50 25 ms); 64 of them cost about 0.1 ms.
MESSAGES_PER_TURN = 64
#: Work units all the connections of one tenant get per event-loop turn, together: a message
#: is a unit, and so is every 4 kB of it. Twenty connections of one tenant each taking their
#: MESSAGES_PER_TURN (or a 900 kB Query each) still made every turn as long as twenty; with
#: this share a flooding tenant's turn costs about as much as one connection's. What one
#: message takes past the share (a big Query) is a debt paid over the next turns. When the
#: loop has nothing else to do a turn lasts microseconds: the share never idles the gateway.
TENANT_UNITS_PER_TURN = 256
SERVER_FULL = 2  # the server's write buffer is full

_unpack_len = pg.unpack_len
_pack_i32 = pg.pack_i32
_monotonic = time.monotonic

# Parameters the server reports (GUC_REPORT) that belong to the client: in transaction mode
# a client's own SET of one of them is remembered and re-applied on the next server it gets.
TRACKED_PARAMS = frozenset({"client_encoding", "DateStyle", "IntervalStyle", "TimeZone",
                            "standard_conforming_strings"})

DISCARD_ALL = pg.query("DISCARD ALL")
_CLOSED_NAME = b"o7s_closed"  # never prepared: closing it is a no-op that still answers
_names = count(1)


class _Malformed(Exception):
    """A client message the relay cannot split (a missing NUL, a wrong length)."""


#: Malformed-input log lines: at most one per connection, and ``_LOG_BURST`` per second in
#: all (an attacker controls how many such connections there are).
_LOG_BURST = 5
_log_window = [0.0, 0]


def log_limited(level: int, message: str, *args: Any, **kw: Any) -> None:
    """Log without a traceback, rate-limited across the whole door."""
    now = time.monotonic()
    if now - _log_window[0] >= 1.0:
        _log_window[0] = now
        _log_window[1] = 0
    if _log_window[1] < _LOG_BURST:
        _log_window[1] += 1
        log.log(level, message, *args, **kw)


class Stmt:
    """A statement a client prepared: its text, verb and key (query + parameter types)."""

    __slots__ = ("key", "text", "verb")

    def __init__(self, key: bytes, text: str, verb: str):
        self.key = key
        self.text = text
        self.verb = verb


class TurnShare:
    """The work one tenant's connections did in the current event-loop turn (a door keeps
    one per tenant): ``TENANT_UNITS_PER_TURN`` per turn between them, a debt carried over.
    Turns are counted by a callback the first spender of a turn schedules (call_soon runs it
    at the start of the next turn), so nothing runs while the gateway is idle."""

    __slots__ = ("clock", "spent", "turn")

    def __init__(self, clock: TurnClock):
        self.clock = clock
        self.turn = -1
        self.spent = 0

    def left(self) -> int:
        """Units this tenant may still spend in this turn (<= 0: wait for the next)."""
        clock = self.clock
        turn = clock.turn
        if not clock.armed:
            clock.arm()
        if turn != self.turn:
            spent = self.spent - (turn - self.turn) * TENANT_UNITS_PER_TURN
            self.spent = spent if spent > 0 else 0
            self.turn = turn
        return TENANT_UNITS_PER_TURN - self.spent


class TurnClock:
    """Counts the event loop's turns while someone spends (see ``TurnShare``)."""

    __slots__ = ("armed", "shares", "turn")

    def __init__(self) -> None:
        self.turn = 0
        self.armed = False
        self.shares: dict[object, TurnShare] = {}

    def arm(self) -> None:
        self.armed = True
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.turn += 1
        self.armed = False

    def share(self, key: object) -> TurnShare:
        share = self.shares.get(key)
        if share is None:
            if len(self.shares) > 100_000:  # tenants come and go: forget the idle ones
                self.shares = {k: v for k, v in self.shares.items() if v.spent}
            share = self.shares[key] = TurnShare(self)
        return share


class PostgresConnection(asyncio.Protocol):
    __slots__ = (
        "batch_error",
        "bind_size",
        "cancel_op",
        "cancel_reject",
        "canceller",
        "capture",
        "cdrop",
        "cf_mark",
        "cfg",
        "chain",
        "clients",
        "copy_in",
        "cskip",
        "cskip_release",
        "ctx",
        "desired",
        "discard_error",
        "discarding",
        "door",
        "held",
        "held_at",
        "hide",
        "inject",
        "key",
        "last_server",
        "login",
        "login_task",
        "max_msg",
        "metrics",
        "ops",
        "out",
        "parse_fifo",
        "pause_flags",
        "peer",
        "phase",
        "pool",
        "portals",
        "rbuf",
        "rneed",
        "saw_fatal",
        "sbuf",
        "server",
        "session",
        "session_mode",
        "settings_src",
        "share",
        "sneed",
        "sni",
        "spartial",
        "sskip",
        "startup_settings",
        "stmt_cache",
        "stmts",
        "swaiter",
        "swallow_error",
        "swallow_z",
        "syncs_sent",
        "transport",
        "unsynced",
        "wait_cancel",
        "wait_task",
        "write_paused",
        "z_recv",
    )

    def __init__(self, door: PostgresFrontDoor):
        self.door = door
        self.ctx = door.context
        self.chain: Any = door.context.chain  # set whenever a connection exists
        self.metrics = door.metrics
        self.clients = door.clients
        self.login: Login | None = None
        #: (upstream name, tenant's name) pairs hidden in upstream errors, longest first.
        self.hide: list[tuple[bytes, bytes]] = []
        self.transport: asyncio.Transport | None = None
        self.phase = STARTUP
        self.session: Session | None = None
        self.peer = ""
        self.sni: str | None = None
        self.sbuf = bytearray()
        self.swaiter: asyncio.Future[None] | None = None
        self.login_task: asyncio.Task[None] | None = None
        self.pool: Pool | None = None
        self.cfg: Any = None
        self.session_mode = True
        self.max_msg = pg.MAX_STARTUP_PACKET
        self.startup_settings: dict[str, str] = {}
        self.desired: dict[str, str] = {}
        self.settings_src: dict[str, str] | None = None
        self.key: tuple[int, int] | None = None
        self.server: ServerConnection | None = None
        self.last_server: ServerConnection | None = None  # transaction mode: try it first
        # client -> server framing
        self.rbuf: bytes | bytearray = b""
        self.rneed = 0  # length of the incomplete message in rbuf
        self.cskip = 0  # bytes of a streamed message still to forward
        self.cdrop = 0  # bytes of a CopyData nobody takes still to drop
        self.cskip_release = False  # a release waits for the rest of a streamed CopyData
        self.held: bytearray | None = None
        #: the unread rest of a chunk deferred to the next turn (``_next_turn_at``): the
        #: chunk and where to go on; ``held`` collects what arrives meanwhile.
        self.held_at: tuple[bytes, int] | None = None
        #: the tenant's TurnShare (set at login): its work in the current loop turn
        self.share: TurnShare | None = None
        self.out: list[bytes] | None = None  # pending writes to the server while scanning
        self.pause_flags = 0
        self.write_paused = False
        self.wait_task: asyncio.Task[None] | None = None
        self.wait_cancel: Reject | None = None
        # server -> client framing
        self.spartial: bytes | bytearray = b""
        self.sneed = 0
        self.sskip = 0
        self.swallow_z = 0
        self.swallow_error: dict[str, str] | None = None
        self.capture: asyncio.Future[dict[str, str] | None] | None = None
        # protocol bookkeeping
        self.syncs_sent = 0
        self.z_recv = 0
        self.unsynced = False
        self.ops: deque[tuple[Operation, bool, int]] = deque()
        self.batch_error: str | None = None
        self.copy_in = False  # COPY FROM STDIN upstream: CopyInResponse seen, no Z since
        #: ``syncs_sent`` when a CopyDone/CopyFail or FunctionCall last went upstream (see
        #: ``_copy_started``).
        self.cf_mark = -1
        self.saw_fatal = False
        self.inject: list[tuple[int, bool, bytes, bool]] | None = None
        self.discarding = False
        self.discard_error: bytes | None = None
        self.cancel_reject: Reject | None = None
        self.cancel_op: Operation | None = None
        self.stmts: dict[bytes, Stmt] = {}
        self.portals: dict[bytes, Stmt] = {}
        self.stmt_cache: dict[bytes, Stmt] = {}
        self.parse_fifo: deque[tuple[int, bool, bytes, bytes]] | None = None
        self.bind_size = 0
        self.canceller = self._cancel_current

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = peer_address(transport)
        self.clients.add(self)
        if not transport.is_closing():  # not refused at once by a drain
            from ogelkit_postgres.login import run_login
            self.login_task = self.door.spawn(run_login(self))

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:  # a bug must cost this client only, never the loop's log
            self.crashed(exc)

    def _received(self, data: bytes) -> None:
        if self.phase == RELAY:
            self.session.bytes_in += len(data)  # type: ignore[union-attr]
            held = self.held
            if held is not None:
                held += data
                return
            rbuf = self.rbuf
            if rbuf:
                if self.rneed > len(rbuf) + len(data):
                    # A long message still incomplete: collect, parse once it is whole (no
                    # copy of everything so far per chunk).
                    if rbuf.__class__ is bytes:
                        rbuf = self.rbuf = bytearray(rbuf)
                    rbuf += data
                    return
                if rbuf.__class__ is bytes:
                    data = rbuf + data
                else:  # a long message's pieces: one copy of the whole, not two
                    rbuf += data
                    data = bytes(rbuf)
                self.rbuf = b""
            if self.cdrop:
                drop = self.cdrop
                if drop >= len(data):
                    self.cdrop = drop - len(data)
                    return
                self.cdrop = 0
                data = data[drop:]
            skip = self.cskip
            if skip:
                n = len(data)
                if skip >= n:
                    self.cskip = skip = skip - n
                    srv = self.server
                    if srv is not None:
                        srv.transport.write(data)  # type: ignore[union-attr]
                        if not skip:
                            self._streamed_out()
                    return
                self.cskip = 0
                self._process(data, skip, 0, None)
                self._streamed_out()
                return
            self._process(data, 0, 0, None)
        elif self.phase == STARTUP:
            self.sbuf += data
            if len(self.sbuf) > pg.MAX_STARTUP_PACKET + 16384:
                self.fatal(PROTOCOL_VIOLATION, "startup packet too long")
                return
            waiter = self.swaiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool | None:
        return False

    def pause_writing(self) -> None:
        self.write_paused = True
        self.door.output_guard.writing_paused(self)
        srv = self.server
        if srv is not None:
            srv.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.door.output_guard.writing_resumed(self)
        srv = self.server
        if srv is not None:
            srv.resume()

    def pause_for_server(self) -> None:
        self._pause(SERVER_FULL)

    def resume_for_server(self) -> None:
        self._unpause(SERVER_FULL)

    def _pause(self, flag: int) -> None:
        if not self.pause_flags and self.transport is not None:
            self.transport.pause_reading()
        self.pause_flags |= flag

    def _unpause(self, flag: int) -> None:
        if self.pause_flags & flag:
            self.pause_flags &= ~flag
            if not self.pause_flags and self.phase != CLOSED and self.transport is not None:
                self.transport.resume_reading()

    # -- client -> server --------------------------------------------------------------------
    def _process(self, data: bytes, pos: int, run: int,
                 resumed: tuple[Operation | None, Reject | bytes | None] | None) -> None:
        """Scan client messages from ``pos``; bytes from ``run`` are forwarded unchanged.

        Everything for the server is collected and written once: a rewritten Bind sent as
        its own write would cost a syscall and wake PostgreSQL twice per transaction."""
        out: list[bytes] = []
        self.out = out
        budget = MESSAGES_PER_TURN
        share = self.share
        if share is not None:
            left = share.left()
            if left < budget:
                budget = left if left > 0 or resumed is None else 1
        start_budget = budget
        try:
            n = len(data)
            srv = self.server
            max_msg = self.max_msg
            while n - pos >= 5:
                if budget <= 0:  # fairness: the rest waits for the loop's next turn
                    self._flush(data, run, pos)
                    self._next_turn_at(data, pos)
                    return
                t = data[pos]
                ln = _unpack_len(data, pos + 1)[0]
                if ln < 4 or ln > max_msg:
                    self._flush(data, run, pos)
                    self._too_big(t, ln)
                    return
                end = pos + 1 + ln
                # a unit per message and per 4 kB of it (of what is here, for a CopyData
                # streamed in pieces)
                budget -= 1 + (((end if end < n else n) - pos) >> 12)
                if t == 100:  # CopyData: stream it, whatever its size
                    if end > n:
                        if self.discarding or srv is None:
                            # Outside COPY the server ignores CopyData; so do we.
                            self._flush(data, run, pos)
                            self.cdrop = end - n
                            return
                        self._flush(data, run, n)
                        self.cskip = end - n
                        return
                    if srv is None or self.discarding:
                        self._flush(data, run, pos)
                        run = end
                    pos = end
                    continue
                if end > n:
                    break
                if self.discarding and t != 83:
                    # After a refused Execute, drop everything up to Sync (as the server would).
                    self._flush(data, run, pos)
                    pos = run = end
                    if t == 88:
                        self.close()
                        return
                    continue

                if t == 81:  # Query
                    if resumed is not None:
                        op, verdict = resumed
                        resumed = None
                        verb = op.name if op is not None else \
                            verb_of(data[pos + 5:end - 1].decode("utf-8", "replace"))
                    elif self.door.observe:
                        text = data[pos + 5:end - 1].decode("utf-8", "replace")
                        verb = verb_of(text)
                        op = Operation(self.session, "query", verb, text, ln + 1)  # type: ignore[arg-type]
                        op.canceller = self.canceller
                        try:
                            verdict = self.chain.admit(op)
                        except Reject as rej:
                            verdict = rej
                        except Exception as exc:
                            verdict = self._layer_failed(op, exc)
                        if verdict is not None and not isinstance(verdict, (Reject, bytes)):
                            self._flush(data, run, pos)
                            self._suspend(data, pos, op, verdict)
                            return
                    else:  # no layer looks at operations: build none
                        op = verdict = None
                        verb = "" if self.session_mode else \
                            verb_of(data[pos + 5:end - 1].decode("utf-8", "replace"))
                    if verdict is None and verb == "LISTEN" and not self.session_mode:
                        verdict = self._listen_refused()
                    if verdict is not None:
                        self._flush(data, run, pos)
                        pos = run = end
                        self._refuse_query(op, verdict)
                        continue
                    if srv is None:
                        srv = self._checkout()
                        if srv is None:
                            self._suspend(data, pos, op, None)
                            return
                    if self.session_mode:
                        if self.session.settings is not self.settings_src:  # type: ignore[union-attr]
                            run = self._reapply(srv, data, run, pos)
                    elif verb in ("SET", "RESET", "DISCARD", "DEALLOCATE"):
                        self._server_state_changed(srv, verb)
                    self.syncs_sent += 1
                    self.session.operations += 1  # type: ignore[union-attr]
                    if op is not None:
                        self.ops.append((op, True, self.syncs_sent))
                    else:
                        self.metrics.ok += 1
                    pos = end
                    continue

                if t == 83:  # Sync
                    if srv is None:
                        # Nothing of this batch reached a server: answer for it.
                        self._flush(data, run, pos)
                        pos = run = end
                        error, self.discard_error, self.discarding = self.discard_error, None, False
                        self.unsynced = False
                        if ln != 4:  # as PostgreSQL answers a Sync with a body
                            error = (error or b"") + pg.error_response(PROTOCOL_VIOLATION,
                                                                       "invalid message format")
                        self._write((error or b"") + pg.ready_for_query(b"I"))
                        self._idle_now()
                        continue
                    if self.discarding:
                        self.discarding = False
                        error, self.discard_error = self.discard_error, None
                        if error is not None:
                            self._queue_inject(self.syncs_sent + 1, True, error, False)
                    self.syncs_sent += 1
                    self.unsynced = False
                    pos = end
                    continue

                if t == 88:  # Terminate
                    self._flush(data, run, pos)
                    self.close()
                    return

                if t not in _EXTENDED:
                    if t == 99 or t == 102:  # CopyDone / CopyFail
                        if srv is None:  # no COPY in progress: ignored, as the server would
                            self._flush(data, run, pos)
                            run = end
                        else:
                            self.cf_mark = self.syncs_sent
                        pos = end
                        continue
                    self._flush(data, run, pos)
                    self.fatal(PROTOCOL_VIOLATION, f"invalid frontend message type {t}")
                    return

                # Extended protocol (and FunctionCall): needs a server connection.
                op = None
                verdict = None
                if t == 69:  # Execute
                    if resumed is not None:
                        op, verdict = resumed
                        resumed = None
                    elif self.door.observe:
                        op = self._execute_op(data, pos, end)
                        verdict = self._admit(op)
                        if verdict is not None and not isinstance(verdict, (Reject, bytes)):
                            self._flush(data, run, pos)
                            self._suspend(data, pos, op, verdict)
                            return
                    if verdict is not None:
                        self._flush(data, run, pos)
                        pos = run = end
                        self._refuse_execute(op, verdict)
                        continue
                elif resumed is not None:
                    _, verdict = resumed
                    resumed = None
                    if verdict is not None:  # no server could be had for this batch
                        self._flush(data, run, pos)
                        self.discarding = True
                        # Nothing is in flight upstream: answer now, as the server would
                        # (a client that sends Flush, not Sync, waits for it); Sync gets Z.
                        self._write(verdict if isinstance(verdict, bytes) else
                                    reject_error(verdict))
                        self.discard_error = None
                        continue  # the loop drops this message and the rest up to Sync
                if srv is None:
                    srv = self._checkout()
                    if srv is None:
                        self._suspend(data, pos, op, None)
                        return
                elif self.session_mode and self.session.settings is not self.settings_src:  # type: ignore[union-attr]
                    run = self._reapply(srv, data, run, pos)
                if t == 69:
                    self.session.operations += 1  # type: ignore[union-attr]
                    if op is not None:
                        self.ops.append((op, False, self.syncs_sent + 1))
                    else:
                        self.metrics.ok += 1
                elif t == 70:  # FunctionCall: answered with ReadyForQuery like a Query
                    self.syncs_sent += 1
                    self.cf_mark = self.syncs_sent  # (no operation: see _copy_started)
                    pos = end
                    continue
                elif t == 80:  # Parse
                    if not self.session_mode or self.door.observe:  # else: nothing to track
                        run = self._parse(data, pos, end, run, srv)
                elif t == 66:  # Bind
                    if not self.session_mode or self.door.observe:
                        run = self._bind(data, pos, end, run, srv)
                elif (t == 68 or t == 67) and not self.session_mode and end - pos > 7 \
                        and data[pos + 5] == 83 and data[end - 1] == 0:
                    # Describe / Close of a named statement
                    run = self._describe_close(t, data, pos, end, run, srv)
                if t != 72 or ln != 4:  # Flush leaves the batch as it is, unless malformed:
                    # PostgreSQL answers a Flush with a body with 08P01 and then discards
                    # everything up to a Sync, as after any failed extended message
                    self.unsynced = True
                pos = end
            if run < pos:  # _flush, inline: the common end of a chunk
                out.append(data if run == 0 and pos == n else data[run:pos])
            if pos < n:
                self.rbuf = data[pos:]
                self.rneed = 1 + _unpack_len(data, pos + 1)[0] if n - pos >= 5 else 5
        except _Malformed as exc:
            self.malformed(str(exc))
        finally:
            if share is not None:
                share.spent += start_budget - budget
            self.out = None
            if out:
                srv = self.server
                if srv is not None:
                    srv.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]

    def _streamed_out(self) -> None:
        """The rest of a streamed CopyData went upstream. A transaction-mode server whose
        ReadyForQuery came meanwhile was kept (the server was waiting for those bytes, and
        the next client's would have completed the message): release it now if idle."""
        if not self.cskip_release:
            return
        self.cskip_release = False
        srv = self.server
        if (srv is not None and not self.cskip and not self.copy_in and self.phase == RELAY
                and self.z_recv == self.syncs_sent and not self.unsynced and not self.swallow_z
                and self.held is None and self.wait_task is None and srv.status == b"I"):
            self._release()
            if self.clients.draining is not None:
                self.clients.idle(self)

    def _flush(self, data: bytes, run: int, upto: int) -> None:
        if run < upto:
            self.out.append(data if run == 0 and upto == len(data)  # type: ignore[union-attr]
                            else data[run:upto])

    def _to_server(self, payload: bytes) -> None:
        out = self.out
        if out is not None:
            out.append(payload)
        else:
            self.server.transport.write(payload)  # type: ignore[union-attr]

    def _too_big(self, t: int, ln: int) -> None:
        if ln < 4:
            self.fatal(PROTOCOL_VIOLATION, "invalid message length")
        else:
            self.fatal(PROTOCOL_VIOLATION, f"message of type {chr(t)!r} is {ln} bytes, more "
                       f"than the gateway's limit of {self.max_msg} bytes",
                       hint="Send smaller statements or COPY batches.")

    # -- operations --------------------------------------------------------------------------
    def _new_op(self, verb: str, text: str | None, size: int) -> Operation:
        op = Operation(self.session, "query", verb, text, size)  # type: ignore[arg-type]
        op.canceller = self.canceller
        return op

    def _execute_op(self, data: bytes, pos: int, end: int) -> Operation:
        nul = data.find(0, pos + 5, end)
        if nul < 0 or end - nul != 5:
            raise _Malformed("invalid Execute message")
        stmt = self.portals.get(data[pos + 5:nul])
        if stmt is None:
            return self._new_op("OTHER", None, end - pos + self.bind_size)
        return self._new_op(stmt.verb, stmt.text, end - pos + self.bind_size)

    def _admit(self, op: Operation) -> Any:
        try:
            return self.chain.admit(op)
        except Reject as rej:
            return rej
        except Exception as exc:
            return self._layer_failed(op, exc)

    def _layer_failed(self, op: Operation, exc: Exception) -> Reject:
        # A broken layer must not take the gateway down, nor let the operation through.
        log.exception("layer chain failed to admit %r", op)
        return Reject(Reason.UNAVAILABLE, f"internal error in the gateway: {exc}")

    @staticmethod
    def _listen_refused() -> bytes:
        # Notifications arrive on whichever server connection listened, which the next
        # transaction may not get: refuse clearly instead of losing them.
        return pg.error_response(
            FEATURE_NOT_SUPPORTED, "LISTEN is not supported in transaction pooling mode",
            hint="Use a database on a backend with pool_mode = \"session\" for LISTEN/NOTIFY.")

    def _server_state_changed(self, srv: ServerConnection, verb: str) -> None:
        # The client changed session state behind the pool's back: re-apply settings on the
        # next checkout, and forget prepared statements DISCARD/DEALLOCATE may have dropped.
        srv.applied = None
        if verb in ("DISCARD", "DEALLOCATE"):
            srv.forget_prepared()

    def _refused(self, op: Operation | None, verdict: Reject | bytes) -> bytes:
        """Record a refusal on ``op`` (or in the counters when no op was built); the
        ErrorResponse to send."""
        if isinstance(verdict, Reject):
            payload = reject_error(verdict)
            if op is None:
                self.metrics.rejected += 1
                return payload
            op.rejection = op.rejection or verdict
        else:
            payload = verdict
            if op is None:
                self.metrics.error += 1
                return payload
            op.error = pg.error_fields(verdict[5:]).get("C", "08006")
        self._finish(op)
        return payload

    def _refuse_query(self, op: Operation | None, verdict: Reject | bytes) -> None:
        payload = self._refused(op, verdict)
        if self.z_recv < self.syncs_sent:
            self._queue_inject(self.syncs_sent, False, payload, True)
        else:
            srv = self.server
            self._write(payload + pg.ready_for_query(srv.status if srv is not None else b"I"))
            self._idle_now()

    def _idle_now(self) -> None:
        """After an answer of the gateway's own: let a drain close this client if idle."""
        if self.clients.draining is not None and self.is_idle():
            self.clients.idle(self)

    def _refuse_execute(self, op: Operation | None, verdict: Reject | bytes) -> None:
        payload = self._refused(op, verdict)
        self.discarding = True
        if self.server is None and self.z_recv >= self.syncs_sent:
            self._write(payload)  # nothing in flight upstream: answer at once
            self.discard_error = None
        else:
            self.discard_error = payload

    def _finish(self, op: Operation) -> None:
        op.ended = _monotonic()
        if op is self.cancel_op:
            self.cancel_op = None
            self.cancel_reject = None
        metrics = self.metrics
        if op.rejection is not None:
            metrics.rejected += 1
        elif op.error is not None:
            metrics.error += 1
        else:
            metrics.ok += 1
        self.chain.complete(op)

    # -- waiting (async admission, server checkout) ------------------------------------------
    def _next_turn_at(self, data: bytes, pos: int) -> None:
        """Hold the input from ``pos`` and go on with it in the event loop's next turn, after
        the other connections ready now (one client's 5,000-message batch must not hold
        everyone's queries for its whole parse)."""
        self.held = bytearray()  # what arrives meanwhile (reading is paused: little)
        self.held_at = (data, pos)  # the rest itself is not copied
        self._pause(WAITING)
        asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        held_at, self.held_at = self.held_at, None
        if (self.phase != RELAY or self.held is None or self.wait_task is not None
                or held_at is None):
            return
        data, pos = held_at
        if self.held:
            data, pos = data[pos:] + bytes(self.held), 0
        self.held = None
        self._unpause(WAITING)
        try:
            self._process(data, pos, pos, None)
        except Exception as exc:
            self.crashed(exc)

    def _suspend(self, data: bytes, pos: int, op: Operation | None, pending: Any) -> None:
        self.held = bytearray(data[pos:] if pos else data)
        self._pause(WAITING)
        self.wait_task = self.door.spawn(self._resume(op, pending))

    async def _resume(self, op: Operation | None, pending: Any) -> None:
        verdict: Reject | bytes | None = None
        try:
            if pending is not None:
                try:
                    await pending
                except Reject as rej:
                    verdict = rej
                except Exception as exc:
                    log.exception("layer chain failed while admitting %r", op)
                    verdict = Reject(Reason.UNAVAILABLE, f"internal error in the gateway: {exc}")
            elif self.server is None and self.phase == RELAY:
                verdict = await self._acquire()
        except asyncio.CancelledError:
            if self.wait_cancel is None:
                raise
            verdict = self.wait_cancel
        finally:
            self.wait_task = None
            self.wait_cancel = None
        if self.phase != RELAY:
            if op is not None and op.ended is None:
                op.error = op.error or "08006"
                self._finish(op)
            return
        data = bytes(self.held or b"")
        self.held = None
        self._unpause(WAITING)
        try:
            self._process(data, 0, 0, (op, verdict))
        except Exception as exc:
            self.crashed(exc)

    async def _acquire(self) -> bytes | None:
        """Get a server connection for the waiting input; an error payload on failure."""
        pool = self.pool
        assert pool is not None
        started = _monotonic()
        try:
            srv = await pool.acquire()
        except PoolTimeout:
            return reject_error(self._pool_exhausted())
        except UpstreamError as exc:
            return pg.error_response(client_sqlstate(exc), exc.message, detail=exc.detail,
                                     hint=exc.hint)
        self.door.observe_checkout(pool, _monotonic() - started)
        if self.phase != RELAY:
            pool.checkin(srv)
            return None
        self._attach(srv)
        return None

    def _pool_exhausted(self) -> Reject:
        pool = self.pool
        assert pool is not None
        return Reject(Reason.CONNECTIONS, "no server connection became free in time",
                      detail=f"All {pool.limit} server connections of this database stayed busy "
                             f"for {self.cfg.query_wait_timeout:g}s (query_wait_timeout).",
                      hint="Retry later, or shorten transactions that hold a connection.")

    # -- server checkout / release -------------------------------------------------------------
    def _checkout(self) -> ServerConnection | None:
        srv = self.pool.take(self.last_server)  # type: ignore[union-attr]
        if srv is not None:
            self._attach(srv)
        return srv

    def _attach(self, srv: ServerConnection) -> None:
        srv.client = self
        self.server = srv
        if self.write_paused:
            srv.pause()
        settings = self.session.settings  # type: ignore[union-attr]
        if settings is not self.settings_src:
            self.settings_src = settings
            self.desired = {**self.startup_settings, **settings}
        desired = self.desired
        if srv.applied is not desired:
            if srv.applied != desired:
                self._send_settings(srv, desired)
            srv.applied = desired
        if srv.to_deallocate:
            names, srv.to_deallocate = srv.to_deallocate, []
            self._to_server(pg.query("; ".join(
                "DEALLOCATE " + pg.quote_ident(n.decode()) for n in names)))
            self.swallow_z += 1

    def _reapply(self, srv: ServerConnection, data: bytes, run: int, pos: int) -> int:
        """Session mode: the tier changed during the session. Our SET must be answered
        before anything else, so it goes out only when nothing is in flight (the next
        statement outside a pipeline); returns the new start of the unforwarded bytes."""
        if self.z_recv != self.syncs_sent or self.unsynced or self.copy_in:
            return run
        self._flush(data, run, pos)
        self._apply_now(srv)
        return pos

    def _apply_now(self, srv: ServerConnection) -> None:
        settings = self.session.settings  # type: ignore[union-attr]
        self.settings_src = settings
        desired = {**self.startup_settings, **settings}
        self.desired = desired
        if srv.applied != desired:
            self._send_settings(srv, desired)
        srv.applied = desired

    def _send_settings(self, srv: ServerConnection, desired: dict[str, str]) -> None:
        applied = srv.applied
        parts = []
        if applied is None:
            parts.append("RESET ALL")
            applied = {}
        for name, value in desired.items():
            if applied.get(name) != value:
                parts.append(f"SET {_guc(name)} = {pg.quote_literal(value)}")
        for name in applied:
            if name not in desired:
                parts.append(f"RESET {_guc(name)}")
        if parts:
            self._to_server(pg.query("; ".join(parts)))
            self.swallow_z += 1

    def _release(self) -> None:
        srv = self.server
        assert srv is not None
        self.server = None
        self.last_server = srv
        srv.client = None
        if srv.reading_paused:
            srv.resume()
        if self.pause_flags & SERVER_FULL:
            self._unpause(SERVER_FULL)
        if srv.cancels_pending:
            srv.release_after_cancel = True
        else:
            self.pool.checkin(srv)  # type: ignore[union-attr]

    # -- prepared statements ---------------------------------------------------------------
    def _stmt(self, tail: bytes) -> Stmt:
        stmt = self.stmt_cache.get(tail)
        if stmt is None:
            nul = tail.find(0)
            if nul < 0 or (len(tail) - nul - 3) % 4 or len(tail) - nul < 3:
                raise _Malformed("invalid Parse message")
            text = tail[:nul].decode("utf-8", "replace")
            stmt = Stmt(tail, text, verb_of(text))
            cache = self.stmt_cache
            if len(cache) >= 64:
                cache.clear()
            cache[tail] = stmt
        return stmt

    def _parse(self, data: bytes, pos: int, end: int, run: int, srv: ServerConnection) -> int:
        nul = data.find(0, pos + 5, end)
        if nul < 0:
            raise _Malformed("invalid Parse message")
        name = data[pos + 5:nul]
        stmt = self._stmt(data[nul + 1:end])
        if stmt.verb == "LISTEN" and not self.session_mode:
            # As for a simple Query: refused, and the batch dropped up to its Sync.
            self._flush(data, run, pos)
            self.discarding = True
            self.discard_error = self._listen_refused()
            self.metrics.error += 1
            return end
        self.stmts[name] = stmt
        if self.session_mode:
            return run
        fifo = self.parse_fifo
        assert fifo is not None
        if not name:  # the unnamed statement lives only for this batch: no rename
            fifo.append((self.syncs_sent + 1, False, b"", b""))
            return run
        # A fresh server-side name: the client expects a ParseComplete for this message, and
        # re-preparing (rare: once per statement per client) is simpler than faking one.
        sname = self._register(srv, stmt.key)
        self._flush(data, run, pos)
        self._to_server(pg.parse_message(sname, stmt.key))
        fifo.append((self.syncs_sent + 1, False, sname, name))
        return end

    def _register(self, srv: ServerConnection, key: bytes) -> bytes:
        sname = b"o7s_%d" % next(_names)
        prepared = srv.prepared
        prepared[sname] = key
        srv.by_key[key] = sname
        if len(prepared) > self.cfg.max_prepared_statements:
            old, old_key = prepared.popitem(last=False)
            if srv.by_key.get(old_key) == old:
                del srv.by_key[old_key]
            srv.to_deallocate.append(old)
        return sname

    def _server_name(self, srv: ServerConnection, stmt: Stmt, data: bytes, run: int,
                     pos: int) -> tuple[bytes, int]:
        """The server's name for ``stmt``, preparing it there first when it is missing.
        Returns (name, new run start) — the caller rewrites its message."""
        sname = srv.by_key.get(stmt.key)
        if sname is not None:
            srv.prepared.move_to_end(sname)
            self._flush(data, run, pos)
            return sname, pos
        sname = self._register(srv, stmt.key)
        self._flush(data, run, pos)
        self._to_server(pg.parse_message(sname, stmt.key))
        self.parse_fifo.append((self.syncs_sent + 1, True, sname, b""))  # type: ignore[union-attr]
        return sname, pos

    def _bind(self, data: bytes, pos: int, end: int, run: int, srv: ServerConnection) -> int:
        pnul = data.find(0, pos + 5, end)
        snul = data.find(0, pnul + 1, end) if pnul >= 0 else -1
        if snul < 0:
            raise _Malformed("invalid Bind message")
        name = data[pnul + 1:snul]
        stmt = self.stmts.get(name)
        if self.door.observe:  # the Execute that follows reports the statement's text
            self.bind_size = end - pos
            if stmt is not None:
                self.portals[data[pos + 5:pnul]] = stmt
        if self.session_mode or not name or stmt is None:
            return run
        sname = srv.by_key.get(stmt.key)
        out: list[bytes] = self.out  # type: ignore[assignment]
        if sname is None:
            sname, _ = self._server_name(srv, stmt, data, run, pos)
        else:
            srv.prepared.move_to_end(sname)
            if run < pos:  # _flush, inline
                out.append(data[run:pos])
        # The Bind with the server's statement name, as pieces: the chunk's one write joins
        # them (no join of its own). After the name: its NUL, formats and parameters.
        out += (b"B", _pack_i32(end - snul + pnul - pos + len(sname)), data[pos + 5:pnul + 1],
                sname, data[snul:end])
        return end

    def _describe_close(self, t: int, data: bytes, pos: int, end: int, run: int,
                        srv: ServerConnection) -> int:
        name = data[pos + 6:end - 1]
        stmt = self.stmts.get(name)
        if stmt is None:
            return run
        if t == 67:  # Close: the server copy stays for other clients; answer via a no-op
            del self.stmts[name]
            self._flush(data, run, pos)
            self._to_server(pg.message(b"C", b"S" + _CLOSED_NAME + b"\0"))
            return end
        sname, _ = self._server_name(srv, stmt, data, run, pos)
        self._to_server(pg.message(b"D", b"S" + sname + b"\0"))
        return end

    # -- server -> client --------------------------------------------------------------------
    def server_data(self, data: bytes) -> None:
        if self.swallow_z:
            data = self._swallow(data)
            if not data:
                return
        sp = self.spartial
        if sp:
            if self.sneed > len(sp) + len(data):  # a long message still incomplete
                if sp.__class__ is bytes:
                    sp = self.spartial = bytearray(sp)
                sp += data
                return
            data = (sp if sp.__class__ is bytes else bytes(sp)) + data
            self.spartial = b""
        n = len(data)
        self.session.bytes_out += n  # type: ignore[union-attr]
        ops = self.ops
        if ops:
            ops[0][0].bytes_out += n
        pos = self.sskip
        if pos:
            if pos >= n:
                self.sskip = pos - n
                self.transport.write(data)  # type: ignore[union-attr]
                return
            self.sskip = 0
        run = 0
        out: list[bytes] = []  # only when the stream is cut (injected or swallowed messages)
        while n - pos >= 5:
            t = data[pos]
            end = pos + 1 + _unpack_len(data, pos + 1)[0]
            if t == 68 or t == 100:  # DataRow / CopyData: never held back
                if end > n:
                    self.sskip = end - n
                    pos = n
                    break
                pos = end
                continue
            if end > n:
                if t not in _WATCHED:  # NoticeResponse, RowDescription ...: stream it too
                    self.sskip = end - n
                    pos = n
                break
            if t not in _WATCHED:
                pos = end
                continue
            if t == 90:  # ReadyForQuery
                if self.inject is not None:
                    run = self._inject_at(out, data, run, pos, self.z_recv + 1, True)
                z = self.z_recv = self.z_recv + 1
                status = data[pos + 5:end]
                srv = self.server
                srv.status = status  # type: ignore[union-attr]
                while ops and ops[0][2] <= z:
                    op = ops.popleft()[0]
                    if op.ended is None:
                        if op.error is None and self.batch_error is not None:
                            op.error = self.batch_error  # skipped after an earlier error
                        self._finish(op)
                self.batch_error = None
                self.copy_in = False
                pos = end
                if self.inject is not None:
                    run = self._inject_at(out, data, run, pos, z, False)
                if (status == b"I" and z == self.syncs_sent and not self.session_mode
                        and not self.unsynced):
                    if self.cskip:
                        # Part of a CopyData went upstream, which waits for its rest: the
                        # server stays with this client until it is whole (_streamed_out).
                        self.cskip_release = True
                        continue
                    if run < pos:
                        out.append(data if run == 0 and pos == n else data[run:pos])
                    if out:
                        self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]
                    self._release()
                    if pos < n:
                        srv.data_received(data[pos:])  # type: ignore[union-attr]
                    if self.clients.draining is not None:
                        self.clients.idle(self)
                    return
                continue
            if t == 67:  # CommandComplete: "SELECT 5", "INSERT 0 5", "COPY 3" ...
                if ops:
                    op, is_query, _ = ops[0]
                    tag = data[pos + 5:end - 1]
                    parsed = _tags.get(tag)
                    if parsed is None:
                        parsed = _command_tag(tag)
                    count_, first = parsed
                    if count_ is not None:
                        if first == 83 or first == 70 or (first == 67 and not self.copy_in):
                            op.rows = count_ if op.rows is None else op.rows + count_
                        else:  # INSERT UPDATE DELETE MERGE COPY-in
                            op.written = count_ if op.written is None else op.written + count_
                    if not is_query:
                        ops.popleft()
                        self._finish(op)
            elif t == 69:  # ErrorResponse
                run = self._server_error(out, data, run, pos, end)
            elif t == 49:  # ParseComplete
                fifo = self.parse_fifo
                while fifo:
                    if fifo.popleft()[1]:  # our own Parse: the client never asked
                        if run < pos:
                            out.append(data[run:pos])
                        run = end
                    if not data.startswith(_PARSE_COMPLETE, end):
                        break
                    # The next one of a run (a client's Parse pipeline): taken here, not
                    # through the whole loop (5,000 of them cost 5 ms of event loop).
                    pos = end
                    end = pos + 5
            elif t == 83:  # ParameterStatus
                self._parameter_status(data, pos, end)
            elif t == 73 or t == 115:  # EmptyQueryResponse / PortalSuspended
                if ops and not ops[0][1]:
                    self._finish(ops.popleft()[0])
            elif t == 71:  # CopyInResponse
                self.copy_in = True
                self._copy_started()
            pos = end
        if run < pos:
            out.append(data if run == 0 and pos == n else data[run:pos])
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]
        if pos < n:
            self.spartial = data[pos:]
            self.sneed = 1 + _unpack_len(data, pos + 1)[0] if n - pos >= 5 else 5
        if self.clients.draining is not None and self.is_idle():
            self.clients.idle(self)

    def _copy_started(self) -> None:
        """COPY FROM STDIN began upstream. A Sync the client sent after the COPY's Execute
        and before this CopyInResponse (libpq and tokio-postgres send Parse, Bind, Execute and
        Sync at once) reached the COPY, which ignores it: no ReadyForQuery will answer it, so
        it is counted off. Only when that is certain: the COPY's operation is the only one in
        flight and no CopyDone/CopyFail or FunctionCall went upstream since. Otherwise (and
        for a Sync sent among the CopyData, which PostgreSQL answers if the COPY failed first)
        the count stays: the server stays with this client and is closed when it leaves,
        never released while it may still answer."""
        ops = self.ops
        if len(ops) != 1 or self.inject is not None:
            return
        _, is_query, index = ops[0]
        base = index if is_query else index - 1  # syncs_sent just after the COPY's message
        if self.syncs_sent > base and self.cf_mark < base:
            self.syncs_sent = base

    def _server_error(self, out: list[bytes], data: bytes, run: int, pos: int, end: int) -> int:
        code = pg.error_sqlstate(data, pos, end)
        if pg.error_is_fatal(data, pos, end):
            self.saw_fatal = True
        reject = self.cancel_reject
        if reject is not None and code == "57014":
            # Our own cancel (e.g. the timeout layer): tell the client why, in its words.
            self.cancel_reject = None
            self.cancel_op = None
            if run < pos:
                out.append(data[run:pos])
            out.append(reject_error(reject))
            run = end
        else:
            fixed = self._rewrite_error(data, pos, end, code)
            if fixed is not None:
                if run < pos:
                    out.append(data[run:pos])
                out.append(fixed)
                run = end
        ops = self.ops
        if ops and ops[0][2] == self.z_recv + 1:
            op, is_query, _ = ops[0]
            if op.error is None:
                op.error = code
            if not is_query:
                ops.popleft()
                self._finish(op)
        elif not self.door.observe and self.batch_error is None:
            # No operation objects: move the batch's operation from "ok" to "error".
            metrics = self.metrics
            metrics.ok -= 1
            metrics.error += 1
        self.batch_error = code
        fifo = self.parse_fifo
        if fifo:  # the server skips the rest of this batch: those Parses never happen
            batch = self.z_recv + 1
            srv = self.server
            while fifo and fifo[0][0] == batch:
                _, _, sname, cname = fifo.popleft()
                if sname and srv is not None and srv.prepared.pop(sname, None) is not None:
                    key = next((k for k, v in srv.by_key.items() if v == sname), None)
                    if key is not None:
                        del srv.by_key[key]
                if cname:
                    self.stmts.pop(cname, None)
        return run

    def _rewrite_error(self, data: bytes, pos: int, end: int, code: str | None) -> bytes | None:
        """An upstream ErrorResponse as the client must see it, or None to pass it as is:
        the upstream role and database names become the tenant's own (``o7s_acme`` ->
        ``acme``), and the upstream's statement timeout of the tier is answered like the
        gateway's own (the timeout layer's words, DETAIL and HINT): whichever fires first,
        the client gets one answer."""
        hide = self.hide
        changed = False
        body = data[pos + 5:end]
        for old, new in hide:
            if body.find(old) >= 0:
                body = body.replace(old, new)
                changed = True
        if code == "57014":
            timeout = self._tier_timeout_error(body)
            if timeout is not None:
                return timeout
        return b"E" + _pack_i32(len(body) + 4) + body if changed else None

    def _tier_timeout_error(self, body: bytes) -> bytes | None:
        fields = pg.error_fields(body)
        if fields.get("M") != "canceling statement due to statement timeout":
            return None
        session = self.session
        tier = session.tier if session is not None else None
        limit = tier.statement_timeout if tier is not None else None
        if tier is None or limit is None:
            return None
        ops = self.ops
        if ops and _monotonic() - ops[0][0].started < 0.9 * limit:
            return None  # fired well before the tier's limit: a SET of the client's
        shown = format_duration(limit)
        hint = self.ctx.tiers.upgrade_hint(tier, "statement_timeout", _describe_timeout)
        return pg.error_response(
            "57014", f"canceling statement due to the gateway's statement timeout ({shown})",
            detail=f"statement timeout {shown} on tier {tier.name}.",
            hint=hint or "Break the work into shorter statements.")

    def hide_names(self, text: str | None) -> str | None:
        """``text`` (an upstream message) with the upstream role and database names
        replaced by the tenant's."""
        if not text:
            return text
        for old, new in self.hide:
            text = text.replace(old.decode(), new.decode())
        return text

    def _parameter_status(self, data: bytes, pos: int, end: int) -> None:
        srv = self.server
        if srv is None:
            return
        name, value = srv.note_parameter(data, pos, end)
        if name in TRACKED_PARAMS and not self.session_mode:
            self.startup_settings[name] = value
            self.desired = {**self.desired, name: value}
            if srv.applied is not None:  # None: unknown state, re-applied in full anyway
                srv.applied = self.desired

    def _swallow(self, data: bytes) -> bytes:
        """Consume the answers to the gateway's own queries (settings, DEALLOCATE) that
        precede the client's; return what follows them."""
        if self.spartial:
            data = bytes(self.spartial) + data
            self.spartial = b""
        self.sneed = 0
        pos = 0
        n = len(data)
        srv = self.server
        while self.swallow_z and n - pos >= 5:
            t = data[pos]
            end = pos + 1 + _unpack_len(data, pos + 1)[0]
            if end > n:
                break
            if t == 90:
                self.swallow_z -= 1
                if srv is not None:
                    srv.status = data[pos + 5:end]
                if not self.swallow_z:
                    self._preamble_done()
            elif t == 69:
                fields = pg.error_fields(data[pos + 5:end])
                self.swallow_error = fields
                if srv is not None:
                    srv.applied = None  # unknown now: re-apply everything next time
                if self.capture is None:
                    log.warning("applying session settings upstream failed: %s", fields.get("M"),
                                extra={"tenant": self.session.tenant_slug if self.session else None})
            elif t == 83 and srv is not None:
                srv.note_parameter(data, pos, end)
            pos = end
        if self.swallow_z:
            self.spartial = data[pos:]
            return b""
        return data[pos:]

    def _preamble_done(self) -> None:
        capture = self.capture
        if capture is not None:
            self.capture = None
            if not capture.done():
                capture.set_result(self.swallow_error)
        self.swallow_error = None

    def _parameter_status_all(self) -> bytes:
        srv = self.server
        return b"".join(pg.parameter_status(k, v) for k, v in srv.params.items()) if srv else b""

    def _queue_inject(self, z_index: int, before: bool, payload: bytes, ready: bool) -> None:
        if self.inject is None:
            self.inject = []
        self.inject.append((z_index, before, payload, ready))

    def _inject_at(self, out: list[bytes], data: bytes, run: int, pos: int, z_index: int,
                   before: bool) -> int:
        """Write queued refusals that belong just before/after ReadyForQuery ``z_index``."""
        inject = self.inject
        assert inject is not None
        payloads = []
        keep = []
        for entry in inject:
            if entry[0] == z_index and entry[1] == before:
                payload = entry[2]
                if entry[3]:
                    srv = self.server
                    payload += pg.ready_for_query(srv.status if srv is not None else b"I")
                payloads.append(payload)
            else:
                keep.append(entry)
        if not payloads:
            return run
        self.inject = keep or None
        if run < pos:
            out.append(data[run:pos])
        out.extend(payloads)
        return pos

    # -- cancel ------------------------------------------------------------------------------
    def _cancel_current(self, reject: Reject) -> None:
        """``op.canceller`` of every operation of this client (one bound method, not a
        closure per operation): stop what runs upstream and answer with ``reject``.
        ``Operation.cancel`` calls it only for an operation that has not ended, which is
        the oldest one in flight: the statement a CancelRequest stops."""
        if self.phase != RELAY:
            return
        if self.wait_task is not None and not self.wait_task.done():
            # Still waiting for the chain or a server: nothing runs upstream yet.
            self.wait_cancel = reject
            self.wait_task.cancel()
            return
        srv = self.server
        if srv is None or not self.ops:
            return
        self.cancel_reject = reject
        self.cancel_op = self.ops[0][0]
        self.door.spawn(self.door.cancel_upstream(srv))

    def cancel_from_client(self) -> None:
        """A CancelRequest with this client's key arrived."""
        srv = self.server
        if srv is not None and (self.z_recv < self.syncs_sent or self.unsynced or self.copy_in):
            self.door.spawn(self.door.cancel_upstream(srv))

    # -- closing -----------------------------------------------------------------------------
    def _write(self, payload: bytes) -> None:
        if self.transport is not None and self.phase != CLOSED:
            self.transport.write(payload)

    def fatal(self, sqlstate: str, message: str, *, detail: str | None = None,
              hint: str | None = None) -> None:
        """Send a FATAL error and end the connection, letting the client read it: its
        unread input (the rest of an oversized message) is drained, not answered with a
        reset that would destroy the error in flight."""
        self._write(pg.error_response(sqlstate, message, severity="FATAL", detail=detail,
                                      hint=hint))
        transport = self.transport
        if self.phase == CLOSED or transport is None or transport.is_closing():
            return
        self.phase = DRAINING
        self._drop_server()
        self.held = None
        self.pause_flags = 0
        try:
            transport.resume_reading()
            if transport.can_write_eof():
                transport.write_eof()
        except (OSError, RuntimeError):
            pass
        asyncio.get_running_loop().call_later(2.0, self.close)

    def malformed(self, message: str) -> None:
        """A message the gateway cannot read: 08P01 to this client, which is closed (its
        server connection is cancelled and closed, never handed to another client)."""
        log_limited(logging.INFO, "malformed client message: %s", message,
                    extra={"client": self.peer})
        self.fatal(PROTOCOL_VIOLATION, message)

    def crashed(self, exc: BaseException) -> None:
        """An unexpected error while relaying: logged (rate-limited), this client closed."""
        log_limited(logging.ERROR, "relay error: %r", exc, extra={"client": self.peer},
                    exc_info=exc)
        self.out = None
        if self.phase != CLOSED:
            self.fatal("XX000", "internal error in the gateway")

    def close_with(self, reject: Reject) -> None:
        """``session.closer``: tell the client why, then close."""
        self._write(reject_error(reject, fatal=True))
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            # A client that stopped reading must not keep the connection (and a server) alive.
            asyncio.get_running_loop().call_later(5.0, self._abort_if_stuck)

    def abort(self) -> None:
        """Drop the connection now (the end of a close's grace period)."""
        if self.transport is not None:
            self.transport.abort()

    def _abort_if_stuck(self) -> None:
        if self.phase != CLOSED and self.transport is not None:
            self.transport.abort()

    def server_lost(self, srv: ServerConnection) -> None:
        """The server connection this client holds went away."""
        if self.server is srv:
            self.server = None
        if self.phase == CLOSED:
            return
        if self.phase == STARTUP:
            capture = self.capture
            if capture is not None and not capture.done():
                capture.set_exception(UpstreamError("the upstream server closed the connection"))
            return
        if not self.saw_fatal:
            self._write(pg.error_response("08006", "the connection to the upstream server was lost",
                                          severity="FATAL",
                                          hint="Reconnect; the gateway serves new connections "
                                               "as soon as the server is back."))
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase == CLOSED:
            return
        self.phase = CLOSED
        task = self.login_task
        if task is not None and not task.done():
            task.cancel()
        waiter = self.swaiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drop_server()
        while self.ops:
            op = self.ops.popleft()[0]
            if op.ended is None:
                op.error = op.error or "08006"
                self._finish(op)
        self.clients.discard(self)
        if self.key is not None:
            self.door.cancel_keys.drop(self.key)
        login = self.login
        if login is not None:
            login.end()

    def _drop_server(self) -> None:
        """The client is going away: give its server connection back, or get rid of it."""
        srv = self.server
        if srv is None:
            return
        self.server = None
        srv.client = None
        if srv.reading_paused:
            srv.resume()
        if self.cskip:
            # Part of a streamed message went upstream: the server waits for its rest, and
            # no reset or next client may follow on this connection.
            srv.close()
            return
        running = (self.z_recv < self.syncs_sent or self.unsynced or bool(self.swallow_z)
                   or bool(self.copy_in))
        if running:
            # Stop the query upstream before dropping the connection: PostgreSQL would
            # otherwise notice the gone client only when it next writes.
            self.door.spawn(self.door.cancel_and_close(srv))
        elif srv.status != b"I" or srv.closed:
            srv.close()
        elif self.session_mode:
            srv.reset(DISCARD_ALL)  # checks itself in when the server answered
        else:
            self.pool.checkin(srv)  # type: ignore[union-attr]

    def is_idle(self) -> bool:
        """Between requests and outside a transaction (safe to close during a drain)."""
        if self.phase != RELAY or self.held is not None:
            return False
        if self.z_recv < self.syncs_sent or self.unsynced or self.copy_in:
            return False
        srv = self.server
        return srv is None or srv.status == b"I"

    def describe(self) -> dict[str, Any]:
        s = self.session
        return {"client": self.peer, "tenant": s.tenant_slug if s else None,
                "database": s.database if s else None, "server": self.server is not None,
                "idle": self.is_idle()}


#: CommandComplete tag -> (row count or None, first byte): an application's statements
#: repeat a few tags ("SELECT 1", "UPDATE 1"), so most are parsed once.
_tags: dict[bytes, tuple[int | None, int]] = {}


def _command_tag(tag: bytes) -> tuple[int | None, int]:
    sp = tag.rfind(b" ")
    count_ = int(tag[sp + 1:]) if 0 <= sp < len(tag) - 1 and 48 <= tag[sp + 1] <= 57 else None
    parsed = (count_, tag[0] if tag else 0)
    if len(_tags) >= 1024:
        _tags.clear()
    _tags[tag] = parsed
    return parsed


#: Backend message types the relay looks into (all others pass by length only).
_WATCHED = frozenset(b"ZCE1SIsG")
_PARSE_COMPLETE = b"1\x00\x00\x00\x04"

#: Frontend message types of the extended protocol, plus FunctionCall.
_EXTENDED = frozenset(b"PBDECHF")


def _describe_timeout(value: float | None) -> str:
    return "no statement timeout" if value is None else (
        f"a {format_duration(value)} statement timeout")


def _guc(name: str) -> str:
    return ".".join(pg.quote_ident(part) for part in name.split("."))
