"""One client connection of the Redis front door (an ``asyncio.Protocol``).

The path of a command: parse (``wire.parse_command``) -> look the command up in the table the
upstream reported -> rewrite its keys -> (layers, only when some layer looks at operations)
-> append it to the client's current upstream connection. Replies come back through
``deliver``/``deliver_pending`` in order, several at a time per write.

Ordering rules, which make a multiplexed gateway behave like a private server:

* a client uses one upstream connection at a time; before its commands move to another
  connection (shared -> dedicated for MULTI, -> admin for KEYS ...) every reply it is owed
  must have arrived (the command *stalls* until then);
* replies the gateway writes itself (errors, PONG, CLIENT ID ...) are *held* behind the
  upstream replies the client is still owed (``held``: ``(sent_count, bytes)``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any, cast

from ogelkit import Reason, Reject, Session
from ogelkit.frontdoor import peer_address
from ogelkit_redis import wire
from ogelkit_redis.commands import Command, CommandTable
from ogelkit_redis.cost import UNBATCHED
from ogelkit_redis.errors import NO_SWITCH, NOAUTH, WRONGPASS, protocol_error, reject_error
from ogelkit_redis.login import authenticate
from ogelkit_redis.namespace import Namespace, first_word
from ogelkit_redis.upstream import Pending, RedisOperation, Upstream
from ogelkit_redis.wire import (
    BIG_ARRAY,
    NATIVE,
    NOT_BULK,
    FastProtocolError,
    Partial,
    ProtocolError,
    encode_command,
    encode_tuple,
    new_reader,
    parse_chunk,
    parse_command,
)

if TYPE_CHECKING:
    from ogelkit.frontdoor import Login
    from ogelkit_redis.backend import RedisBackend, TenantDb
    from ogelkit_redis.listener import RedisFrontDoor

#: Stands for "not authenticated yet" in the attributes authenticated() sets (see there).
_UNSET: Any = None

log = logging.getLogger("ogelkit.redis.client")

PREAUTH_MAX_BULK = 16 * 1024  # like Redis for unauthenticated clients
PREAUTH_MAX_ARGS = 16
PROTOVER = re.compile(rb"0|-?[1-9][0-9]{0,17}")  # what Redis's string2ll takes as HELLO's protover
MAX_PENDING_INPUT = 1024 * 1024  # input buffered while suspended before we stop reading
OWED_GRACE = 5.0  # after a protocol error: how long owed replies may take before the close
YIELD_AFTER = 64 * 1024  # a chunk this big: other clients' turn before the next one
#: Requests run per client per event-loop turn; the rest of the chunk waits for the next turn
#: (a 64 kB chunk of inline junk is ~4,000 requests the gateway answers itself: ~20 ms).
REQUESTS_PER_TURN = 64
#: Input bytes parsed per client per event-loop turn (a read is up to 256 kB: 6,500 SETs, or
#: 20,000 arguments of one MGET, tens of ms). The rest waits in ``_chunks``, with reading
#: paused, for the loop's next turn. A request counts once however many arguments it has,
#: so this, not REQUESTS_PER_TURN, bounds the turn of a client of 10,000-key commands. One
#: argument is never cut (a 10 MB value is taken whole: copying it costs little).
BYTES_PER_TURN = 16 * 1024
#: Connections of one tenant database that go on with kept input per event-loop turn.
SLICES_PER_TENANT = 4
#: An operation's arguments are for its admission (the cost layer's cost_key); once it is
#: queued upstream only its name stays, if it had more than this many: 128 MGETs of 10,000
#: keys in flight per connection held 1.3M bytes objects until their replies came.
ARGV_KEPT = 16
#: Sent behind each (UN)SUBSCRIBE (see RedisConnection.send_subscribe).
SUBSCRIBE_BARRIER = encode_command([b"PING"])


class RedisConnection(asyncio.Protocol):
    def __init__(self, door: RedisFrontDoor):
        self.door = door
        self.ctx = door.context
        self.clients = door.clients
        self.metrics = door.metrics
        self.login: Login | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()  # protocols are made by the running loop
        self.transport: asyncio.Transport | None = None
        self.session: Session = Session("redis", "")
        self.proto = 2
        self.authed = False
        self.closing = False
        self._close_when_answered: asyncio.TimerHandle | None = None  # see _protocol_error
        self.closed = False
        self.name: bytes | None = None
        # Set by authenticated(). Every command handler runs after it (before it, _preauth
        # answers every command), so they are typed as present; only the connection's own
        # bookkeeping (cleanup, HELLO before AUTH) looks at them earlier and checks.
        self.backend: RedisBackend = _UNSET
        self.tdb: TenantDb = _UNSET
        self.ns: Namespace = _UNSET
        self.table: CommandTable = _UNSET
        self.max_bulk = PREAUTH_MAX_BULK
        self.max_args = PREAUTH_MAX_ARGS
        self.shared_index = 0
        self.upstream: Upstream | None = None  # where the previous command went
        self.dedicated: Upstream | None = None
        self.sent = 0
        self.recv = 0
        self.held: deque[tuple[int, bytes]] = deque()
        self.in_multi = False
        self.multi_error = False
        self.multi_transforms: list[Callable[[bytes], bytes] | None] = []
        self.watching = False
        self.subs = 0
        self.ssubs = 0
        self.sub_inflight = 0  # (un)subscribe commands whose confirmations may still come
        self.blocked = 0  # blocking commands in flight
        self.reply_off = False
        self.skip_next = False
        self.no_evict = False
        self.lib_name = self.lib_ver = b""  # CLIENT SETINFO, shown in CLIENT INFO/LIST
        # Input handling. _chunks: bytes received and not parsed yet (an incomplete request
        # first: _partial says how far it was parsed, _need/_line what it still lacks; and
        # what arrived while the input was suspended); _have: their length. A stall or a
        # task keeps the input it interrupted as it is: _rest from _rest_pos (a buffer being
        # parsed), _rest_cmds from _rest_i (requests hiredis parsed); both come before
        # _chunks.
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        self._line = False
        self._partial = Partial()
        self._rest: bytes | None = None
        self._rest_pos = 0
        self._rest_cmds: list | None = None
        self._rest_i = 0
        self.suspended = False
        self._stalled: Callable[[], bool] | None = None
        self._reading_paused = False
        self.write_paused = False  # the client reads slower than its replies come
        self.max_inflight = door.max_inflight
        self._task: asyncio.Task[None] | None = None
        self.observe = False  # some layer looks at operations
        self.batching = False  # ... and all of them take batches
        self.chain: Any = None  # the layer chain; only used when self.observe says it exists
        self._reader = new_reader()
        self._out: list[bytes] | None = None
        self._shared: Upstream | None = None  # cached shared connection (this protocol)

    # == asyncio callbacks ======================================================================
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # asyncio set TCP_NODELAY
        self.session.client_addr = peer_address(transport)
        self.chain = self.ctx.chain
        self.observe = self.door.observe
        # Pipelined plain commands of one read become one Operation (Operation.count) when
        # every layer that looks at operations takes batches (docs/dev/performance.md).
        self.batching = self.observe and bool(getattr(self.chain, "batches", False))
        self._timer = self.loop.call_later(self.door.handshake_timeout, self._handshake_expired)
        self.clients.add(self)

    def _handshake_expired(self) -> None:
        self._timer = None
        if self.authed or self.closing:
            return
        login = self.login
        if login is not None and not login.ended and login.session.rejection is None:
            login.refuse(Reject(Reason.TIMEOUT, "authentication timed out"), "error")
        self._write(wire.error("ERR authentication timed out: AUTH within "
                               f"{self.door.handshake_timeout:g} s of connecting"))
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closing = True
        self.transport = None
        self.clients.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            return  # auth or a gateway-side command is running: it finishes the cleanup
        self._cleanup()

    def _cleanup(self) -> None:
        self._drop_dedicated()
        if self.tdb is not None:
            self.tdb.pools.detach(self.shared_index)
            self.tdb = _UNSET
        self._end_session()

    def pause_writing(self) -> None:
        # The client reads its replies slower than we produce them: stop reading its
        # requests, and sending them upstream (_over_bound), until its buffer drains; the
        # output guard refuses it if what is already owed piles up past the ceilings.
        self.write_paused = True
        self._pause_reading()
        self.door.output_guard.writing_paused(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.door.output_guard.writing_resumed(self)
        if self._stalled is _held and self.sent - self.recv < self.max_inflight:
            self.loop.call_soon(self._unstall)
        else:
            self._resume_reading()

    def _over_bound(self) -> bool:
        """Enough is owed to this client: [limits] max_inflight unanswered requests, or
        replies it does not read (a 64 kB chunk can hold 4,000 LRANGEs)."""
        return self.sent - self.recv >= self.max_inflight or self.write_paused

    def _hold(self) -> bool:
        """Stop the client's input until the replies owed are delivered (``_after_reply``
        then resumes it) and its transport takes writes again (``resume_writing``)."""
        self.suspended = True
        self._stalled = _held
        self._pause_reading()
        return False

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closing:
            self._reading_paused = False
            self.transport.resume_reading()

    def upstream_resumed(self) -> None:
        self._resume_reading()

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.session.bytes_in += size
        if self._chunks or self.suspended:
            self._chunks.append(data)
            self._have += size
            if self.suspended:
                if self._have > MAX_PENDING_INPUT:
                    self._pause_reading()
                return
            if self._have < self._need and (not self._line or b"\n" not in data):
                return  # the request cut short still lacks bytes: nothing to parse again
            if size > 2 * BYTES_PER_TURN and _TURNS and self.tdb in _TURNS:
                self._next_turn()  # its tenant's share of this turn is taken: wait in it
                return
            self._process(self._take(), 0)
        elif size > 2 * BYTES_PER_TURN and self.authed:
            # A big read: BYTES_PER_TURN of it now (or in the tenant's share of the next
            # turns, when other connections of the tenant wait for theirs), the rest later.
            self._chunks.append(data)
            self._have = size
            if _TURNS and self.tdb in _TURNS:
                self._next_turn()
                return
            self._process(self._take(), 0)
        else:
            pos = self._parse(data, 0)
            if 0 <= pos < size:  # an incomplete request at the end: keep it (from pos)
                rest = data[pos:] if pos else data
                self._chunks.append(rest)
                self._have = len(rest)
        if size >= YIELD_AFTER and not self._reading_paused and self.transport is not None:
            # A client sending faster than we parse: let the other clients' events run
            # before its next chunk (uvloop reads a busy socket up to 32 times in a row).
            self.transport.pause_reading()
            self.loop.call_soon(self._end_yield)

    def _end_yield(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def _take(self) -> bytes:
        """The next buffered input to parse, at most about BYTES_PER_TURN (or what the
        request cut short needs, if more: its bytes are joined once they are all there; a
        line cut short comes with BYTES_PER_TURN more). A chunk bigger than that is cut
        without a copy of its rest (a memoryview)."""
        chunks = self._chunks
        limit = BYTES_PER_TURN
        if self._line:  # a line without its end first: it, and more
            limit += len(chunks[0])
        elif self._need > limit:
            limit = self._need
        if self._have <= 2 * limit:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._chunks = []
            self._have = 0
            return data if type(data) is bytes else bytes(data)
        parts: list[bytes | memoryview] = []
        total = 0
        while total < limit:
            c = chunks[0]
            room = limit - total
            if len(c) <= 2 * room:
                parts.append(c)
                del chunks[0]
                total += len(c)
            else:
                view = c if type(c) is memoryview else memoryview(c)
                parts.append(view[:room])
                chunks[0] = view[room:]  # type: ignore[call-overload]
                total = limit
        self._have -= total
        taken = parts[0] if len(parts) == 1 else b"".join(parts)
        return taken if type(taken) is bytes else bytes(taken)

    # == request loop ===========================================================================
    def _process(self, data: bytes, pos: int) -> None:
        """Run the requests in ``data`` from ``pos``, then those buffered meanwhile.

        An incomplete request at the end is kept (from where ``parse_command`` says) in
        ``_chunks`` with what it needs in ``_need``/``_line``; a request that suspends the
        input (stall, task) leaves the rest in ``_rest``/``_rest_pos`` as it is, uncopied.
        (``data_received`` does the same inline for a chunk when nothing is buffered.)"""
        parsed = 0
        while True:
            parsed += len(data) - pos
            pos = self._parse(data, pos)
            if pos < 0:
                return  # suspended (the rest is kept) or closing
            chunks = self._chunks
            if pos < len(data):
                rest = data[pos:] if pos else data
                chunks.insert(0, rest)
                self._have += len(rest)
                if len(chunks) == 1:
                    return  # wait for more (data_received checks _need/_line)
                if self._have < self._need and not self._line:
                    return  # the request cut short needs more than is buffered
            elif not chunks:
                return
            if parsed >= BYTES_PER_TURN:  # the rest: the loop's next turn
                self._next_turn()
                return
            # Input that arrived while suspended: go on with it (after the rest, if any).
            data = self._take()
            pos = 0

    def _parse(self, data: bytes, pos: int) -> int:
        """Parse and run requests from ``pos`` (< ``len(data)``). Returns where an incomplete
        request starts (``len(data)``: none; ``_need``/``_line`` say what it lacks), or -1
        when the input stopped (suspended or closing)."""
        partial = self._partial
        n = len(data)
        self._need = 0  # until a request is cut short again
        self._line = False
        if partial.argv is not None:  # finish the request the previous chunk cut short
            try:
                argv, end = parse_command(data, pos, self.max_bulk, self.max_args, partial)
            except ProtocolError as exc:
                self._protocol_error(str(exc))
                return -1
            if argv is None:
                self._need = partial.need
                self._line = False
                return end
            pos = end
            if not self._execute(argv, None, 0, 0):
                self._keep(data, pos)
                return -1
            if self.closing:
                return -1
            if pos >= n:
                return n
        if NATIVE:
            # One native call parses every request of the chunk (Redis's rules and limits)
            # or returns None: a partial request, an inline one, an error (below).
            if self.authed and data[pos] == 42:
                cmds = parse_chunk(data, pos, self.max_bulk, self.max_args)
                if cmds is not None:
                    return n if self._run_parsed(cmds, 0) else -1
            reader = None
        else:
            reader = self._reader
        if (reader is not None and self.authed and data[pos] == 42
                and n - pos <= self.max_bulk and BIG_ARRAY.search(data, pos) is None
                and NOT_BULK.search(data, pos) is None):
            # Fast path: hiredis parses every request of the chunk, if the chunk holds only
            # complete multibulk requests. Anything else (a partial request, an inline one,
            # garbage, a huge array header) goes to the Python parser below, which also
            # enforces the limits. hiredis never sees an array header of 100000+ elements
            # (BIG_ARRAY): it would allocate the list before any check; nor a chunk where an
            # element might not be a bulk string (NOT_BULK: hiredis reads "+k" as b"k",
            # ":1" as 1, where Redis answers a protocol error). A nested array gives a list,
            # which no handler takes (TypeError below).
            reader.feed(data, pos)
            gets = reader.gets
            cmds = []
            try:
                argv = gets()
                while argv is not False:
                    cmds.append(argv)
                    argv = gets()
                # hiredis consumes the elements of a partial request too, so "no data left"
                # is not enough: the chunk must also end with the last complete request.
                complete = (bool(cmds) and not reader.has_data()
                            and data.endswith(encode_tuple(tuple(cmds[-1]))))
            except (FastProtocolError, TypeError):
                complete = False
            if complete:
                return n if self._run_parsed(cmds, 0) else -1
            self._reader = new_reader()
        execute = self._execute
        budget = REQUESTS_PER_TURN
        while pos < n:
            if self.closing:
                return -1
            if self._over_bound():
                self._keep(data, pos)
                self._hold()
                return -1
            budget -= 1
            if budget < 0:
                self._keep(data, pos)
                return self._next_turn()
            try:
                argv, end = parse_command(data, pos, self.max_bulk, self.max_args, partial)
            except ProtocolError as exc:
                self._protocol_error(str(exc))
                return -1
            if argv is None:
                self._need = partial.need
                self._line = partial.line
                return end
            start = pos
            pos = end
            if not argv:
                continue
            if not execute(argv, data, start, end):
                self._keep(data, pos)  # stalled or handed to a task: kept for _resume
                return -1
        return -1 if self.closing else n

    def _keep(self, data: bytes, pos: int) -> None:
        if pos < len(data):
            self._rest = data
            self._rest_pos = pos

    def _run_parsed(self, cmds: list, i: int) -> bool:
        # The commonest request, a one-key command on the shared connection with nothing
        # else going on, is prefixed and queued right here (through the layers' admission
        # when they look at operations), the pass-through ones of a chunk in one write.
        # Every other request takes ``_execute``, after which the conditions are checked
        # again (it may change them). False: the input stopped (the rest of ``cmds`` is
        # kept for ``_resume``) or the client is closing.
        n = min(len(cmds), i + REQUESTS_PER_TURN)  # the rest: the loop's next turn
        outs: list[bytes] = []  # pass-through commands (or a batch) to send together
        up = None
        first = None
        try:
            while i < n:
                if self._over_bound():
                    self._stash(cmds, i)
                    return self._hold()
                up = self._shared
                if (up is not None and not up.closed and self.authed and self.dedicated is None
                        and not self.skip_next and not self.reply_off
                        and (up is self.upstream or self.recv == self.sent)):
                    observe = self.observe
                    batching = self.batching and not self.in_multi
                    commands = self.table.commands
                    prefix = self.ns.prefix
                    quota_ok = self.tdb.over_quota is None
                    first = None  # the batch's first command (when batching)
                    limit = self.max_inflight
                    while i < n:
                        if len(outs) + self.sent - self.recv >= limit:
                            break  # sent below, then _over_bound holds the rest
                        argv = cmds[i]
                        if not argv:
                            i += 1
                            continue
                        cmd = commands.get(argv[0])
                        if cmd is None:
                            break
                        k = cmd.one_key
                        if not k or len(argv) <= k or not (quota_ok or not cmd.denyoom):
                            break
                        alone = observe and (not batching or cmd.full_name in UNBATCHED)
                        if alone and outs:  # the batch so far goes first, in order
                            if not self._admit_run(up, outs, first):
                                self._stash(cmds, i)  # this command has not run yet
                                return False
                            outs, first = [], None
                        i += 1
                        argv[k] = prefix + argv[k]
                        if not alone:
                            if observe and first is None:
                                first = (cmd, argv)
                            outs.append(encode_tuple(tuple(argv)))
                            continue
                        self.upstream = up
                        self.session.operations += 1
                        self.metrics.ok += 1
                        if not self._admit(cmd, argv, encode_tuple(tuple(argv)), None, up, None):
                            self._stash(cmds, i)  # admission went asynchronous
                            return False
                    if outs:
                        if first is None:
                            self._send_run(up, outs)
                        elif not self._admit_run(up, outs, first):
                            self._stash(cmds, i)  # admission went asynchronous
                            return False
                        outs, first = [], None
                    if i >= n:
                        return self._turn_done(cmds, n)
                argv = cmds[i]
                i += 1
                if not argv:
                    continue
                if not self._execute(argv, None, 0, 0):
                    self._stash(cmds, i)
                    return False
                if self.closing:
                    return False
        except (TypeError, AttributeError):  # not an array of bulk strings
            if outs and up is not None:
                if first is None:
                    self._send_run(up, outs)
                else:
                    self._admit_run(up, outs, first)
            self._protocol_error("expected '$', got something else")
            return False
        return self._turn_done(cmds, n)

    def _turn_done(self, cmds: list, i: int) -> bool:
        """``cmds`` ran up to ``i``: True if that is all of them, else the rest is kept for
        the event loop's next turn."""
        if i >= len(cmds):
            return True
        self._stash(cmds, i)
        return self._next_turn() >= 0

    def _next_turn(self) -> int:
        """Fairness: this client ran REQUESTS_PER_TURN requests or parsed BYTES_PER_TURN in
        this turn; its kept input goes on after the other connections' ready events, in
        its tenant database's share of the next turns (returns -1: input stops)."""
        self.suspended = True
        self._stalled = _held
        self._pause_reading()
        tdb = self.tdb
        if tdb is None:  # before AUTH: the pre-auth limits bound it
            self.loop.call_soon(self._unstall)
            return -1
        turns = _TURNS.get(tdb)
        if turns is None:
            turns = _TURNS[tdb] = _TenantTurns(tdb, self.loop)
        turns.add(self)
        return -1

    def _stash(self, cmds: list, i: int) -> None:
        """Keep the requests from ``cmds[i]`` on for when the client's input resumes."""
        if i < len(cmds):
            self._rest_cmds = cmds
            self._rest_i = i

    def _send_run(self, up: Upstream, outs: list[bytes]) -> None:
        k = len(outs)
        self.upstream = up
        self.sent += k
        self.session.operations += k
        self.metrics.ok += k
        if up.paused:
            up.paused_clients.append(self)
            self._pause_reading()
        up.send_run(outs, self)

    def _resume(self) -> None:
        """Continue with the kept and buffered input after a stall or a task."""
        self.suspended = False
        self._stalled = None
        if self.closing:
            return
        self._resume_reading()
        cmds = self._rest_cmds
        if cmds is not None:
            self._rest_cmds = None
            if not self._run_parsed(cmds, self._rest_i):
                return
        data = self._rest
        if data is not None:
            self._rest = None
            self._process(data, self._rest_pos)
        elif self._chunks:  # received while suspended (input stops only between requests)
            self._process(self._take(), 0)

    def _stall(self, retry: Callable[[], bool]) -> bool:
        """Wait until every reply owed is delivered, then call ``retry`` (which finishes
        the command and returns like ``_execute``)."""
        self.suspended = True
        self._stalled = retry
        if self.recv == self.sent:
            self.loop.call_soon(self._unstall)
        return False

    def _unstall(self) -> None:
        retry = self._stalled
        if retry is None or self.closing:
            return
        self._stalled = None
        self.suspended = False
        if retry():
            self._resume()
        # else: stalled again or a task took it

    def _spawn(self, work: Awaitable[bool | None]) -> bool:
        """Run ``work`` (auth, connecting, an async layer, an emulated command) with the
        client's input on hold; input resumes when it finishes."""
        self.suspended = True
        self._task = self.loop.create_task(self._run(work))
        return False

    async def _run(self, work: Awaitable[bool | None]) -> None:
        resumable: bool | None = True
        try:
            resumable = await work
        except Reject as rej:
            self.reply(reject_error(rej))
        except asyncio.CancelledError:
            if self.closed:
                self._cleanup()
            raise
        except Exception:
            log.exception("redis command failed in the gateway")
            self.reply(wire.error("ERR internal gateway error"))
        if self.closed:
            if resumable is not False or self._task is None or self._task.done() \
                    or self._task is asyncio.current_task():
                self._task = None
                self._cleanup()
            return
        if resumable is False:
            return  # the command stalled or started another task: that one resumes input
        self._task = None
        self._resume()

    # == output =================================================================================
    def _write(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.session.bytes_out += len(data)
        out = self._out
        if out is not None:
            out.append(data)
        else:
            self.transport.write(data)

    def collect_out(self) -> None:
        """Hold writes until ``flush_out`` (the upstream is handing over several replies)."""
        if self._out is None:
            self._out = []

    def flush_out(self) -> None:
        out, self._out = self._out, None
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def reply(self, data: bytes) -> None:
        """A reply written by the gateway, in order after the replies still owed."""
        if self.skip_next:
            self.skip_next = False
            return
        if self.reply_off:
            return
        if self.recv == self.sent and not self.held:
            self._write(data)
        else:
            self.held.append((self.sent, data))

    def _release_held(self) -> None:
        held = self.held
        while held and held[0][0] <= self.recv:
            self._write(held.popleft()[1])
        if not held and self._close_when_answered is not None:  # the protocol error is out
            self._close_now()

    def deliver(self, raw: bytes) -> None:
        """One upstream reply for this client (pass-through)."""
        self.recv += 1
        if raw[0] == 45:  # '-'
            self.metrics.error += 1
            self.metrics.ok -= 1
        self._write(raw)
        if self.held:
            self._release_held()
        if (self.dedicated is not None or self._stalled is not None
                or self.clients.draining is not None):
            self._after_reply()

    def deliver_run(self, raw: bytes, count: int, errors: int) -> None:
        """``count`` pass-through replies in a row, ``errors`` of them errors, for a client
        with no dedicated connection and no stall (``Upstream.data_received``)."""
        self.recv += count
        if errors:
            self.metrics.error += errors
            self.metrics.ok -= errors
        if self.transport is not None:
            self.session.bytes_out += len(raw)
            out = self._out
            if out is not None:
                out.append(raw)
            else:
                self.transport.write(raw)
        if self.held:
            self._release_held()
        if self.clients.draining is not None:  # idle now: the drain closes it
            self._after_reply()

    def deliver_pending(self, w: Pending, raw: bytes, *, failed: bool = False) -> None:
        """An upstream reply to transform, silence (CLIENT REPLY) or follow up (``post``)."""
        if w.transform is _silence:
            raw = b""
        elif w.transform is not None and not failed and raw[0] != 45:
            try:
                raw = w.transform(raw)
            except Exception:
                log.exception("reply transformation failed")
                raw = wire.error("ERR the gateway could not read the upstream reply")
        if raw[:1] == b"-":
            self.metrics.error += 1
            self.metrics.ok -= 1
        post = w.post
        self.recv += 1
        if raw:
            self._write(raw)
        if self.held:
            self._release_held()
        if post is not None:
            post(self)
        if (self.dedicated is not None or self._stalled is not None
                or self.clients.draining is not None):
            self._after_reply()

    def deliver_op(self, op: RedisOperation, raw: bytes, *, failed: bool = False) -> None:
        """The upstream reply to an operation the layers look at: like ``deliver_pending``,
        and the operation completes (log phase)."""
        transform = op.transform
        if transform is not None:
            if transform is _silence:
                raw = b""
            elif not failed and raw[0] != 45:
                try:
                    raw = transform(raw)
                except Exception:
                    log.exception("reply transformation failed")
                    raw = wire.error("ERR the gateway could not read the upstream reply")
        error = raw[:1] == b"-"
        if error:
            self.metrics.error += 1
            self.metrics.ok -= 1
        if op.rejection is not None:  # cancelled (timeout layer): already answered
            raw = b""
            error = False
        op.ended = _monotonic()
        if op.count == 1:
            op.bytes_out = len(raw)
            if error:
                op.error = first_word(raw)
        else:  # the batch's last reply: the others went by as pass-through replies
            op.bytes_out = self.session.bytes_out - op.bytes_at + len(raw)
            bad = self.metrics.error - op.errors_at
            if bad:
                op.failed = bad
                op.error = first_word(raw) if error and bad == 1 else "ERR"
        self.chain.complete(op)
        self.recv += 1
        if raw and self.transport is not None:  # _write, inline
            self.session.bytes_out += len(raw)
            out = self._out
            if out is not None:
                out.append(raw)
            else:
                self.transport.write(raw)
        if self.held:
            self._release_held()
        post = op.post
        if post is not None:
            post(self)
        if (self.dedicated is not None or self._stalled is not None
                or self.clients.draining is not None):
            self._after_reply()

    def deliver_push(self, raw: bytes) -> None:
        """A pub/sub message or (un)subscribe confirmation from the dedicated connection."""
        ns = self.ns
        if ns is not None and raw[0] in b"*>":
            try:
                raw = ns.strip_message(raw)
            except Exception:
                log.exception("pub/sub message could not be read")
                return
            self._count_subscriptions(raw)
        self._write(raw)
        if self.dedicated is not None:
            self._after_reply()

    def _count_subscriptions(self, raw: bytes) -> None:
        frame, _ = wire.decode(raw)
        items = frame.value or []
        if len(items) < 3 or items[0].value is None:
            return
        kind = items[0].value.lower()
        if not kind.endswith(b"subscribe"):
            return
        try:
            count = int(items[2].value)
        except (TypeError, ValueError):
            return
        if kind in (b"ssubscribe", b"sunsubscribe"):
            self.ssubs = count
        else:
            self.subs = count
        up = self.dedicated
        if up is not None:
            up.subscriptions = self.subs + self.ssubs
        # With no subscription left, the connection leaves pub/sub mode only once no other
        # (un)subscribe is on its way (see send_subscribe): a SUBSCRIBE right behind an
        # UNSUBSCRIBE still gets its confirmation here.

    def send_subscribe(self, up: Upstream, out: bytes) -> None:
        """An (UN)SUBSCRIBE command on the dedicated connection. It has no reply of its own
        (each channel gets a confirmation, as a push, and an UNSUBSCRIBE of all channels as
        many as there were), so a PING goes right behind it: its reply, swallowed, says every
        confirmation of the command has arrived. Until then the command counts as owed
        (``sent``/``recv``): the connection stays the client's (no stall ends, no release to
        the idle pool) and the pushes keep coming to this client."""
        self.sub_inflight += 1
        self.session.operations += 1
        self.sent += 1
        up.send(out + SUBSCRIBE_BARRIER, self._barrier(up))

    def _barrier(self, up: Upstream) -> Pending:
        ponged = False

        def pong(raw: bytes) -> bytes:  # the PING's reply (an error skips the transform)
            nonlocal ponged
            ponged = True
            return b""

        def done(c: RedisConnection) -> None:
            if not ponged and not up.closed:
                # The command's own error (delivered to the client, like Redis): the PING's
                # reply comes next.
                self.sent += 1
                up.waiters.appendleft(self._barrier(up))
                return
            self.sub_inflight -= 1
            if not self.sub_inflight and not self.subs and not self.ssubs \
                    and self.dedicated is up:
                up.pubsub_client = None  # out of pub/sub mode: arrays are replies again
        return Pending(self, pong, post=done)

    def _after_reply(self) -> None:
        if self._stalled is not None and self.recv == self.sent:
            self.loop.call_soon(self._unstall)
        up = self.dedicated
        if (up is not None and self.recv == self.sent and not self.in_multi
                and not self.watching and not self.subs and not self.ssubs
                and not self.blocked):
            self.dedicated = None
            up.pubsub_client = up.holder = None
            if self.tdb is not None:
                self.tdb.pools.release(up)
        if self.clients.draining is not None and self.is_idle():
            self.clients.idle(self)

    def upstream_lost(self, up: Upstream) -> None:
        """The dedicated connection died. Subscriptions, MULTI and WATCH lived there and
        are gone, so the client is closed (as if it had lost its own server connection);
        after a blocking command the client just goes back to the shared connection."""
        if up is not self.dedicated:
            return
        self.dedicated = None
        stateful = (self.in_multi or self.watching or self.subs or self.ssubs
                    or self.sub_inflight)
        self.subs = self.ssubs = self.sub_inflight = 0
        self.in_multi = self.watching = False
        self.blocked = 0
        if stateful:
            self.reply(wire.error("ERR upstream Redis connection lost; subscriptions and "
                                  "transaction state were dropped"))
            self.close()

    def is_idle(self) -> bool:
        return (self.recv == self.sent and not self.in_multi and not self.watching
                and not self.subs and not self.ssubs and not self.blocked
                and not self.suspended)

    # == closing ================================================================================
    def _protocol_error(self, message: str) -> None:
        """Like Redis: the replies still owed for the requests before the bad one, then the
        error, then the close (closing at once lost them all). Reading stops now; a reply
        that never comes closes the connection after OWED_GRACE anyway."""
        self.reply(protocol_error(message))
        if not self.held or self.transport is None or self.closing:
            self.close()
            return
        self.closing = True
        self._pause_reading()
        self._close_when_answered = self.loop.call_later(OWED_GRACE, self._close_now)

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        self._close_now()

    def _close_now(self) -> None:
        timer, self._close_when_answered = self._close_when_answered, None
        if timer is not None:
            timer.cancel()
        if self._out is not None:
            self.flush_out()
        if self.transport is not None:
            self.transport.close()

    def close_with(self, rej: Reject) -> None:
        """``session.closer``: tell the client why, then close (suspension, drain ...)."""
        if self.closing:
            return
        self._write(reject_error(rej))
        self.close()

    def _drop_dedicated(self) -> None:
        up, self.dedicated = self.dedicated, None
        if up is None or self.tdb is None:
            return
        up.pubsub_client = up.holder = None
        clean = (self.recv == self.sent and not self.in_multi and not self.watching
                 and not self.subs and not self.ssubs and not self.blocked)
        if clean:
            self.tdb.pools.release(up)
        else:
            self.tdb.pools.discard(up)

    def _end_session(self) -> None:
        """The session's end (registry, log phase): once, for an attempted login only."""
        login, self.login = self.login, None
        if login is not None:
            login.end()

    # == dispatch ===============================================================================
    def _execute(self, argv: list[bytes], data: bytes | None, start: int, end: int) -> bool:
        """Run one request. True: done (or queued upstream); False: input must wait."""
        if data is None:
            raw = None
        elif data[start] != 42:  # inline: never forwarded as sent (Redis reads an inline
            raw = None           # line with strchr, so a NUL in it hangs that connection)
        elif start or end != len(data):
            raw = data[start:end]
        else:
            raw = data
        if not self.authed:
            return self._preauth(argv, raw or encode_command(argv))
        cmd = self.table.lookup(argv[0])
        if cmd is None:
            return self._unknown(argv)
        kind = cmd.kind
        if kind == "keys":
            if cmd.denyoom and self.tdb.over_quota is not None:
                return self._refuse(cmd, argv, self.tdb.over_quota)
            first = cmd.first
            if first and first == cmd.last and len(argv) > first:  # one key: most commands
                argv[first] = self.ns.prefix + argv[first]
                return self._send(cmd, argv, encode_command(argv), None)
            positions = cmd.key_positions(argv) if (first or cmd.specs) else None
            out = self.ns.rewrite(argv, positions) if positions else raw or encode_command(argv)
            return self._send(cmd, argv, out, None)
        return self.door.handlers[kind](self, cmd, argv, raw or encode_command(argv))

    def _unknown(self, argv: list[bytes]) -> bool:
        args = " ".join(f"'{a[:128].decode('utf-8', 'replace')}'" for a in argv[1:4])
        name = argv[0][:128].decode("utf-8", "replace")
        self._refused_op("UNKNOWN", argv, Reject(Reason.FORBIDDEN, "unknown command"))
        if self.in_multi:
            self.multi_error = True
        self.reply(wire.error(f"ERR unknown command '{name}', with args beginning with: {args}"))
        return True

    def _refuse(self, cmd: Command, argv: list[bytes], rej: Reject) -> bool:
        self._refused_op(cmd.op_name, argv, rej)
        if self.in_multi:
            self.multi_error = True
        self.reply(reject_error(rej))
        return True

    def refuse_text(self, cmd: Command, reason: str) -> bool:
        shown = cmd.full_name.replace("|", " ").upper()
        rej = Reject(Reason.FORBIDDEN, f"ERR '{shown}' is not allowed through the gateway: "
                                       f"{reason}")
        return self._refuse(cmd, [], rej)

    def _refused_op(self, name: str, argv: list[bytes], rej: Reject) -> None:
        self.metrics.rejected += 1
        if not self.observe:
            return
        op = RedisOperation(self.session, "command", name, None, sum(len(a) for a in argv))
        op.argv = argv
        op.queued = False
        op.rejection = rej
        op.ended = op.started
        self.chain.complete(op)

    # == sending upstream =======================================================================
    def target(self) -> Upstream | None:
        if self.dedicated is not None:
            return self.dedicated
        return self.tdb.pools.shared_now(self.proto, self.shared_index)

    def _send(self, cmd: Command, argv: list[bytes], out: bytes,
              transform: Callable[[bytes], bytes] | None, *, up: Upstream | None = None,
              post: Callable[[RedisConnection], None] | None = None) -> bool:
        explicit = up
        if up is not None and up.closed:
            self.reply(wire.error("ERR upstream Redis connection lost"))
            return True
        if up is None:
            up = self.dedicated
            if up is None:
                up = self._shared
                if up is None or up.closed:
                    up = self.tdb.pools.shared_now(self.proto, self.shared_index)
                    if up is None:
                        return self._spawn(self._connect_then(cmd, argv, out, transform, post))
                    self._shared = up
        if up is not self.upstream and self.recv != self.sent:
            return self._stall(lambda: self._send(cmd, argv, out, transform, up=explicit, post=post))
        if self.in_multi and up is self.dedicated:
            self.multi_transforms.append(transform)
            transform = None
        self.upstream = up
        self.session.operations += 1
        self.metrics.ok += 1
        if self.observe:
            return self._admit(cmd, argv, out, transform, up, post)
        if up.paused:
            up.paused_clients.append(self)
            self._pause_reading()
        self.sent += 1
        if transform is None and post is None and not self.skip_next and not self.reply_off:
            up.send(out, self)
        else:
            w = Pending(self, transform, post=post)
            if self.skip_next or self.reply_off:  # CLIENT REPLY SKIP/OFF when it was sent
                self.skip_next = False
                w.transform = _silence
            up.send(out, w)
        return True

    async def _connect_then(self, cmd: Command, argv: list[bytes], out: bytes,
                            transform: Callable[[bytes], bytes] | None,
                            post: Callable[[RedisConnection], None] | None) -> bool:
        await self.tdb.pools.get_shared(self.proto, self.shared_index)
        self.suspended = False
        return self._send(cmd, argv, out, transform, post=post)

    def _admit(self, cmd: Command, argv: list[bytes], out: bytes,
               transform: Callable[[bytes], bytes] | None, up: Upstream,
               post: Callable[[RedisConnection], None] | None) -> bool:
        """Layer admission, then the command goes upstream with its operation as the reply
        waiter (one object per command)."""
        op = self._operation(cmd, argv, len(out), transform, post, up)
        try:
            pending = self.chain.admit(op)
        except Reject as rej:
            self._admission_refused(op, rej)
            return True
        if pending is not None:
            return self._spawn(self._admit_later(op, pending, out))
        # _queue, inline (every observed command passes here)
        if self.skip_next or self.reply_off:
            self.skip_next = False
            op.transform = _silence
        op.queued = True
        if len(argv) > ARGV_KEPT:
            op.argv = argv[:1]
        if up.paused:
            up.paused_clients.append(self)
            self._pause_reading()
        self.sent += 1
        up.send(out, op)
        return True

    def _admit_run(self, up: Upstream, outs: list[bytes],
                   first: tuple[Command, list[bytes]] | None) -> bool:
        """Admit pipelined plain commands of one read as one batch (``op.count``): one trip
        through the layers and one completion, at the last reply, for all of them. A batch
        of one is an ordinary operation. False: admission went asynchronous."""
        assert first is not None
        k = len(outs)
        self.upstream = up
        self.session.operations += k
        self.metrics.ok += k
        cmd, argv = first
        if k == 1:
            return self._admit(cmd, argv, outs[0], None, up, None)
        # Never cancellable (op.queued stays False): its commands are O(1) ones (UNBATCHED
        # keeps the others out), and a timeout answer would have to stand in for k replies.
        op = self._operation(cmd, argv, sum(map(len, outs)), None, None, up)
        op.count = k
        try:
            pending = self.chain.admit(op)
        except Reject as rej:
            self._admission_refused(op, rej)
            return True
        if pending is not None:
            return self._spawn(self._admit_later(op, pending, outs))
        self._send_batch(op, outs)
        return True

    def _operation(self, cmd: Command, argv: list[bytes], size: int,
                   transform: Callable[[bytes], bytes] | None,
                   post: Callable[[RedisConnection], None] | None,
                   up: Upstream) -> RedisOperation:
        op = RedisOperation(self.session, "command", cmd.op_name, None, size)
        op.argv = argv
        op.command = cmd
        op.client = self
        op.transform = transform
        op.post = post
        op.up = up
        op.queued = False
        return op

    def _send_batch(self, op: RedisOperation, outs: list[bytes]) -> None:
        up = op.up
        if up.paused:
            up.paused_clients.append(self)
            self._pause_reading()
        self.sent += len(outs)
        op.errors_at = self.metrics.error
        op.bytes_at = self.session.bytes_out
        if len(op.argv) > ARGV_KEPT:
            op.argv = op.argv[:1]
        up.send_run(outs, self, op)

    def _admission_refused(self, op: RedisOperation, rej: Reject) -> None:
        """The refusal in place of each reply the operation owes (a batch: op.count)."""
        op.ended = _monotonic()
        self.chain.complete(op)
        k = op.count
        self.metrics.rejected += k
        self.metrics.ok -= k
        if self.in_multi:
            self.multi_error = True
        answer = reject_error(rej)
        for _ in range(k):
            self.reply(answer)

    async def _admit_later(self, op: RedisOperation, pending: Awaitable[None],
                           out: bytes | list[bytes]) -> None:
        """The rest of an admission that went asynchronous; ``out``: the command, or a
        batch's commands."""
        try:
            await pending
        except Reject as rej:
            self._admission_refused(op, rej)
            return
        if op.up.closed:
            op.ended = _monotonic()
            op.error, op.failed = "ERR", op.count
            self.chain.complete(op)
            lost = wire.error("ERR upstream Redis connection lost")
            for _ in range(op.count):
                self.reply(lost)
            return
        if isinstance(out, list):
            self._send_batch(op, out)
        else:
            self._queue(op, out)

    def _queue(self, op: RedisOperation, out: bytes) -> None:
        if self.skip_next or self.reply_off:  # CLIENT REPLY SKIP/OFF when it was sent
            self.skip_next = False
            op.transform = _silence
        op.queued = True  # cancellable from now on (RedisOperation.cancel)
        if len(op.argv) > ARGV_KEPT:
            op.argv = op.argv[:1]
        up = op.up
        if up.paused:
            up.paused_clients.append(self)
            self._pause_reading()
        self.sent += 1
        up.send(out, op)

    def reply_now_or_later(self, data: bytes) -> None:
        """Write a timeout answer at once when the timed-out command is the oldest one owed;
        otherwise it replaces that command's reply when it arrives."""
        if self.sent - self.recv == 1 and not self.held:
            self._write(data)
        else:
            self.held.append((self.recv + 1, data))

    async def admit_local(self, cmd: Command, argv: list[bytes]) -> RedisOperation | None:
        """Layer admission for a command the gateway answers itself (emulated ones)."""
        if not self.observe:
            return None
        op = RedisOperation(self.session, "command", cmd.op_name, None,
                            sum(len(a) for a in argv))
        op.argv = argv
        op.command = cmd
        op.queued = False  # answered by the gateway: nothing to cancel upstream
        try:
            pending = self.chain.admit(op)
            if pending is not None:
                await pending
        except Reject:
            op.ended = time.monotonic()
            self.chain.complete(op)
            raise
        return op

    # == authentication =========================================================================
    def _preauth(self, argv: list[bytes], raw: bytes) -> bool:
        name = argv[0].lower()
        if name == b"auth":
            if len(argv) == 3:
                return self._spawn(self._auth(argv[1], argv[2], None))
            if len(argv) == 2:
                self.reply(wire.error("WRONGPASS the gateway needs a user name: "
                                      "AUTH <tenant> <password> (or <tenant>.<database>)"))
                return True
            self.reply(wire.error("ERR wrong number of arguments for 'auth' command"))
            return True
        if name == b"hello":
            return self._hello(argv)
        if name == b"quit":
            self._write(wire.OK)
            self.close()
            return True
        if name == b"reset":
            self._write(b"+RESET\r\n")
            return True
        self._write(NOAUTH)
        return True

    async def _auth(self, user: bytes, password: bytes, hello: int | None) -> None:
        try:
            user_s = user.decode()
            password_s = password.decode()
        except UnicodeDecodeError:
            self.reply(WRONGPASS)
            return
        if self.authed:
            await self._reauth(user_s, password_s, hello)
            return
        ok = await authenticate(self, user_s, password_s, hello)
        if ok and hello is not None:
            self.proto = hello
            self._shared = None
            self.reply(self._hello_reply())
        elif ok:
            self.reply(wire.OK)

    async def _reauth(self, user: str, password: str, hello: int | None) -> None:
        s = self.session
        slug, _, dbname = user.partition(".")
        if s.tenant is None or slug != s.tenant.slug or (dbname and dbname != s.database):
            self.reply(NO_SWITCH)  # decided on the name: no lookup to time, none to fail
            return
        try:
            entry = await self.ctx.directory.lookup(slug)
        except Exception:  # the control plane is out (and the tenant not cached)
            self.reply(reject_error(Reject(Reason.UNAVAILABLE, "the control plane is "
                                           "unreachable; the connection stays as it was")))
            return
        if entry is None or entry.tenant.slug != s.tenant.slug \
                or not await self.ctx.directory.check_password(entry, password):
            self.reply(WRONGPASS)
            return
        if hello is not None:
            self.proto = hello
            self._shared = None
            self.reply(self._hello_reply())
        else:
            self.reply(wire.OK)

    def _hello(self, argv: list[bytes]) -> bool:
        proto = self.proto
        auth: tuple[bytes, bytes] | None = None
        name: bytes | None = None
        if len(argv) > 1:
            # Redis's integer syntax, not Python's: int() reads "0_3", " 3" and "+3" as 3.
            if PROTOVER.fullmatch(argv[1]) is None:
                self.reply(wire.error("ERR Protocol version is not an integer or out of range"))
                return True
            proto = int(argv[1])
            if proto not in (2, 3):
                self.reply(wire.error("NOPROTO unsupported protocol version"))
                return True
            i = 2
            while i < len(argv):
                opt = argv[i].lower()
                if opt == b"auth" and i + 2 < len(argv):
                    auth = (argv[i + 1], argv[i + 2])
                    i += 3
                elif opt == b"setname" and i + 1 < len(argv):
                    name = argv[i + 1]
                    i += 2
                else:
                    self.reply(wire.error(f"ERR Syntax error in HELLO option "
                                          f"'{argv[i].decode('utf-8', 'replace')}'"))
                    return True
        if proto != self.proto and (self.dedicated is not None or self.in_multi):
            self.reply(wire.error("ERR cannot switch the protocol during a transaction, WATCH "
                                  "or a subscription through the gateway"))
            return True
        if proto != self.proto and self.recv != self.sent:
            return self._stall(lambda: self._hello(argv))
        if auth is None and not self.authed:
            self.reply(wire.error("NOAUTH HELLO must be called with the client already "
                                  "authenticated, otherwise the HELLO <proto> AUTH <user> <pass> "
                                  "option can be used to authenticate the client and select "
                                  "the RESP protocol version at the same time"))
            return True
        if name is not None:
            if b" " in name or b"\n" in name:
                self.reply(wire.error("ERR Client names cannot contain spaces, newlines or "
                                      "special characters."))
                return True
            self.name = name or None
        if auth is not None:
            return self._spawn(self._auth(auth[0], auth[1], proto))
        self.proto = proto
        self._shared = None
        self.reply(self._hello_reply())
        return True

    def _hello_reply(self) -> bytes:
        p = self.proto
        version = self.backend.version if self.backend is not None else self.door.version
        pairs = [
            (wire.bulk(b"server"), wire.bulk(b"redis")),
            (wire.bulk(b"version"), wire.bulk(version.encode())),
            (wire.bulk(b"proto"), wire.integer(p)),
            (wire.bulk(b"id"), wire.integer(self.session.id)),
            (wire.bulk(b"mode"), wire.bulk(b"standalone")),
            (wire.bulk(b"role"), wire.bulk(b"master")),
            (wire.bulk(b"modules"), wire.array([])),
        ]
        return wire.mapping(pairs, p)

    def authenticated(self, backend: RedisBackend, tdb: TenantDb, index: int) -> None:
        """Called by the front door once the session is admitted."""
        self.backend = backend
        self.tdb = tdb
        self.ns = tdb.ns
        self.table = backend.table
        self.max_bulk = backend.config.max_bulk_size
        self.max_args = wire.MAX_ARGS
        self.shared_index = index
        self.authed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def deauthenticate(self) -> None:
        """RESET: back to an unauthenticated connection with a fresh session."""
        self._drop_dedicated()
        if self.tdb is not None:
            self.tdb.pools.detach(self.shared_index)
        self._end_session()
        self.session = Session("redis", self.session.client_addr)
        self.authed = False
        self._timer = self.loop.call_later(self.door.handshake_timeout, self._handshake_expired)
        self.backend = self.tdb = self.ns = self.table = _UNSET
        self.max_bulk = PREAUTH_MAX_BULK
        self.max_args = PREAUTH_MAX_ARGS
        self.upstream = None
        self.in_multi = self.watching = self.multi_error = False
        self.subs = self.ssubs = self.blocked = self.sub_inflight = 0
        self.proto = 2
        self._shared = None
        self.name = None
        self.reply_off = self.skip_next = self.no_evict = False
        self.lib_name = self.lib_ver = b""

    # == dedicated connections ==================================================================
    def with_dedicated(self, argv: list[bytes], raw: bytes,
                       then: Callable[[Upstream], bool]) -> bool:
        """Run ``then(dedicated)`` once the client has its dedicated connection and owes no
        reply from another one."""
        up = self.dedicated
        if up is not None:
            return then(up)
        if self.recv != self.sent:
            return self._stall(lambda: self.with_dedicated(argv, raw, then))
        up = self.tdb.pools.dedicated_now(self.proto)
        if up is not None:
            self.dedicated = up
            up.holder = self
            return then(up)

        async def get() -> bool:
            up = await self.tdb.pools.get_dedicated(self.proto)
            if self.closing:
                self.tdb.pools.release(up)
                return True
            self.dedicated = up
            up.holder = self
            self.suspended = False
            return then(up)
        return self._spawn(get())


def _held() -> bool:
    """The retry of a connection held by ``_hold``: nothing to redo, input goes on."""
    return True


class _TenantTurns:
    """The connections of one tenant database whose input waits for another turn: at most
    SLICES_PER_TENANT of them go on per event-loop turn, in order, however many connections
    the tenant opens (a tenant with 100 busy connections gets 4 slices a turn, not 100)."""

    __slots__ = ("key", "loop", "scheduled", "waiting")

    def __init__(self, key: Any, loop: asyncio.AbstractEventLoop):
        self.key = key
        self.loop = loop
        self.waiting: deque[RedisConnection] = deque()
        self.scheduled = False

    def add(self, conn: RedisConnection) -> None:
        self.waiting.append(conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        waiting = self.waiting
        for _ in range(min(SLICES_PER_TENANT, len(waiting))):
            conn = waiting.popleft()
            if conn._stalled is _held:  # (not resumed meanwhile, nor stalled otherwise)
                conn._unstall()
        if waiting:
            if not self.scheduled:
                self.scheduled = True
                self.loop.call_soon(self.run)
        elif not self.scheduled:
            _TURNS.pop(self.key, None)


#: Tenant database (its TenantDb) -> its connections waiting for a turn (see _next_turn).
_TURNS: dict[Any, _TenantTurns] = {}


def _silence(raw: bytes) -> bytes:
    return b""

