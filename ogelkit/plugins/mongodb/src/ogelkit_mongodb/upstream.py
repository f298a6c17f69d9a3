"""Upstream connections: our own OP_MSG client on asyncio ``Protocol`` callbacks, pooled.

Commands are multiplexed: a client command checks out an idle connection, its reply releases
it, and the reply is handed to a callback. No task is created per command; a task runs only to
open a new connection (handshake and SCRAM-SHA-256 when the URL carries credentials).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import logging
import os
import platform
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from pymongo.uri_parser import parse_uri

from ogelkit_mongodb import wire
from ogelkit_mongodb.wire import HEADER, HEADER_SIZE

log = logging.getLogger("ogelkit.mongodb.upstream")

#: Replies decoded for the gateway's own use (never re-encoded towards clients).
#: Invalid UTF-8 an upstream echoes back (a client's own bytes in an error message) becomes
#: U+FFFD instead of failing the decode.
DECODE_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(
    datetime_conversion=DatetimeConversion.DATETIME_AUTO, unicode_decode_error_handler="replace")

#: A request whose last piece (a document sequence, a body) is bigger is written as its
#: pieces, not joined first.
BIG_PART = 1 << 20

#: ``callback(reply_bytes, None)`` or ``callback(None, error_text)``.
Callback = Callable[[bytes | None, str | None], None]

class UpstreamError(Exception):
    """The upstream could not be reached or answered with an error during a handshake."""


class Target:
    """Where and how to connect, from the backend's ``url``."""

    def __init__(self, url: str):
        info = parse_uri(url, validate=True, warn=False)
        nodes = info["nodelist"]
        if len(nodes) != 1:
            raise ValueError("the mongodb backend url must name exactly one server "
                             f"(found {len(nodes)}); put a mongos in front of a cluster")
        self.host, self.port = nodes[0]
        opts = {str(k).lower(): v for k, v in info["options"].items()}
        self.username: str | None = info.get("username")
        self.password: str | None = info.get("password")
        self.auth_source = opts.get("authsource") or info.get("database") or "admin"
        mech = opts.get("authmechanism")
        if self.username and mech not in (None, "SCRAM-SHA-256"):
            raise ValueError(f"authMechanism {mech} is not supported upstream (SCRAM-SHA-256 only)")
        self.ssl: ssl.SSLContext | None = None
        if opts.get("tls") or opts.get("ssl"):
            self.ssl = ssl.create_default_context(cafile=opts.get("tlscafile"))
            if opts.get("tlsinsecure") or opts.get("tlsallowinvalidcertificates"):
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE

    def __repr__(self) -> str:
        return f"{self.host}:{self.port}"


