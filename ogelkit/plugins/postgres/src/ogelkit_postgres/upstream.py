"""One upstream (server) connection: log in as the tenant role, then relay.

While a client holds the connection, every byte from the server goes straight to
``client.server_data`` (the relay scans it there). While it sits in the pool, the
connection reads on its own: it keeps the server's ParameterStatus values, swallows the
results of its own reset query (``DISCARD ALL``) and notices when the server goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ogelkit_postgres import wire as pg
from ogelkit_postgres.scram_client import ScramClient, ScramClientError
from ogelkit_postgres.wire import T

if TYPE_CHECKING:
    from ogelkit_postgres.connection import PostgresConnection
    from ogelkit_postgres.pool import Pool

log = logging.getLogger("ogelkit.postgres")

#: ``application_name`` of the gateway's upstream connections while no client holds them.
UPSTREAM_APP = "o7s"


class UpstreamError(Exception):
    """The upstream refused or dropped a connection; carries the server's SQLSTATE when it
    sent one (``08006`` otherwise)."""

    def __init__(self, message: str, sqlstate: str = "08006", *, severity: str = "FATAL",
                 detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.severity = severity
        self.detail = detail
        self.hint = hint

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> UpstreamError:
        return cls(fields.get("M", "upstream error"), fields.get("C", "08006"),
                   severity=fields.get("V", fields.get("S", "FATAL")),
                   detail=fields.get("D"), hint=fields.get("H"))


def client_sqlstate(exc: UpstreamError) -> str:
    """What a client is told when no upstream connection can be had: the server's own
    SQLSTATE when it refused us (e.g. 53300 too many connections for the role), 08006 when
    it is unreachable or going away."""
    if exc.sqlstate.startswith("08") or exc.sqlstate in ("57P01", "57P02", "57P03"):
        return "08006"
    return exc.sqlstate


class ServerConnection(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_password",
        "_scram",
        "_startup",
        "_waiter",
        "address",
        "applied",
        "by_key",
        "cancels_pending",
        "client",
        "closed",
        "created",
        "last_used",
        "params",
        "pid",
        "pool",
        "prepared",
        "reading_paused",
        "ready",
        "release_after_cancel",
        "reset_pending",
        "secret",
        "status",
        "stuck_since",
        "to_deallocate",
        "transport",
    )

    def __init__(self, pool: Pool, user: str, password: str, database: str,
                 startup_extra: dict[str, str] | None = None):
        self.pool = pool
        #: Where this connection went (host, port, TLS context): its CancelRequests go
        #: there too (a Neon branch has a compute, and a port, of its own).
        self.address: tuple[str, int, ssl.SSLContext | None] = ("", 0, None)
        self.transport: asyncio.Transport | None = None
        self.client: PostgresConnection | None = None
        self.params: dict[str, str] = {}
        self.pid = 0
        self.secret = 0
        self.status = b"I"
        self.stuck_since: float | None = None  # see Pool._close_orphans
        # Settings (a dict object) last applied with SET; compared at every checkout.
        self.applied: dict[str, str] | None = {}
        # Transaction mode: server-side prepared statements, name -> key, in LRU order.
        self.prepared: OrderedDict[bytes, bytes] = OrderedDict()
        self.by_key: dict[bytes, bytes] = {}
        self.to_deallocate: list[bytes] = []
        self.created = time.monotonic()
        self.last_used = self.created
        self.closed = False
        self.ready = False
        self.reading_paused = False
        self.reset_pending = 0
        self.cancels_pending = 0
        self.release_after_cancel = False
        self._buf = bytearray()
        self._password = password
        self._scram: ScramClient | None = None
        # "o7s": the reset value of a pooled connection; a client's own application_name is
        # SET over it at checkout (no tier or tenant in it: other tenants can read it).
        self._startup = {"user": user, "database": database, "application_name": UPSTREAM_APP}
        if startup_extra:  # e.g. Neon's options=endpoint=<id>
            self._startup.update(startup_extra)
        self._waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # Dead-peer detection for pooled connections that sit idle for minutes.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        transport.write(pg.startup_message(self._startup))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            try:
                client.server_data(data)
            except Exception as exc:  # costs that client (and this connection) only
                self.client = None
                client.crashed(exc)
                self.close()
        elif self.ready:
            self._idle_data(data)
        else:
            self._handshake_data(data)

    def eof_received(self) -> bool | None:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._waiter.done():
            self._waiter.set_exception(UpstreamError(
                "the upstream server closed the connection during login"))
        client = self.client
        if client is not None:
            self.client = None
            client.server_lost(self)
        self.pool.discard(self)

    def pause_writing(self) -> None:
        client = self.client
        if client is not None:
            client.pause_for_server()

    def resume_writing(self) -> None:
        client = self.client
        if client is not None:
            client.resume_for_server()

    # -- login -----------------------------------------------------------------------------
    async def wait_ready(self) -> None:
        await self._waiter

    def _fail(self, exc: Exception) -> None:
        if not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _handshake_data(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 5:
                kind = buf[pos]
                end = pos + 1 + pg.unpack_len(buf, pos + 1)[0]
                if end > n:
                    break
                body = bytes(buf[pos + 5:end])
                pos = end
                if kind == T.AUTH:
                    self._auth(body)
                elif kind == T.PARAMETER_STATUS:
                    name, i = pg.read_cstr(body, 0)
                    value, _ = pg.read_cstr(body, i)
                    self.params[name.decode()] = value.decode()
                elif kind == T.BACKEND_KEY:
                    self.pid, self.secret = pg.unpack_i32(body, 0)[0], pg.unpack_i32(body, 4)[0]
                elif kind == T.ERROR:
                    raise UpstreamError.from_fields(pg.error_fields(body))
                elif kind == T.READY:
                    self.status = body[:1]
                    self.ready = True
                    del buf[:pos]
                    rest = bytes(buf)
                    buf.clear()
                    self._waiter.set_result(None)
                    if rest:
                        self._idle_data(rest)
                    return
                # NoticeResponse, NegotiateProtocolVersion: nothing to do
        except UpstreamError as exc:
            self._fail(exc)
            return
        except (ScramClientError, ValueError, IndexError, UnicodeDecodeError) as exc:
            self._fail(UpstreamError(f"upstream login failed: {exc}", "08006"))
            return
        del buf[:pos]

    def _auth(self, body: bytes) -> None:
        code = pg.unpack_i32(body, 0)[0]
        write = self.transport.write  # type: ignore[union-attr]
        if code == 0:  # AuthenticationOk
            return
        if code == 10:  # SASL
            mechanisms = body[4:].split(b"\0")
            if b"SCRAM-SHA-256" not in mechanisms:
                raise UpstreamError("upstream offers no SCRAM-SHA-256", "28000")
            self._scram = ScramClient(self._password)
            write(pg.sasl_initial_response("SCRAM-SHA-256", self._scram.first()))
        elif code == 11:
            assert self._scram is not None
            write(pg.sasl_response(self._scram.final(body[4:])))
        elif code == 12:
            assert self._scram is not None
            self._scram.verify(body[4:])
        elif code == 3:  # cleartext (trust-less local setups)
            write(pg.password_message(self._password))
        elif code == 5:  # md5
            import hashlib
            user = self._startup["user"].encode()
            inner = hashlib.md5(self._password.encode() + user).hexdigest().encode()
            outer = hashlib.md5(inner + body[4:8]).hexdigest()
            write(pg.password_message("md5" + outer))
        else:
            raise UpstreamError(f"unsupported upstream authentication method {code}", "28000")

    # -- pooled (no client) ----------------------------------------------------------------
    def _idle_data(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            data = bytes(buf)
            buf.clear()
        pos = 0
        n = len(data)
        while n - pos >= 5:
            kind = data[pos]
            end = pos + 1 + pg.unpack_len(data, pos + 1)[0]
            if end > n:
                break
            if kind == T.READY:
                self.status = data[pos + 5:pos + 6]
                if self.reset_pending:
                    self.reset_pending -= 1
                    if not self.reset_pending:
                        self.pool.checkin(self)
            elif kind == T.PARAMETER_STATUS:
                self.note_parameter(data, pos, end)
            elif kind == T.ERROR:
                fields = pg.error_fields(data[pos + 5:end])
                if self.reset_pending:
                    log.warning("server reset failed: %s", fields.get("M"),
                                extra={"backend": self.pool.backend.name})
                elif fields.get("V") in ("FATAL", "PANIC"):
                    log.info("pooled server connection terminated: %s", fields.get("M"),
                             extra={"backend": self.pool.backend.name})
            pos = end
        if pos < n:
            self._buf += data[pos:]

    def note_parameter(self, data: bytes, pos: int, end: int) -> tuple[str, str]:
        name, i = pg.read_cstr(data, pos + 5, end)
        value, _ = pg.read_cstr(data, i, end)
        key, val = name.decode("utf-8", "replace"), value.decode("utf-8", "replace")
        self.params[key] = val
        return key, val

    def reset(self, sql: bytes) -> None:
        """Send the reset query; the connection checks itself in when it is done."""
        self.reset_pending += 1
        self.applied = {}
        self.transport.write(sql)  # type: ignore[union-attr]

    # -- misc ------------------------------------------------------------------------------
    def pause(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            if not self.closed:
                self.transport.resume_reading()

    def forget_prepared(self) -> None:
        self.prepared.clear()
        self.by_key.clear()
        self.to_deallocate.clear()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            with contextlib.suppress(Exception):
                if self.ready:
                    self.transport.write(pg.TERMINATE)
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "status": self.status.decode(), "attached": self.client is not None,
                "age": round(time.monotonic() - self.created, 1)}

    def __repr__(self) -> str:
        return f"<ServerConnection pid={self.pid} {self.pool!r}>"


async def tls_socket(host: str, port: int) -> socket.socket:
    """A connected socket on which the server agreed to TLS (SSLRequest answered ``S``),
    ready for the TLS handshake; ``UpstreamError`` when it refuses TLS."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, kind, proto, _, addr in await loop.getaddrinfo(host, port,
                                                               type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            await loop.sock_sendall(sock, pg.ssl_request())
            answer = await loop.sock_recv(sock, 1)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        if answer != b"S":
            sock.close()
            raise UpstreamError(f"the upstream server at {host}:{port} does not accept TLS",
                                "08001")
        return sock
    raise last or OSError(f"cannot resolve {host}")


