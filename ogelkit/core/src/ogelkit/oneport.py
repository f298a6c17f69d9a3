"""One TCP port for every database protocol (``[listen] port``).

Railway gives a service one public TCP proxy, so the gateway can serve Postgres, Redis and
MongoDB (and any third-party door) on a single port. Each accepted connection is held by a
small ``Sniffer`` until its first bytes tell which protocol it speaks, then handed, with
those bytes, to that door's own connection protocol on the *same* transport: after the
dispatch there is no extra hop and no per-request cost.

Dispatch asks each running door's ``FrontDoor.sniff(head)`` (True / False / None = need
more bytes), in the order the doors were started, with the most permissive sniffers (the
Redis inline protocol) last. A TLS ClientHello (``0x16 0x03``) is terminated here when
``[listen] tls_cert`` is set and the decrypted stream is sniffed again: the protocol is
chosen from what the client sends inside TLS, not from SNI or ALPN, because psql, redis-cli
and pymongo send no ALPN that names their protocol and SNI names a host (the tenant), not a
protocol. Postgres's own SSLRequest is left to the Postgres door, which answers it itself.

A client that sends nothing within ``sniff_timeout``, or bytes no door claims within
``MAX_HEAD`` bytes, is closed; nothing it does touches other clients. (sslh, Traefik's
Postgres router and Envoy's listener filters work the same way.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from ogelkit.frontdoor import bind_host, reuse_port

if TYPE_CHECKING:
    from ogelkit.context import GatewayContext
    from ogelkit.frontdoor import FrontDoor

log = logging.getLogger("ogelkit.oneport")

#: A client must be identified within this many bytes.
MAX_HEAD = 64


def is_tls_client_hello(head: bytes) -> bool | None:
    """A TLS record of type handshake (22) with a 3.x version: a ClientHello."""
    if len(head) < 2:
        return None
    return head[0] == 0x16 and head[1] == 0x03


def make_server_tls(cert: str, key: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


class OnePort:
    """The single listener; ``start()`` binds it, ``close()`` stops accepting and drops
    connections that are still being sniffed.

    The first bytes are *peeked* (``MSG_PEEK``), not read: a plain connection is handed to
    its door with ``loop.connect_accepted_socket(door.new_connection, sock)`` and the door
    reads the same bytes itself. A TLS connection gets its TLS transport the same way, with
    a ``Sniffer`` as its first protocol, which reads the decrypted head and then hands the
    transport to the door (``set_protocol``) with the bytes it read.
    """

    def __init__(self, context: GatewayContext, doors: list[FrontDoor], *, host: str,
                 port: int, sniff_timeout: float, tls: ssl.SSLContext | None = None):
        self.context = context
        # Permissive sniffers (Redis's inline commands) go last.
        self.doors = sorted(doors, key=lambda d: getattr(d, "sniff_last", False))
        self.host = host
        self.port = port
        self.sniff_timeout = sniff_timeout
        self.tls = tls
        self.listeners: list[socket.socket] = []
        self.pending: dict[socket.socket, float] = {}
        self.sniffers: set[Sniffer] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        m = context.metrics
        self._dispatched = {d.protocol: m.oneport.labels(d.protocol) for d in doors}
        self._dispatched["tls"] = m.oneport.labels("tls")
        self._dropped = m.oneport.labels("none")
        self._sniff_seconds = m.oneport_sniff_seconds

    async def start(self) -> list[tuple[str, int]]:
        self.listeners = _listen_sockets(self.host, self.port, reuse_port=reuse_port(self.context))
        loop = asyncio.get_running_loop()
        for lsock in self.listeners:
            task = loop.create_task(self._accept(lsock))
            self._tasks.add(task)
        return [s.getsockname()[:2] for s in self.listeners]

    async def _accept(self, lsock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                sock, _ = await loop.sock_accept(lsock)
            except OSError as exc:
                if self._closed:
                    return
                log.warning("one-port accept failed: %s", exc)
                await asyncio.sleep(0.05)  # e.g. EMFILE: let connections close first
                continue
            if self.context.draining:
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pending[sock] = time.monotonic()
            loop.add_reader(sock.fileno(), self._peek, sock)
            loop.call_later(self.sniff_timeout, self._expire, sock)

    def _expire(self, sock: socket.socket) -> None:
        if sock in self.pending:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        started = self.pending.pop(sock, None)
        if started is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        self._dropped.inc()
        sock.close()

    def _peek(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            head = sock.recv(MAX_HEAD, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sock)
            return
        if not head:  # closed before saying anything
            self._drop(sock)
            return
        if self.tls is not None:
            hello = is_tls_client_hello(head)
            if hello:
                self._dispatch(sock, None)
                return
        choice = self.pick(head)
        if choice is True:
            # Undecided: the peeked bytes stay readable, so wait a little instead of
            # spinning on a level-triggered reader.
            loop.remove_reader(sock.fileno())
            loop.call_later(0.005, self._resume_peek, sock)
            return
        if choice is None or choice is False:
            self._drop(sock)
            return
        self._dispatch(sock, choice)

    def _resume_peek(self, sock: socket.socket) -> None:
        if sock in self.pending:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._peek, sock)

    def _dispatch(self, sock: socket.socket, door: FrontDoor | None) -> None:
        loop = asyncio.get_running_loop()
        started = self.pending.pop(sock)
        loop.remove_reader(sock.fileno())
        if door is None:  # TLS: terminate, then sniff the decrypted bytes
            self._dispatched["tls"].inc()
            factory: Any = lambda: Sniffer(self, started)  # noqa: E731
            coro = loop.connect_accepted_socket(factory, sock, ssl=self.tls,
                                                ssl_handshake_timeout=self.sniff_timeout)
        else:
            self._dispatched[door.protocol].inc()
            self._sniff_seconds.observe(time.monotonic() - started)
            coro = loop.connect_accepted_socket(door.new_connection, sock)
        task = loop.create_task(self._connect(coro, sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, coro: Any, sock: socket.socket) -> None:
        try:
            await coro
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.debug("one-port connection failed during setup: %s", exc)
            sock.close()
        except Exception:  # a door's connection_made bug must not become a loose traceback
            log.exception("one-port connection setup failed")
            sock.close()

    async def close(self) -> None:
        """Stop accepting; close connections that were never dispatched."""
        self._closed = True
        for lsock in self.listeners:
            lsock.close()
        for sock in list(self.pending):
            self._drop(sock)
        for sniffer in list(self.sniffers):
            sniffer.drop()
        for task in list(self._tasks):
            task.cancel()

    def pick(self, head: bytes) -> FrontDoor | bool | None:
        """The door for ``head``; None when no door can claim it; True when more bytes may
        still decide."""
        # Doors are asked in priority order: one that needs more bytes holds the decision,
        # so a more permissive door further down cannot take a client too early.
        for door in self.doors:
            verdict = door.sniff(head)
            if verdict:
                return door
            if verdict is None:
                return True if len(head) < MAX_HEAD else None
        return None


class Sniffer(asyncio.Protocol):
    """The first protocol of a TLS connection: reads the decrypted head, then hands the
    transport and those bytes to the door that claims them."""

    def __init__(self, port: OnePort, started: float):
        self.port = port
        self.started = started
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.timer: asyncio.TimerHandle | None = None
        self.handed_over = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = transport  # type: ignore[assignment]
        self.port.sniffers.add(self)
        self.timer = asyncio.get_running_loop().call_later(self.port.sniff_timeout, self.drop)

    def data_received(self, data: bytes) -> None:
        self.head += data
        choice = self.port.pick(self.head)
        if choice is True:
            return
        if choice is None or choice is False:
            self.drop()
            return
        self._hand_over(choice)

    def _hand_over(self, door: FrontDoor) -> None:
        transport = self.transport
        assert transport is not None
        if self.timer is not None:
            self.timer.cancel()
        self.handed_over = True
        self.port.sniffers.discard(self)
        self.port._sniff_seconds.observe(time.monotonic() - self.started)
        proto = door.new_connection()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if not transport.is_closing():
            proto.data_received(self.head)

    def drop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.port.sniffers.discard(self)
        if self.handed_over:
            return
        self.port._dropped.inc()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.port.sniffers.discard(self)


def _listen_sockets(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for ``host``: "::" (or "") is one dual-stack IPv6 socket that also
    accepts IPv4, as the other listeners do. ``reuse_port``: SO_REUSEPORT (workers)."""
    if bind_host(host) is None:
        if socket.has_dualstack_ipv6():
            sock = socket.create_server(("::", port), family=socket.AF_INET6,
                                        dualstack_ipv6=True, backlog=2048,
                                        reuse_port=reuse_port)
        else:
            sock = socket.create_server(("0.0.0.0", port), backlog=2048, reuse_port=reuse_port)
        socks = [sock]
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socks = [socket.create_server((host, port), family=family, backlog=2048,
                                      reuse_port=reuse_port)]
    for sock in socks:
        sock.setblocking(False)
    return socks


__all__ = ["MAX_HEAD", "OnePort", "Sniffer", "is_tls_client_hello", "make_server_tls"]
