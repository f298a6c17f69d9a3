"""One connection lifecycle for every protocol.

A front door (Postgres v3, RESP, OP_MSG, ...) owns only what is protocol-specific: framing,
its authentication messages, its error encoding and its hot relay loop. The steps that are
the same for every protocol live here, once, so they cannot drift between doors:

- ``Login``: tenant lookup (a control-plane outage is a ``Reject(UNAVAILABLE)``), the ban
  check, the credential check (an unknown tenant answers exactly like a wrong password, in
  content and in timing), routing (unknown database, suspended tenant), admission through
  the chain, waking a sleeping database, registration in the session registry, and the end
  of the session (the log phase always runs, refused connections included).
- ``ClientSet``: the door's live connections; drains on events (a connection says when it
  becomes idle) instead of polling, and closes with a grace period, then aborts.
- ``DoorMetrics``: connection outcomes counted at one defined point each (``accepted`` once
  admitted; ``rejected``/``auth_failed``/``error`` when refused), the active gauge, and
  operation counters that are plain ints on the hot path, published once a second.
- ``FrontDoor``: the base class tying them together, plus ``bind_host`` and
  ``format_address``.

mitmproxy's ``ConnectionHandler`` is the model: one lifecycle driver, protocol layers that
do their own framing but none of the shared decisions.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from ogelkit.limits import MAX_INFLIGHT, OutputGuard
from ogelkit.model import Reason, Reject, Session

if TYPE_CHECKING:
    from ogelkit.backend import Backend
    from ogelkit.context import GatewayContext
    from ogelkit.control.records import DatabaseRecord
    from ogelkit.directory import TenantEntry
    from ogelkit.metrics import Metrics
    from ogelkit.scram import Verifier

log = logging.getLogger("ogelkit.frontdoor")

#: What a tenant slug may look like; anything else is an unknown tenant without a lookup.
SLUG = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

#: Connection outcomes, the ``outcome`` label of ``ogelkit_connections_total``.
OUTCOMES = ("accepted", "rejected", "auth_failed", "error")

SHUTDOWN = Reject(Reason.SHUTDOWN, "terminating connection: the gateway is shutting down",
                  hint="Reconnect; another gateway (or this one, restarted) will serve you.")


def bind_host(host: str) -> str | None:
    """``"::"``/``""``/``"*"`` mean every interface of both families (Railway's private
    network is IPv6, its public proxy IPv4); anything else is used as given."""
    return None if host in ("::", "", "*") else host


def reuse_port(context: Any) -> bool:
    """Whether listeners set SO_REUSEPORT: with ``[gateway] workers > 1`` every worker
    process binds the same ports and the kernel spreads new connections over them."""
    config = getattr(context, "config", None)
    gateway = getattr(config, "gateway", None)
    return gateway is not None and gateway.processes > 1


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:5432`` or ``[::1]:5432``: the one spelling of a socket address in logs,
    sessions and the admin API."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The client's address of a transport, formatted; ``"unix"`` for a Unix socket."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return format_address(str(peer[0]), int(peer[1]))
    return "unix"


# -- metrics -----------------------------------------------------------------------------------


class DoorMetrics:
    """A door's Prometheus children, resolved once (``.labels()`` costs microseconds).

    Operation counts are plain integers on the hot path (``ok``, ``error``, ``rejected``
    attributes: ``metrics.ok += 1``); ``flush()`` moves them into the registry, and the door
    calls it once a second and at close.
    """

    __slots__ = ("_active", "_conn", "_ops", "_pushed", "error", "ok", "rejected")

    def __init__(self, metrics: Metrics, protocol: str):
        self._conn = {o: metrics.connections.labels(protocol, o) for o in OUTCOMES}
        self._active = metrics.connections_active.labels(protocol)
        self._ops = [metrics.operations.labels(protocol, o) for o in ("ok", "error", "rejected")]
        self._pushed = [0, 0, 0]
        self.ok = self.error = self.rejected = 0

    def connection(self, outcome: str) -> None:
        self._conn[outcome].inc()

    def opened(self) -> None:
        self._active.inc()

    def closed(self) -> None:
        self._active.dec()

    def flush(self) -> None:
        for i, value in enumerate((self.ok, self.error, self.rejected)):
            delta = value - self._pushed[i]
            if delta > 0:  # "ok" can step back when an error arrives for a counted op
                self._ops[i].inc(delta)
                self._pushed[i] = value


# -- live connections --------------------------------------------------------------------------


class Connection(Protocol):
    """What ``ClientSet`` needs of a door's connection object."""

    def is_idle(self) -> bool:
        """Between requests and outside a transaction: safe to close for a drain."""
        ...

    def close_with(self, reject: Reject) -> None:
        """Tell the client why in its protocol, then close."""
        ...

    def abort(self) -> None:
        """Drop the connection now (after the close grace period)."""
        ...


