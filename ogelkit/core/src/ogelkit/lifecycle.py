"""The database lifecycle (DLS): scale to zero and wake on connect.

Every tenant database is ``active`` (a client is connected), ``idle`` (no client, still
running), ``asleep`` (its backend released what it holds upstream) or ``waking``. The state
lives in the control plane (``databases.state``), so the CLI, the admin API and every
replica see the same one.

- **Wake on connect.** ``Login.admit`` calls ``ready(session)`` once the chain admitted a
  client, after authentication. A client of a sleeping database is *held*: the gateway calls
  ``backend.wake(db)`` and finishes the client's startup when it returns. Concurrent clients
  of one database share one wake (one task per database); each waits at most
  ``[lifecycle] wake_timeout``, then gets ``NotReady`` (Postgres: SQLSTATE 57P03 with DETAIL
  and HINT). A timed-out wake goes on in the background, so a retry joins it instead of
  starting over; a failed wake leaves the database asleep and is logged. Every wake is a
  cold start: observed in ``ogelkit_cold_start_seconds``, logged, recorded as the database's
  last cold start, and announced to ``subscribe``rs (the usage layer meters it).
- **The scheduler** (``run``): every ``check_every`` each gateway records client activity
  (``last_active_at``) and adopts state changes made elsewhere (a sleep decided by another
  replica releases this replica's pools too). One gateway, holding a lease, decides: a
  database with no client anywhere goes ``idle``, and after its tier's
  ``idle_before_sleep`` (re-read every tick, so tier changes move it; ``None`` = never)
  ``asleep`` through ``backend.sleep(db)``; it also applies ``ogelkit databases sleep|wake``
  requests. The lease: ``SET NX PX`` in the ``[state]`` Redis, else a session advisory lock
  on a PostgreSQL control plane, else (SQLite: one gateway) always held.
- **Restarts.** States are reloaded from the control plane at start; a wake interrupted by
  the restart is ``asleep`` again, and so is a database whose backend says (``running``)
  that nothing runs for it.

Backends opt in with ``sleep``/``wake`` (``Capability.SLEEP``/``WAKE``); a backend without
them is always ready and never put to sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from ogelkit.backend import Backend, Capability
from ogelkit.model import Reason, Reject
from ogelkit.units import format_duration

if TYPE_CHECKING:
    from ogelkit.context import GatewayContext
    from ogelkit.control.records import DatabaseRecord
    from ogelkit.control.store import LifeRow
    from ogelkit.model import Session
    from ogelkit.tiers import Tier

log = logging.getLogger("ogelkit.lifecycle")

STATES = ("active", "idle", "asleep", "waking")
#: A database with no client for this many scheduler periods is ``idle``.
IDLE_AFTER_TICKS = 2
#: A database with clients has its activity written every this many scheduler periods
#: (so ``idle_before_sleep`` should be well above ``TOUCH_EVERY * check_every``).
TOUCH_EVERY = 5
#: A wake nobody waits for any more is still given this many wake timeouts to finish.
WAKE_GIVE_UP = 10
LEASE_KEY = "ogelkit:lifecycle:leader:"  # + a digest of the control plane URL
ADVISORY_KEY = 0x06E1_11FE  # pg_try_advisory_lock key of the scheduler


class NotReady(Reject):
    """A sleeping database did not become ready: the wake timed out or failed.

    ``reason`` is ``UNAVAILABLE``; ``sqlstate`` tells the Postgres door to answer
    ``57P03`` (cannot_connect_now, what PostgreSQL itself says while it starts up) rather
    than a connection failure."""

    sqlstate = "57P03"


@attrs.frozen
class LifecycleEvent:
    """What ``subscribe``rs hear: ``kind`` is ``cold_start`` (a wake finished, ``seconds``
    long), ``wake_failed`` or ``sleep``."""

    kind: str
    tenant: str
    database: str
    backend: str
    seconds: float = 0.0
    ts: float = attrs.field(factory=time.time)


@attrs.define(eq=False)
class _Life:
    tenant: str
    name: str
    backend: str
    state: str = "active"
    clients: int = 0
    last_active: float = 0.0  # wall clock: last time a client was here (any gateway)
    dirty: bool = False  # last_active not yet written to the control plane
    changed_at: float = 0.0
    requested: str | None = None
    last_cold_start_at: float | None = None
    last_cold_start_seconds: float | None = None
    wake: asyncio.Task[float] | None = None
    # set while backend.sleep() runs: the state already says asleep (so new clients are
    # held), and a wake waits for it so the backend never sees a wake before its sleep ended
    sleeping: asyncio.Event | None = None
    written_at: float = 0.0  # last activity write


class Lifecycle:
    """``GatewayContext.lifecycle``: one per gateway."""

    def __init__(self, ctx: GatewayContext):
        self.ctx = ctx
        self.cfg = ctx.config.lifecycle
        self._dbs: dict[tuple[str, str], _Life] = {}
        self._listeners: list[Callable[[LifecycleEvent], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lease: _Lease | None = None
        self.leader = False
        self.started_at = time.time()
        m = ctx.metrics
        self._cold = m.cold_start_seconds
        self._wakes = m.database_wakes
        self._sleeps = m.database_sleeps
        self._timeouts = m.wake_timeouts
        for state in STATES:
            m.databases.labels(state).set_function(self._counter(state))
        m.lifecycle_leader.set_function(lambda: 1.0 if self.leader else 0.0)

    # -- views -------------------------------------------------------------------------------
    def _counter(self, state: str) -> Callable[[], float]:
        return lambda: float(self.count(state))

    def count(self, state: str) -> int:
        return sum(1 for life in self._dbs.values() if life.state == state)

    def state_of(self, tenant: str, name: str) -> str | None:
        life = self._dbs.get((tenant, name))
        return life.state if life is not None else None

    def describe(self, tenant: str, name: str) -> dict[str, Any] | None:
        """This gateway's view of one database (admin API)."""
        life = self._dbs.get((tenant, name))
        if life is None:
            return None
        return {"state": life.state, "clients_here": life.clients,
                "last_active_at": life.last_active or None,
                "last_cold_start_at": life.last_cold_start_at,
                "last_cold_start_seconds": life.last_cold_start_seconds,
                "requested_state": life.requested}

    def subscribe(self, listener: Callable[[LifecycleEvent], None]) -> None:
        """Call ``listener(event)`` on every cold start, failed wake and sleep (rare events,
        on the event loop; a listener must not block). The usage layer meters cold starts
        this way."""
        self._listeners.append(listener)

    def _emit(self, event: LifecycleEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("lifecycle listener failed")

    def _life(self, db: DatabaseRecord) -> _Life:
        key = (db.tenant, db.name)
        life = self._dbs.get(key)
        if life is None:
            life = self._dbs[key] = _Life(db.tenant, db.name, db.backend, db.state,
                                          last_active=db.last_active_at,
                                          changed_at=db.state_changed_at,
                                          last_cold_start_at=db.last_cold_start_at,
                                          last_cold_start_seconds=db.last_cold_start_seconds)
        return life

    # -- the connection path -----------------------------------------------------------------
    async def ready(self, session: Session) -> None:
        """The session's database is ready to serve, woken first if it sleeps. Raises
        ``NotReady`` when the wake fails or takes longer than ``wake_timeout``."""
        db, backend = session.db, session.backend
        if db is None or backend is None:
            return
        life = self._life(db)
        life.clients += 1
        life.last_active = time.time()
        life.dirty = True
        if life.state in ("active", "idle") or Capability.WAKE not in backend.capabilities:
            if life.state != "active":
                self._set_soon(life, "active")
            return
        task = life.wake
        if task is None:
            task = life.wake = asyncio.get_running_loop().create_task(
                self._wake(life, db, backend))
            task.add_done_callback(_retrieve)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.cfg.wake_timeout)
        except TimeoutError:
            life.clients -= 1
            self._timeouts.labels(backend.kind).inc()
            raise NotReady(
                Reason.UNAVAILABLE,
                f'database "{db.name}" is waking up and was not ready in time',
                detail=f"It was asleep (scaled to zero after {_idle_text(session)} without "
                       f"clients); waking it took longer than the gateway's wake timeout "
                       f"({format_duration(self.cfg.wake_timeout)}).",
                hint="Retry in a few seconds: the wake goes on, and the next connection is "
                     "served as soon as the database is ready.", retry_after=1.0) from None
        except asyncio.CancelledError:
            life.clients -= 1
            raise
        except Exception:
            life.clients -= 1
            raise NotReady(
                Reason.UNAVAILABLE, f'database "{db.name}" could not be woken up',
                detail="It was asleep (scaled to zero) and waking it failed; the gateway "
                       "logged why.",
                hint="Retry in a few seconds; if it keeps failing, contact the platform "
                     "operator.", retry_after=1.0) from None

    def released(self, session: Session) -> None:
        """An admitted session ended: activity tracking (no I/O here)."""
        db = session.db
        if db is None:
            return
        life = self._dbs.get((db.tenant, db.name))
        if life is None:
            return
        life.clients = max(0, life.clients - 1)
        life.last_active = time.time()
        life.dirty = True

    async def _wake(self, life: _Life, db: DatabaseRecord, backend: Backend) -> float:
        """The one wake of a database; every held client awaits this task."""
        started = time.monotonic()
        life.state = "waking"
        life.changed_at = time.time()
        log.info("waking database", extra={"tenant": db.tenant, "database": db.name,
                                           "backend": backend.name})
        try:
            async with asyncio.timeout(self.cfg.wake_timeout * WAKE_GIVE_UP):
                if life.sleeping is not None:  # the sleep in progress ends first
                    await life.sleeping.wait()
                await asyncio.gather(backend.wake(db), self._persist(life, "waking"))
        except BaseException as exc:
            life.state = "asleep"
            life.changed_at = time.time()
            life.wake = None
            self._wakes.labels(backend.kind, "failed").inc()
            log.warning("wake failed; the database stays asleep",
                        extra={"tenant": db.tenant, "database": db.name,
                               "backend": backend.name, "error": repr(exc),
                               "seconds": round(time.monotonic() - started, 3)})
            self._spawn(self._persist(life, "asleep"))
            self._emit(LifecycleEvent("wake_failed", db.tenant, db.name, backend.name,
                                      time.monotonic() - started))
            raise
        seconds = time.monotonic() - started
        life.state = "active"
        life.wake = None
        life.last_cold_start_at = time.time()
        life.last_cold_start_seconds = seconds
        life.changed_at = life.last_cold_start_at
        life.last_active = max(life.last_active, life.last_cold_start_at)  # a manual wake too
        life.dirty = True
        self._cold.labels(backend.kind).observe(seconds)
        self._wakes.labels(backend.kind, "ok").inc()
        log.info("cold start", extra={"tenant": db.tenant, "database": db.name,
                                      "backend": backend.name, "seconds": round(seconds, 4)})
        self._spawn(self._persist(life, "active", cold_start_seconds=seconds))
        self._emit(LifecycleEvent("cold_start", db.tenant, db.name, backend.name, seconds))
        return seconds

    def _set_soon(self, life: _Life, state: str) -> None:
        life.state = state
        life.changed_at = time.time()
        self._spawn(self._persist(life, state))

    async def _persist(self, life: _Life, state: str, **kw: Any) -> None:
        try:
            await self.ctx.store.transition(life.tenant, life.name, state, **kw)
        except Exception as exc:  # the scheduler writes it again at its next tick
            log.warning("could not record database state: %s", exc,
                        extra={"tenant": life.tenant, "database": life.name, "state": state})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- start, stop -------------------------------------------------------------------------
    async def load(self) -> None:
        """Reload every database's state (gateway start). An interrupted wake is asleep
        again; so is an active/idle database whose backend says nothing runs for it."""
        store = self.ctx.store
        for row in await store.database_states():
            life = self._adopt(row)
            backend = self.ctx.backends.get(row.backend)
            if row.state == "waking":
                life.state = "asleep"
                await store.transition(row.tenant, row.name, "asleep", expect=("waking",))
            elif (row.state in ("active", "idle") and backend is not None
                  and type(backend).running is not Backend.running):
                db = await store.get_database(row.tenant, row.name)
                if db is not None and await backend.running(db) is False:
                    life.state = "asleep"
                    await store.transition(row.tenant, row.name, "asleep")
                    log.info("nothing runs for this database: asleep",
                             extra={"tenant": row.tenant, "database": row.name})
        self._lease = self._make_lease()

    def _adopt(self, row: LifeRow) -> _Life:
        key = (row.tenant, row.name)
        life = self._dbs.get(key)
        if life is None:
            life = self._dbs[key] = _Life(row.tenant, row.name, row.backend, row.state)
        life.last_active = max(life.last_active, float(row.last_active_at or 0))
        life.changed_at = float(row.state_changed_at or 0)
        life.requested = row.requested_state
        life.last_cold_start_at = row.last_cold_start_at
        life.last_cold_start_seconds = row.last_cold_start_seconds
        return life

    def _make_lease(self) -> _Lease:
        state = self.ctx.state()
        if state is not None:
            # One lease per control plane: the gateways that share it compete, others
            # (another platform on the same Redis) do not.
            digest = hashlib.sha256(self.ctx.config.control.url.encode()).hexdigest()[:16]
            return _RedisLease(state, LEASE_KEY + digest, self.ctx.gateway_id,
                               self.cfg.lease_ttl)
        if self.ctx.store.dialect == "postgres":
            return _AdvisoryLease(self.ctx.store.url)
        return _Lease()

    async def close(self) -> None:
        """Record the last activity and give the lease up (gateway stop)."""
        for life in self._dbs.values():
            if life.wake is not None:
                life.wake.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(life.wake, 2)
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 2)
        with contextlib.suppress(Exception):
            await self._flush_activity(time.time())
        if self.leader:
            with contextlib.suppress(Exception):
                await self.ctx.store.lifecycle_heartbeat(self.ctx.gateway_id, stopping=True)
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.release()
        self.leader = False

    # -- the scheduler -----------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.check_every)
            try:
                await self.tick()
            except Exception:
                log.exception("lifecycle tick failed")

    async def tick(self) -> None:
        """One scheduler period (``run`` calls it every ``check_every``; tests call it)."""
        now = time.time()
        store = self.ctx.store
        await self._flush_activity(now)
        rows = await store.database_states()
        seen = set()
        for row in rows:
            seen.add((row.tenant, row.name))
            await self._follow(row)
        for key in [k for k in self._dbs if k not in seen]:  # deleted databases
            if self._dbs[key].wake is None:
                del self._dbs[key]
        if self._lease is None:
            self._lease = self._make_lease()
        self.leader = await self._lease.hold()
        if not self.leader:
            return
        await store.lifecycle_heartbeat(self.ctx.gateway_id)
        tiers = {t.slug: self.ctx.directory.tier(t.tier) for t in await store.list_tenants()}
        for row in rows:
            await self._decide(row, tiers, now)

    async def _flush_activity(self, now: float) -> None:
        """Write client activity: a database whose client left at once (exact time), one
        with clients every ``TOUCH_EVERY`` periods (a replica's clients keep it awake)."""
        touched = []
        every = TOUCH_EVERY * self.cfg.check_every
        for life in self._dbs.values():
            if life.clients > 0:
                life.last_active = now
                if now - life.written_at >= every:
                    life.dirty = True
            if life.dirty:
                touched.append(life)
        if touched:
            await self.ctx.store.touch_databases(
                [(life.tenant, life.name, life.last_active) for life in touched])
            for life in touched:
                life.dirty = False
                life.written_at = now

    async def _follow(self, row: LifeRow) -> None:
        """Adopt the control plane's state; a sleep decided elsewhere releases what this
        gateway holds for the database too."""
        key = (row.tenant, row.name)
        life = self._dbs.get(key)
        if life is not None and (life.wake is not None
                                 or float(row.state_changed_at or 0) < life.changed_at):
            # This gateway is waking it, or changed it after the row was written (its own
            # write is on the way): the local state wins.
            life.last_active = max(life.last_active, float(row.last_active_at or 0))
            life.requested = row.requested_state
            return
        before = life.state if life is not None else None
        life = self._adopt(row)
        if row.state == "asleep" and before not in (None, "asleep"):
            if life.clients > 0:  # a client arrived here as it was put to sleep
                self._set_soon(life, "active")
                return
            life.state = "asleep"
            await self._sleep_locally(row)
            return
        if before == "active" and life.clients > 0 and row.state != "active":
            self._set_soon(life, "active")
            return
        life.state = row.state

    async def _sleep_locally(self, row: LifeRow) -> None:
        backend = self.ctx.backends.get(row.backend)
        if backend is None or Capability.SLEEP not in backend.capabilities:
            return
        db = await self.ctx.store.get_database(row.tenant, row.name)
        if db is None:
            return
        try:
            await backend.sleep(db)
        except Exception as exc:
            log.warning("releasing a sleeping database's upstream resources failed: %s", exc,
                        extra={"tenant": row.tenant, "database": row.name})

    async def _decide(self, row: LifeRow, tiers: dict[str, Tier], now: float) -> None:
        life = self._dbs.get((row.tenant, row.name))
        if life is None or life.wake is not None:
            return
        backend = self.ctx.backends.get(row.backend)
        if backend is None:
            return  # a backend this config does not define: not ours to manage
        if life.requested is not None:
            await self._apply_request(life, backend)
            return
        if not self.cfg.enabled or life.clients > 0 or life.state in ("asleep", "waking"):
            return
        since = max(life.last_active, self.started_at)  # never used: from gateway start
        quiet = now - since
        tier = tiers.get(row.tenant)
        idle = tier.idle_before_sleep if tier is not None else None
        if idle is not None and Capability.SLEEP in backend.capabilities and quiet >= idle:
            await self._sleep(life, backend, expect=("active", "idle"),
                              quiet_since=now - idle, why=f"no client for {quiet:.1f}s")
        elif (life.state == "active" and quiet >= IDLE_AFTER_TICKS * self.cfg.check_every
              and await self.ctx.store.transition(life.tenant, life.name, "idle",
                                                  expect=("active",),
                                                  quiet_since=since + 1e-6)):
            life.state = "idle"
            life.changed_at = now

    async def _sleep(self, life: _Life, backend: Backend, *, why: str, **cas: Any) -> bool:
        store = self.ctx.store
        if not await store.transition(life.tenant, life.name, "asleep", clear_request=True,
                                      **cas):
            return False  # a client came (here or elsewhere) or another replica won
        if life.clients > 0:  # one arrived here while the row was being changed
            await store.transition(life.tenant, life.name, "active")
            life.state = "active"
            return False
        previous, life.state, life.requested = life.state, "asleep", None
        life.changed_at = time.time()
        life.sleeping = done = asyncio.Event()
        try:
            db = await store.get_database(life.tenant, life.name)
            if db is not None:
                await backend.sleep(db)
        except Exception as exc:
            log.warning("sleep failed; the database stays idle",
                        extra={"tenant": life.tenant, "database": life.name,
                               "backend": backend.name, "error": repr(exc)})
            if life.wake is None:  # else the wake that waited for this sets the state
                life.state = "idle" if previous != "active" else previous
                await store.transition(life.tenant, life.name, life.state)
            return False
        finally:
            life.sleeping = None
            done.set()
        self._sleeps.labels(backend.kind).inc()
        log.info("database asleep", extra={"tenant": life.tenant, "database": life.name,
                                           "backend": backend.name, "why": why})
        self._emit(LifecycleEvent("sleep", life.tenant, life.name, backend.name))
        return True

    async def _apply_request(self, life: _Life, backend: Backend) -> None:
        """``ogelkit databases sleep|wake``, asked through the control plane."""
        want = life.requested
        if want == "asleep":
            if life.state == "asleep" or Capability.SLEEP not in backend.capabilities:
                await self.ctx.store.transition(life.tenant, life.name, life.state,
                                                clear_request=True)
                life.requested = None
                return
            await self._sleep(life, backend, why="requested")
            return
        # "active": wake it now, as a client would
        life.requested = None
        if life.state in ("asleep", "waking") and Capability.WAKE in backend.capabilities:
            db = await self.ctx.store.get_database(life.tenant, life.name)
            if db is not None:
                await self.ctx.store.request_database_state(life.tenant, life.name, None)
                task = life.wake = asyncio.get_running_loop().create_task(
                    self._wake(life, db, backend))
                task.add_done_callback(_retrieve)
                return
        await self.ctx.store.transition(life.tenant, life.name,
                                        "active" if life.state in ("asleep", "waking")
                                        else life.state, clear_request=True)