class UpstreamConnection(asyncio.Protocol):
    """One upstream server connection; at most one command in flight."""

    __slots__ = ("_buf", "alive", "callback", "connection_id", "pool", "ready", "transport")

    def __init__(self, pool: UpstreamPool):
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.callback: Callback | None = None
        self._buf = bytearray()
        self.alive = False
        self.ready = False  # handshake done: replies release the connection to the pool
        self.connection_id: int | None = None  # the server's id for us (currentOp/killOp)

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.alive = True

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if not buf and len(data) >= HEADER_SIZE:
            n = HEADER.unpack_from(data)[0]
            if n == len(data):  # the common case: exactly one reply in one read
                self._reply(data)
                return
        buf += data
        while len(buf) >= HEADER_SIZE:
            n = HEADER.unpack_from(buf)[0]
            if n < HEADER_SIZE or n > self.pool.max_reply:
                self._fail(f"upstream sent a message of {n} bytes")
                return
            if len(buf) < n:
                return
            msg = bytes(buf[:n])
            del buf[:n]
            self._reply(msg)

    def _reply(self, msg: bytes) -> None:
        cb = self.callback
        self.callback = None
        if cb is None:
            self._fail("upstream sent a reply nobody asked for")
            return
        if self.ready:
            self.pool.release(self)
        cb(msg, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        cb = self.callback
        self.callback = None
        if self.ready:
            self.pool.discard(self)
        if cb is not None:
            cb(None, f"the upstream server closed the connection{f' ({exc})' if exc else ''}")

    def _fail(self, why: str) -> None:
        log.warning("dropping upstream connection: %s", why, extra={"backend": self.pool.name})
        cb = self.callback
        self.callback = None
        if self.transport is not None:
            self.transport.abort()
        if cb is not None:
            cb(None, why)

    # -- sending ----------------------------------------------------------------------------
    def send(self, parts: list[Any], callback: Callback) -> None:
        self.callback = callback
        if len(parts) > 1 and len(parts[-1]) > BIG_PART:
            # An 8 MB insert's documents: joining them was one more 8 MB copy on the event
            # loop; the pieces are few and big (a syscall each costs nothing next to them).
            self.transport.writelines(parts)  # type: ignore[union-attr]
            return
        # One write: writelines() of small pieces costs a send() (and a packet) per piece.
        self.transport.write(b"".join(parts))  # type: ignore[union-attr]

    def abandon(self) -> None:
        """The client no longer waits for the reply in flight (cancelled): drop it on arrival."""
        if self.callback is not None:
            self.callback = _drop

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _drop(_reply: bytes | None, _err: str | None) -> None:
    pass


class Waiter:
    __slots__ = ("callback", "parts")

    def __init__(self, parts: list[Any], callback: Callback | None):
        self.parts = parts
        self.callback = callback


class UpstreamPool:
    """Up to ``size`` connections to one upstream server, shared by every tenant."""

    def __init__(self, name: str, target: Target, *, size: int, connect_timeout: float,
                 max_reply: int, on_hello: Callable[[dict[str, Any]], None] | None = None):
        self.name = name
        self.target = target
        self.size = max(1, size)
        self.connect_timeout = connect_timeout
        self.max_reply = max_reply
        self.on_hello = on_hello
        self.build_info: dict[str, Any] | None = None  # the upstream's buildInfo, learned once
        self.idle: list[UpstreamConnection] = []
        self.live: set[UpstreamConnection] = set()
        self.connecting = 0
        self.waiters: deque[Waiter] = deque()
        self.closed = False
        self.last_error: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    # -- the hot path -----------------------------------------------------------------------
    def submit(self, parts: list[Any], callback: Callback) -> UpstreamConnection | Waiter:
        """Send a request (header included in ``parts``) on an idle connection, or queue it."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.alive:
                conn.send(parts, callback)
                return conn
        waiter = Waiter(parts, callback)
        self.waiters.append(waiter)
        self._grow()
        return waiter

    def release(self, conn: UpstreamConnection) -> None:
        waiters = self.waiters
        while waiters:
            w = waiters.popleft()
            if w.callback is not None:
                conn.send(w.parts, w.callback)
                return
        if conn.alive and not self.closed:
            self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        self.live.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        if self.waiters and not self.closed:
            self._grow()

    def next_request_id(self) -> int:
        return next(self._ids)

    # -- growing ----------------------------------------------------------------------------
    def _grow(self) -> None:
        if self.closed:
            self._fail_waiters("the backend is closed")
            return
        pending = sum(1 for w in self.waiters if w.callback is not None)
        if pending > self.connecting and len(self.live) + self.connecting < self.size:
            self.connecting += 1
            task = asyncio.get_running_loop().create_task(self._open_one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open_one(self) -> None:
        try:
            conn = await asyncio.wait_for(self.connect(), self.connect_timeout)
        except BaseException as exc:
            self.connecting -= 1
            self.last_error = f"cannot connect to the upstream {self.target}: {_describe(exc)}"
            log.warning(self.last_error, extra={"backend": self.name})
            if not self.live and not self.connecting:
                self._fail_waiters(self.last_error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.connecting -= 1
        self.last_error = None
        if self.closed:
            conn.close()
            return
        conn.ready = True
        self.live.add(conn)
        self.release(conn)

    def _fail_waiters(self, why: str) -> None:
        waiters, self.waiters = self.waiters, deque()
        for w in waiters:
            cb, w.callback = w.callback, None
            if cb is not None:
                cb(None, why)

    async def connect(self) -> UpstreamConnection:
        """Open, handshake and authenticate one connection (not added to the pool)."""
        loop = asyncio.get_running_loop()
        t = self.target
        _, conn = await loop.create_connection(lambda: UpstreamConnection(self), t.host, t.port,
                                               ssl=t.ssl)
        try:
            hello = await self.request(conn, "admin", {
                "hello": 1,
                "client": {"driver": {"name": "ogelkit-mongodb", "version": "0.1.0"},
                           "os": {"type": platform.system() or "unknown"},
                           "application": {"name": "ogelkit"}}})
            if not hello.get("ok"):
                raise UpstreamError(f"hello failed: {hello.get('errmsg')}")
            conn.connection_id = hello.get("connectionId")
            if t.username:
                await self._authenticate(conn)
            if self.build_info is None:  # before any client command: it decides rewrites
                info = await self.request(conn, "admin", {"buildInfo": 1})
                self.build_info = info if info.get("ok") else {}
            if self.on_hello is not None:
                self.on_hello(hello)
        except BaseException:
            conn.close()
            raise
        return conn

    async def request(self, conn: UpstreamConnection, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        """One command on a connection the caller holds (handshake, auth)."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def done(reply: bytes | None, err: str | None) -> None:
            if fut.done():
                return
            if reply is None:
                fut.set_exception(UpstreamError(err or "no reply"))
            else:
                fut.set_result(reply)

        conn.callback = done
        conn.transport.write(wire.op_msg(self.next_request_id(), 0,  # type: ignore[union-attr]
                                         bson.encode({**doc, "$db": db})))
        reply = await fut
        s, e = wire.reply_body(reply)
        return bson.decode(reply[s:e], DECODE_OPTIONS)

    async def command(self, db: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Run one command on a pooled connection and return the decoded reply document."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def done(reply: bytes | None, err: str | None) -> None:
            if not fut.done():
                if reply is None:
                    fut.set_exception(UpstreamError(err or "no reply"))
                else:
                    fut.set_result(reply)

        body = bson.encode({**doc, "$db": db})
        self.submit([wire.op_msg(self.next_request_id(), 0, body)], done)
        reply = await fut
        s, e = wire.reply_body(reply)
        return bson.decode(reply[s:e], DECODE_OPTIONS)

    async def _authenticate(self, conn: UpstreamConnection) -> None:
        t = self.target
        user = (t.username or "").replace("=", "=3D").replace(",", "=2C")
        nonce = base64.b64encode(os.urandom(24)).decode()
        first_bare = f"n={user},r={nonce}"
        res = await self.request(conn, t.auth_source, {
            "saslStart": 1, "mechanism": "SCRAM-SHA-256",
            "payload": f"n,,{first_bare}".encode(), "options": {"skipEmptyExchange": True}})
        if not res.get("ok"):
            raise UpstreamError(f"upstream authentication failed: {res.get('errmsg')}")
        server_first = bytes(res["payload"]).decode()
        fields = dict(kv.split("=", 1) for kv in server_first.split(","))
        if not fields["r"].startswith(nonce):
            raise UpstreamError("upstream SCRAM nonce mismatch")
        from ogelkit.scram import saslprep
        salted = hashlib.pbkdf2_hmac("sha256", saslprep(t.password or "").encode(),
                                     base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={fields['r']}"
        auth_msg = f"{first_bare},{server_first},{without_proof}".encode()
        sig = hmac.digest(stored, auth_msg, "sha256")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig, strict=True))).decode()
        res = await self.request(conn, t.auth_source, {
            "saslContinue": 1, "conversationId": res.get("conversationId", 1),
            "payload": f"{without_proof},p={proof}".encode()})
        if not res.get("ok"):
            raise UpstreamError(f"upstream authentication failed: {res.get('errmsg')}")
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        expected = base64.b64encode(hmac.digest(server_key, auth_msg, "sha256")).decode()
        final = bytes(res.get("payload", b"")).decode()
        if final and final != f"v={expected}":
            raise UpstreamError("upstream SCRAM server signature mismatch")
        while not res.get("done"):
            res = await self.request(conn, t.auth_source, {
                "saslContinue": 1, "conversationId": res.get("conversationId", 1), "payload": b""})
            if not res.get("ok"):
                raise UpstreamError(f"upstream authentication failed: {res.get('errmsg')}")

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        self.closed = True
        self._fail_waiters("the backend is closing")
        for conn in list(self.live):
            conn.close()
        self.idle.clear()
        for task in list(self._tasks):
            task.cancel()

    def stats(self) -> dict[str, int]:
        return {"live": len(self.live), "idle": len(self.idle), "connecting": self.connecting,
                "waiting": sum(1 for w in self.waiters if w.callback is not None)}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__