C = TypeVar("C", bound=Connection)


class ClientSet(Generic[C]):
    """A door's live client connections.

    Connections ``add`` themselves when accepted and ``discard`` themselves when gone. During
    a drain a connection that becomes idle calls ``idle(conn)`` and is closed right there,
    so the drain waits on events (the set becoming empty), never on a poll loop.
    """

    def __init__(self) -> None:
        self._conns: set[C] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.draining: Reject | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._conns))

    def __contains__(self, conn: object) -> bool:
        return conn in self._conns

    def add(self, conn: C) -> None:
        """A new connection; refused at once (``close_with``) while draining."""
        self._conns.add(conn)
        self._empty.clear()
        if self.draining is not None:
            conn.close_with(self.draining)

    def discard(self, conn: C) -> None:
        self._conns.discard(conn)
        if not self._conns:
            self._empty.set()

    def idle(self, conn: C) -> None:
        """Called by a connection when it becomes idle: closes it if the door drains."""
        if self.draining is not None and conn in self._conns:
            conn.close_with(self.draining)

    async def drain(self, reject: Reject = SHUTDOWN) -> None:
        """Close every connection as soon as it is idle; return when none is left (the
        runtime bounds this with ``[gateway] drain_timeout``)."""
        self.draining = reject
        for conn in list(self._conns):
            if conn.is_idle():
                conn.close_with(reject)
        await self._empty.wait()

    async def close(self, reject: Reject, grace: float = 1.0) -> None:
        """Close every connection now, telling it why; abort what is left after ``grace``."""
        self.draining = self.draining or reject
        for conn in list(self._conns):
            conn.close_with(reject)
        try:
            await asyncio.wait_for(self._empty.wait(), grace)
        except TimeoutError:
            for conn in list(self._conns):
                conn.abort()
                self.discard(conn)


# -- the login steps ---------------------------------------------------------------------------