def _idle_text(session: Session) -> str:
    idle = session.tier.idle_before_sleep if session.tier is not None else None
    return format_duration(idle) if idle is not None else "its idle time"


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a wake's exception as seen (held clients may all have timed out)."""
    if not task.cancelled():
        task.exception()


# -- who runs the scheduler ----------------------------------------------------------------


class _Lease:
    """The SQLite control plane serves one gateway: it always runs the scheduler."""

    async def hold(self) -> bool:
        return True

    async def release(self) -> None:
        pass


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class _RedisLease(_Lease):
    """``SET key me NX PX ttl``, renewed every tick while held (several replicas)."""

    def __init__(self, redis: Any, key: str, me: str, ttl: float):
        self.redis = redis
        self.key = key
        self.me = me
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.down = False

    async def hold(self) -> bool:
        try:
            if await self.redis.set(self.key, self.me, nx=True, px=self.ttl_ms):
                held = True
            else:
                held = bool(await self.redis.eval(_RENEW, 1, self.key, self.me, self.ttl_ms))
        except Exception as exc:  # no lease while Redis is down: nothing is put to sleep
            if not self.down:
                log.warning("lifecycle lease unavailable (shared state down): %s", exc)
            self.down = True
            return False
        self.down = False
        return held

    async def release(self) -> None:
        await self.redis.eval(_RELEASE, 1, self.key, self.me)


class _AdvisoryLease(_Lease):
    """A session advisory lock on the PostgreSQL control plane, held on a connection of
    its own: the lock goes with the connection if this gateway dies."""

    def __init__(self, url: str):
        self.url = url
        self.conn: Any = None

    async def hold(self) -> bool:
        import asyncpg

        try:
            if self.conn is not None and not self.conn.is_closed():
                await self.conn.fetchval("SELECT 1")
                return True
            self.conn = await asyncpg.connect(self.url, timeout=5)
            if await self.conn.fetchval("SELECT pg_try_advisory_lock($1)", ADVISORY_KEY):
                return True
        except Exception as exc:
            log.warning("lifecycle advisory lock unavailable: %s", exc)
        await self.release()
        return False

    async def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)


__all__ = ["STATES", "Lifecycle", "LifecycleEvent", "NotReady"]
