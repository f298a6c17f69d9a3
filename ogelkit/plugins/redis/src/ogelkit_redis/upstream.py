"""Upstream Redis connections: pipelined, with replies routed back by FIFO order.

A *shared* connection carries the commands of many clients of one tenant database (and one
protocol version) at once: each command appends a *waiter* to a FIFO, each reply pops one.
Writes are coalesced per event-loop iteration (one ``write`` for everything the clients sent
meanwhile), which is what lets a proxy match a direct connection: the server reads and
answers batches instead of single commands.

A *dedicated* connection serves one client while it is in a stateful mode (MULTI/WATCH,
pub/sub, a blocking command) and goes back to an idle list afterwards.

Waiters are either a client object (plain pass-through: ``client.deliver(raw)``), a
``RedisOperation`` (a command the layers look at: ``client.deliver_op``) or a ``Pending``
(reply transformation, internal handshake: ``client.deliver_pending``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any, cast

from ogelkit import Operation, Reject
from ogelkit_redis import wire
from ogelkit_redis.errors import reject_error

if TYPE_CHECKING:
    from ogelkit_redis.commands import Command
    from ogelkit_redis.connection import RedisConnection

log = logging.getLogger("ogelkit.redis.upstream")

_PUBSUB_EVENTS = frozenset((b"message", b"pmessage", b"smessage", b"subscribe",
                            b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe",
                            b"sunsubscribe"))


YIELD_AFTER = 64 * 1024  # a read this big: other connections' turn before the next one
#: Reply bytes scanned per upstream connection per event-loop turn (a read is up to 256 kB:
#: 18,000 elements of a 1M-element LRANGE, ~15 ms of scanning). The rest of a read waits,
#: with reading paused, for the loop's next turn; replies stay in order. The bytes of one
#: bulk value are taken whole (waiting for them costs no scanning).
BYTES_PER_TURN = 32 * 1024


class UpstreamError(Exception):
    """The upstream server could not be reached or refused our credentials."""


class Pending:
    """A waiter with more to do than pass the reply through."""

    __slots__ = ("client", "done", "post", "transform")

    def __init__(self, client: RedisConnection | None, transform: Callable[[bytes], bytes] | None = None,
                 done: Callable[[bytes], None] | None = None,
                 post: Callable[[Any], None] | None = None):
        self.client = client
        self.transform = transform
        self.done = done  # internal waiters (handshake): called with the raw reply
        self.post = post  # called with the client after the reply is delivered


class RedisOperation(Operation):
    """A command some layer looks at. It is its own reply waiter (what ``Pending`` carries,
    for one object per command) and cancels itself: ``cancel`` is overridden instead of
    setting ``canceller``, which would be a reference cycle per command (the cyclic garbage
    collector, not reference counting, would then free every operation)."""

    __slots__ = ("argv", "bytes_at", "client", "command", "errors_at", "post", "queued",
                 "transform", "up")
    done = None  # never an internal waiter
    argv: list[bytes]
    bytes_at: int  # of a batch: the client's bytes_out and error count when it was sent
    errors_at: int
    client: RedisConnection
    command: Command
    post: Callable[[Any], None] | None
    queued: bool
    transform: Callable[[bytes], bytes] | None
    up: Upstream

    def cancel(self, reason: Reject) -> bool:
        """Answer the client with ``reason`` now (the reply, when it comes, is dropped) and
        stop the command if it runs on a connection of its own (a blocking command).
        False before the command went upstream or after its reply."""
        if not self.queued or self.ended is not None:
            return False
        self.rejection = reason
        self.client.reply_now_or_later(reject_error(reason))
        if self.up.dedicated:
            self.up.abort()
        return True


class Upstream(asyncio.Protocol):
    """One connection to the upstream server."""

    def __init__(self, owner: Any, proto: int, *, dedicated: bool = False):
        self.owner = owner  # the pool (TenantPools) that created it
        self.proto = proto
        self.dedicated = dedicated
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[Any] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # An incomplete reply at the end of a read: its bytes so far, where its scan
        # (wire.reply_scan) stopped, how many elements are still to scan and how many bytes
        # it needs before scanning on. Each byte is scanned once, copied twice.
        self._acc: bytearray | None = None
        self._scan = 0
        self._left = 0
        self._need = 0
        # The rest of a read bigger than BYTES_PER_TURN, from _backlog_pos, for the next turns.
        self._backlog: bytes | None = None
        self._backlog_pos = 0
        self.closed = False
        self.paused = False
        self.paused_clients: list[RedisConnection] = []
        self.pubsub_client: RedisConnection | None = None  # receives push/pubsub messages
        self.holder: RedisConnection | None = None  # the client of a dedicated connection
        self.subscriptions = 0  # as the last (un)subscribe confirmation counted them
        self.tainted = False  # a push came with no subscriber to take it: state unknown
        self.attached: list[int] = [0]  # the pool's clients per shared index
        self.index = -1  # shared connection index; -1: dedicated (one client at a time)
        self.ready: asyncio.Future[None] | None = None
        self.loop = asyncio.get_running_loop()

    # -- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream (TCP) transport: asyncio has already set TCP_NODELAY on it.
        self.transport = cast("asyncio.Transport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        waiters, self.waiters = self.waiters, deque()
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(UpstreamError(f"connection closed: {exc}"))
        error = wire.error("ERR upstream Redis connection lost; the command may or may not "
                           "have run")
        for w in waiters:
            try:
                tw = type(w)
                if tw is RedisOperation:
                    w.client.deliver_op(w, error, failed=True)
                elif tw is Pending:
                    if w.done is not None:
                        continue
                    if w.client is not None:
                        w.client.deliver_pending(w, error, failed=True)
                else:
                    w.deliver(error)
            except Exception:
                log.exception("failing a waiter")
        self.pubsub_client = None
        if self.holder is not None:  # the client this dedicated connection served
            client, self.holder = self.holder, None
            client.upstream_lost(self)
        self.owner.lost(self)
        for c in self.paused_clients:
            c.upstream_resumed()
        self.paused_clients.clear()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        clients, self.paused_clients = self.paused_clients, []
        for c in clients:
            c.upstream_resumed()

    def data_received(self, data: bytes) -> None:
        if self._backlog is not None:  # (reading is paused meanwhile: a read already done)
            self._backlog = self._backlog[self._backlog_pos:] + data
            self._backlog_pos = 0
            return
        if len(data) > 2 * BYTES_PER_TURN:
            self._backlog = data
            self._backlog_pos = 0
            self._next_slice()
            return
        self._receive(data)

    def _next_slice(self) -> None:
        """One turn's share of the backlog (BYTES_PER_TURN, or the rest of an incomplete
        bulk value); the next share after the other connections' events."""
        data = self._backlog
        if data is None or self.closed:
            self._backlog = None
            return
        pos = self._backlog_pos
        take = BYTES_PER_TURN
        if self._acc is not None and self._need - len(self._acc) > take:
            take = self._need - len(self._acc)  # no scan until all of it is there
        end = pos + take
        if end + BYTES_PER_TURN >= len(data):  # the rest is small: all of it now
            self._backlog = None
            self._receive(data[pos:] if pos else data)
        else:
            self._backlog_pos = end
            self._receive(data[pos:end])
        if self._backlog is not None and not self.closed and self.transport is not None:
            self.transport.pause_reading()
            self.loop.call_soon(self._next_slice)
        else:
            self._yield()  # reading resumes on the next turn

    def _receive(self, data: bytes) -> None:
        known = 0  # the end of the first reply, when an incomplete one just completed
        acc = self._acc
        if acc is not None:
            acc += data
            if len(acc) < self._need:
                return
            end, left, need = wire.reply_scan(acc, self._scan, self._left)
            if left:
                self._scan, self._left, self._need = end, left, need
                if len(data) >= YIELD_AFTER:
                    self._yield()
                return
            self._acc = None
            known = end
            data = bytes(acc)
        waiters = self.waiters
        popleft = waiters.popleft
        pos = 0
        n = len(data)
        # Consecutive pass-through replies for one client leave as one slice of ``data`` in
        # one write (a *run*: ``data[start:pos]``, ``count`` replies): no per-reply slice or
        # call. A client that also gets replies through a ``Pending`` collects its output
        # (``collect_out``) until another client's turn (``flush_out``).
        cur = None  # the client being served
        start = -1  # where cur's open run starts; -1: no open run
        count = errors = 0
        collecting = False
        pubsub = self.pubsub_client
        find = data.find
        scanned: tuple[int, int, int] | None = None  # of an incomplete reply at the end
        while pos < n:
            t = data[pos]
            if t == 36:  # '$' bulk string, the commonest reply: inline the scan
                eol = find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(data[pos + 1:eol])
                end = eol + 4 + size if size >= 0 else eol + 2
                if end > n:
                    break
            elif t == 43 or t == 58 or t == 45:  # '+' ':' '-'
                eol = find(b"\r\n", pos)
                if eol < 0:
                    break
                end = eol + 2
            elif known and not pos:
                end = known
            else:
                end, left, need = wire.reply_scan(data, pos, 1)
                if left:  # incomplete: kept below with where its scan stopped (scanned once)
                    scanned = (end, left, need)
                    break
            if pubsub is not None and (t == 62 or (t == 42 and self._is_event(data[pos:end]))):
                if cur is not None:
                    self._finish(cur, data, start, pos, count, errors, collecting)
                    cur, start, collecting = None, -1, False
                pubsub.deliver_push(data[pos:end])
                pos = end
                continue
            if not waiters:
                if cur is not None:
                    self._finish(cur, data, start, pos, count, errors, collecting)
                    cur, start, collecting = None, -1, False
                if t == 62:  # stray RESP3 push (no subscriber): ignored, never pooled again
                    self.tainted = True
                    pos = end
                    continue
                if pubsub is not None:  # e.g. an error about a SUBSCRIBE
                    pubsub.deliver_push(data[pos:end])
                    pos = end
                    continue
                log.error("reply without a waiter from upstream; closing the connection")
                self.close()
                return
            w = popleft()
            if w is cur and start >= 0:  # one more reply of the open run
                count += 1
                if t == 45:
                    errors += 1
                pos = end
                continue
            tw = type(w)
            if tw is not RedisOperation and tw is not Pending:  # a client: pass-through
                if w is not cur:
                    if cur is not None:
                        if start >= 0:
                            cur.deliver_run(data[start:pos], count, errors)
                        if collecting:
                            cur.flush_out()
                            collecting = False
                    cur = w
                if w.held or w.dedicated is not None or w._stalled is not None:
                    # Gateway replies to slot in, or state to update after each reply.
                    if not collecting:
                        w.collect_out()
                        collecting = True
                    w.deliver(data[pos:end])
                    start = -1
                else:
                    start = pos
                    count = 1
                    errors = 1 if t == 45 else 0
                pos = end
                continue
            raw = data[pos:end]
            if start >= 0:  # the open run ends here
                if w.client is cur:
                    if not collecting:
                        cur.collect_out()
                        collecting = True
                    cur.deliver_run(data[start:pos], count, errors)
                elif cur is not None:
                    self._finish(cur, data, start, pos, count, errors, collecting)
                    cur, collecting = None, False
                start = -1
            pos = end
            if w.done is not None:
                w.done(raw)
                continue
            client = w.client
            if client is None:
                continue
            if client is not cur:
                if cur is not None and collecting:
                    cur.flush_out()
                cur = client
                client.collect_out()
                collecting = True
            if tw is RedisOperation:
                client.deliver_op(w, raw)
            else:
                client.deliver_pending(w, raw)
        if cur is not None:
            if start >= 0:
                cur.deliver_run(data[start:pos], count, errors)
            if collecting:
                cur.flush_out()
        if pos < n:
            at, left, need = scanned or wire.reply_scan(data, pos, 1)
            self._incomplete(data, pos, at, left, need)
        if n >= YIELD_AFTER:
            self._yield()

    def _incomplete(self, data: bytes, pos: int, at: int, left: int, need: int) -> None:
        """Keep the incomplete reply at ``pos`` (its scan stopped at ``at`` with ``left``
        elements to go, once there are ``need`` bytes) for the next reads."""
        self._acc = bytearray(memoryview(data)[pos:])
        self._scan = at - pos
        self._left = left
        self._need = need - pos

    def _yield(self) -> None:
        """After a big read, let other connections' events run before the next one (uvloop
        reads a busy socket up to 32 times in a row)."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self.loop.call_soon(self._end_yield)

    def _end_yield(self) -> None:
        if self.transport is not None and not self.closed and self._backlog is None:
            self.transport.resume_reading()

    @staticmethod
    def _finish(cur: RedisConnection, data: bytes, start: int, pos: int, count: int, errors: int,
                collecting: bool) -> None:
        """Hand ``cur`` its open run (if any) and flush what it collected."""
        if start >= 0:
            cur.deliver_run(data[start:pos], count, errors)
        if collecting:
            cur.flush_out()

    @staticmethod
    def _is_event(raw: bytes) -> bool:
        """RESP2 pub/sub message: an array whose first element names the event."""
        eol = raw.find(b"\r\n")
        if raw[eol + 2:eol + 3] != b"$":
            return False
        eol2 = raw.find(b"\r\n", eol + 2)
        size = int(raw[eol + 3:eol2])
        return raw[eol2 + 2:eol2 + 2 + size].lower() in _PUBSUB_EVENTS

    # -- sending -----------------------------------------------------------------------------
    def send(self, data: bytes, waiter: Any) -> None:
        """Queue ``data`` (one command) whose reply goes to ``waiter``; written at the end of
        this loop iteration together with everything else queued meanwhile.

        An idle connection with a single client writes at once: nothing to batch with, and
        waiting a loop iteration would only add latency."""
        if (not self.waiters and not self._out and self.transport is not None
                and (self.index < 0 or self.attached[self.index] <= 1)):
            self.waiters.append(waiter)
            self.transport.write(data)
            return
        self.waiters.append(waiter)
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_run(self, outs: list[bytes], client: RedisConnection,
                 last: RedisOperation | None = None) -> None:
        """``send`` for several pass-through commands of one client in a row (one parsed
        chunk): one write or queue entry for all of them, one waiter per command. ``last``:
        a batch's operation, the waiter of its last reply (the others pass through)."""
        k = len(outs)
        data = outs[0] if k == 1 else b"".join(outs)
        waiters = self.waiters
        direct = (not waiters and not self._out and self.transport is not None
                  and (self.index < 0 or self.attached[self.index] <= 1))
        if last is not None:
            waiters.extend(repeat(client, k - 1))
            waiters.append(last)
        elif k == 1:
            waiters.append(client)
        else:
            waiters.extend(repeat(client, k))
        if direct:
            self.transport.write(data)  # type: ignore[union-attr]
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        if self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    @property
    def idle(self) -> bool:
        return not self.waiters and not self._out

    @property
    def neutral(self) -> bool:
        """Provably as a fresh connection: no reply owed, no subscription (the client sends a
        PING behind each (un)subscribe, so no reply owed also means no confirmation still to
        come), no stray push seen. Only such a dedicated connection goes back to the idle
        pool; MULTI/WATCH/blocking state is the client's to clear (it releases the
        connection only once EXEC/DISCARD/UNWATCH or the blocking reply is answered)."""
        return (not self.waiters and not self._out and not self.subscriptions
                and not self.tainted and not self.closed)

    # -- handshake -----------------------------------------------------------------------------
    async def handshake(self, user: str | None, password: str | None, db: int) -> None:
        """HELLO <proto> [AUTH user pass] (+ SELECT db), pipelined; raises on any error."""
        cmds = []
        hello = [b"HELLO", str(self.proto).encode()]
        if password is not None:
            hello += [b"AUTH", (user or "default").encode(), password.encode()]
        cmds.append(hello)
        if db:
            cmds.append([b"SELECT", str(db).encode()])
        futures = []
        for argv in cmds:
            fut: asyncio.Future[bytes] = self.loop.create_future()
            futures.append(fut)
            self.send(wire.encode_command(argv), Pending(None, done=_resolver(fut)))
        for fut in futures:
            raw = await fut
            if raw.startswith(b"-"):
                raise UpstreamError(raw[1:].strip().decode("utf-8", "replace"))

    async def call(self, *argv: bytes) -> bytes:
        """One command on this connection (off the hot path), raw reply."""
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self.send(wire.encode_command(list(argv)), Pending(None, done=_resolver(fut)))
        return await fut


def _resolver(fut: asyncio.Future[bytes]) -> Callable[[bytes], None]:
    def done(raw: bytes) -> None:
        if not fut.done():
            fut.set_result(raw)
    return done


async def open_upstream(owner: Any, host: str, port: int, proto: int, *, user: str | None,
                        password: str | None, db: int, connect_timeout: float,
                        dedicated: bool = False) -> Upstream:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            _, up = await loop.create_connection(
                lambda: Upstream(owner, proto, dedicated=dedicated), host, port)
            await up.handshake(user, password, db)
    except TimeoutError:
        raise UpstreamError(f"no answer from Redis at {host}:{port} within "
                            f"{connect_timeout:g}s") from None
    except OSError as exc:
        raise UpstreamError(f"cannot connect to Redis at {host}:{port}: "
                            f"{exc.strerror or exc}") from None
    except UpstreamError:
        try:
            up.close()
        except NameError:
            pass
        raise
    return up