async def open_server(pool: Pool, host: str, port: int, user: str, password: str,
                      database: str, deadline: float, *,
                      startup_extra: dict[str, str] | None = None,
                      tls: ssl.SSLContext | None = None) -> ServerConnection:
    """Connect (over TLS when ``tls`` is given: SSLRequest, then the handshake with SNI =
    ``host``) and log in; raises ``UpstreamError`` (with the server's SQLSTATE if any)."""
    loop = asyncio.get_running_loop()
    srv: ServerConnection | None = None

    def make() -> ServerConnection:
        return ServerConnection(pool, user, password, database, startup_extra)

    try:
        async with asyncio.timeout(deadline):
            if tls is None:
                _, srv = await loop.create_connection(make, host, port)
            else:
                sock = await tls_socket(host, port)
                _, srv = await loop.create_connection(make, sock=sock, ssl=tls,
                                                      server_hostname=host)
            srv.address = (host, port, tls)
            await srv.wait_ready()
    except TimeoutError:
        if srv is not None:
            srv.abort()
        raise UpstreamError(f"timed out after {deadline:g}s connecting to the upstream server",
                            "08001") from None
    except ssl.SSLError as exc:
        raise UpstreamError(f"TLS with the upstream server failed: {exc}", "08001") from None
    except OSError as exc:
        raise UpstreamError(f"could not connect to the upstream server: "
                            f"{exc.strerror or exc}", "08001") from None
    return srv


async def send_cancel(host: str, port: int, pid: int, secret: int, deadline: float = 5.0,
                      tls: ssl.SSLContext | None = None) -> None:
    """Send a CancelRequest upstream and wait until the server has taken it (it closes)."""
    try:
        async with asyncio.timeout(deadline):
            if tls is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                sock = await tls_socket(host, port)
                reader, writer = await asyncio.open_connection(sock=sock, ssl=tls,
                                                               server_hostname=host)
            try:
                writer.write(pg.cancel_request(pid, secret))
                await writer.drain()
                await reader.read()  # the postmaster closes once it signalled the backend
            finally:
                writer.close()
    except (OSError, TimeoutError, UpstreamError) as exc:
        log.warning("cancel request upstream failed: %s", exc)