class Login:
    """The protocol-independent steps of one connection, in the order a door calls them::

        login = door.login(session)                    # Session(protocol, peer, user)
        entry = await login.lookup(slug)               # Reject(UNAVAILABLE) on an outage
        login.check_ban()                              # Reject(BANNED) from the chain
        scram = ScramServer(login.verifier())          # or: await login.check_password(pw)
        ... protocol exchange; on a bad proof: raise login.bad_credentials(message)
        db = login.route(database, unknown_message)    # Reject(UNKNOWN / SUSPENDED)
        await login.admit(closer)                      # chain, wake, registry, "accepted"
        ...
        login.end()                                    # always, refused connections too

    Every ``Reject`` these steps raise has already been recorded as ``session.rejection``
    (so the usage and intelligence layers see it) and counted in the door's metrics; the
    door answers it in its protocol with ``door``'s error encoding and closes. A door that
    refuses for a reason of its own (a protocol violation ...) calls ``refuse``.
    """

    __slots__ = ("admitted", "door", "ended", "entry", "session", "slug", "started")

    def __init__(self, door: FrontDoor, session: Session):
        self.door = door
        self.session = session
        self.slug = ""
        self.entry: TenantEntry | None = None
        self.admitted = False
        self.ended = False
        self.started = time.monotonic()  # reset by lookup(): where a login's timing starts

    @property
    def context(self) -> GatewayContext:
        return self.door.context

    def refuse(self, reject: Reject, outcome: str = "rejected") -> Reject:
        """Record, count and audit a refusal; returns ``reject`` for the door to answer."""
        s = self.session
        if s.rejection is None:
            s.rejection = reject
        self.door.metrics.connection(outcome)
        audit = getattr(self.context, "audit", None)
        if audit is not None:
            # A failed login names the user as sent (never a password) and no reason
            # beyond "auth": the same line for an unknown tenant and a wrong password.
            audit.record("login_failed" if outcome == "auth_failed" else "connection_refused",
                         protocol=s.protocol, client=s.client_addr, user=s.user,
                         tenant=s.tenant.slug if s.tenant is not None else None,
                         database=s.database, reason=reject.reason.value, layer=reject.layer,
                         text=reject.message)
        return reject

    async def lookup(self, slug: str) -> TenantEntry | None:
        """The tenant called ``slug`` (cached), or None when there is no such tenant.

        A malformed name is simply unknown (no lookup). An unreachable control plane raises
        ``Reject(UNAVAILABLE)``: tenants already in the cache keep being served.
        """
        self.slug = slug
        self.started = time.monotonic()
        entry = None
        if SLUG.match(slug):
            try:
                entry = await self.context.directory.lookup(slug)
            except Exception as exc:
                log.warning("control plane lookup failed: %s", exc)
                raise self.refuse(Reject(
                    Reason.UNAVAILABLE, "the gateway cannot reach its control plane",
                    hint="Retry in a few seconds."), "error") from None
        self.entry = entry
        if entry is not None:
            self.session.tenant = entry.tenant
            self.session.tier = entry.tier
        return entry

    def check_ban(self) -> None:
        """The chain's pre-authentication phase (bans from the intelligence layer)."""
        chain = self.context.chain
        if chain is None:
            return
        try:
            chain.auth(self.session)
        except Reject as rej:
            raise self.refuse(rej) from None

    def verifier(self) -> Verifier:
        """The SCRAM verifier to run the exchange against: the tenant's, or a stable fake
        one for an unknown tenant, so the exchange looks (and takes) the same."""
        return self.context.directory.verifier_for(self.slug, self.entry)

    async def check_password(self, password: str) -> bool:
        """Plain-password protocols (Redis AUTH). An unknown tenant pays the same key
        derivation as a known one, so the answer's timing does not tell whether it exists;
        a failure answers no sooner than recent failures did (``failed_check_floor``), so
        neither does the lookup (a cached known tenant, an unknown one from the store)."""
        directory = self.context.directory
        if self.entry is not None and self.entry.verifier is not None:
            ok = await directory.check_password(self.entry, password)
        else:
            await directory.check_password_against(self.verifier(), password)
            ok = False
        if not ok:
            wait = directory.failed_check_floor(time.monotonic() - self.started)
            self.context.metrics.auth_failure_padding.observe(wait)
            if wait > 0:
                await asyncio.sleep(wait)
        return ok

    def bad_credentials(self, message: str) -> Reject:
        """The one answer for a wrong password *and* an unknown tenant: the same reason and
        the same words, so no client can probe which tenants exist."""
        return self.refuse(Reject(Reason.AUTH, message), "auth_failed")

    def route(self, database: str, unknown_message: str) -> DatabaseRecord:
        """After authentication: the tenant database this door serves, or a refusal.

        A database that does not exist, and one that belongs to a backend another door
        serves, get the same ``unknown_message``. A suspended tenant is refused here (after
        the credential check, so suspension does not reveal a tenant either).
        """
        entry = self.entry
        assert entry is not None, "route() needs an authenticated tenant"
        db = entry.databases.get(database)
        backend = self.context.backends.get(db.backend) if db is not None else None
        if db is None or backend is None or backend not in self.door.backends:
            raise self.refuse(Reject(Reason.UNKNOWN, unknown_message))
        return self.use(db, backend)

    def use(self, db: DatabaseRecord, backend: Backend) -> DatabaseRecord:
        """Route to ``db`` picked by the door itself (e.g. Redis's default database)."""
        entry = self.entry
        assert entry is not None
        if entry.tenant.suspended:
            raise self.refuse(Reject(Reason.SUSPENDED, f'tenant "{entry.tenant.slug}" is suspended',
                                     hint="Contact the platform operator."))
        s = self.session
        s.tier = entry.tier
        s.database = db.name
        s.db = db
        s.backend = backend
        s.authenticated = True
        return db

    async def admit(self, closer: Callable[[Reject], None]) -> None:
        """Admission through the chain's connect phase (gatekeeper ...), then waking the
        database if it sleeps (the client is held, not refused), then registration.

        ``closer`` closes this client with a ``Reject`` (tier downgrade, suspension, ban,
        drain). Counts ``accepted`` exactly once, here.
        """
        s = self.session
        ctx = self.context
        chain = ctx.chain
        if chain is not None:
            try:
                await chain.connect(s)
            except Reject as rej:
                raise self.refuse(rej) from None
        lifecycle = getattr(ctx, "lifecycle", None)
        if lifecycle is not None:
            try:
                await lifecycle.ready(s)
            except Reject as rej:
                raise self.refuse(rej) from None
        s.closer = closer
        ctx.sessions.add(s)
        self.admitted = True
        self.door.metrics.connection("accepted")
        self.door.metrics.opened()

    def end(self) -> None:
        """The session is over: unregister it and run the chain's log phase. Idempotent;
        call it for every session, refused ones included."""
        if self.ended:
            return
        self.ended = True
        s = self.session
        if self.admitted:
            self.context.sessions.discard(s)
            self.door.metrics.closed()
            lifecycle = getattr(self.context, "lifecycle", None)
            if lifecycle is not None:
                lifecycle.released(s)
        s.closed_at = time.monotonic()
        chain = self.context.chain
        if chain is not None:
            chain.disconnect(s)


# -- the base class ----------------------------------------------------------------------------


class FrontDoor:
    """Base class for protocol servers. One instance per protocol per gateway.

    Register it with ``register.frontdoor(cls)`` from ``ogelkit_register_backends``; the
    runtime starts one for every protocol that a configured backend names
    (``Backend.protocol``), handing it those backends.

    A subclass implements ``new_connection()`` (the ``asyncio.Protocol`` of one client) and
    uses ``self.login(session)``, ``self.clients`` and ``self.metrics``. The defaults of
    ``start``/``stop_accepting``/``drain``/``close`` then need no overriding; extend them for
    protocol-specific resources (cancel keys, pools).
    """

    protocol: ClassVar[str] = ""
    default_port: ClassVar[int] = 0
    #: Seconds a client may take from connect to authenticated (then it is closed).
    handshake_timeout: float = 10.0

    def __init__(self, context: GatewayContext, *, host: str, port: int,
                 backends: list[Backend]):
        self.context = context
        self.host = host
        self.port = port
        self.backends = backends
        self.clients: ClientSet[Any] = ClientSet()
        self.metrics = DoorMetrics(context.metrics, self.protocol)
        self.servers: list[asyncio.AbstractServer] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.observe = False  # set at start: see observes_operations()
        limits = getattr(getattr(context, "config", None), "limits", None)
        #: Unanswered requests one connection may have upstream (``[limits] max_inflight``).
        self.max_inflight: int = limits.max_inflight if limits is not None else MAX_INFLIGHT
        #: The gateway's ceilings on replies clients do not read (``ogelkit.limits``);
        #: connections report ``pause_writing``/``resume_writing`` to it.
        self.output_guard: OutputGuard = getattr(context, "output_guard", None) \
            or OutputGuard.from_config(limits)
        self._tasks: set[asyncio.Task[Any]] = set()

    def add_backend(self, backend: Backend) -> None:
        """A backend of this protocol added by a config reload: serve it from now on.
        Extend it when the door derives something from its backends (ids, limits)."""
        self.backends.append(backend)

    # -- what a subclass provides ------------------------------------------------------------
    def new_connection(self) -> asyncio.Protocol:
        """The protocol object for one new client connection."""
        raise NotImplementedError

    @classmethod
    def sniff(cls, head: bytes) -> bool | None:
        """For the one-port listener: True if ``head`` (the first bytes a client sent) is
        this protocol, False if it is not, None if more bytes are needed to tell."""
        return False

    # -- lifecycle ---------------------------------------------------------------------------
    def login(self, session: Session) -> Login:
        return Login(self, session)

    def observes_operations(self) -> bool:
        """Whether some layer looks at operations: without one, a door forwards requests
        without building per-request objects. Known once the chain is built (at start)."""
        chain = self.context.chain
        return chain is not None and any(
            "on_operation" in layer.phases or "on_complete" in layer.phases
            for layer in chain.layers)

    async def start(self) -> list[tuple[str, int]]:
        """Bind and start accepting; return the bound addresses. Raise ``OSError`` on failure."""
        self.loop = asyncio.get_running_loop()
        self.observe = self.observes_operations()
        server = await self.loop.create_server(
            self.new_connection, host=bind_host(self.host), port=self.port,
            reuse_address=True, reuse_port=reuse_port(self.context) or None, backlog=2048)
        self.servers.append(server)
        self.spawn(self._publish_metrics())
        return [sock.getsockname()[:2] for sock in server.sockets]

    async def stop_accepting(self) -> None:
        """Stop accepting new clients (first step of a drain)."""
        for server in self.servers:
            server.close()
        self.clients.draining = self.clients.draining or SHUTDOWN

    async def drain(self) -> None:
        """Close clients as they become idle; return when none is left."""
        await self.clients.drain(SHUTDOWN)

    async def close(self, reason: Reject) -> None:
        """Close every remaining client now, telling it ``reason``."""
        await self.clients.close(reason)
        for task in list(self._tasks):
            task.cancel()
        self.metrics.flush()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the door keeps a reference to and cancels at close."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _publish_metrics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.metrics.flush()

    def stats(self) -> dict[str, Any]:
        """Counts for the admin API and readiness (clients, pools ...)."""
        return {"clients": len(self.clients)}


__all__ = [
    "OUTCOMES",
    "SHUTDOWN",
    "SLUG",
    "ClientSet",
    "Connection",
    "DoorMetrics",
    "FrontDoor",
    "Login",
    "bind_host",
    "format_address",
    "peer_address",
    "reuse_port",
]
