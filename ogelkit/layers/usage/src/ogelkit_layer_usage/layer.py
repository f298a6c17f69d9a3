"""The usage layer: meter every operation and connection, deliver idempotent usage events.

Nothing is written per operation. Amounts are aggregated in memory per
(tenant, database, kind) in the current *window*; each key's ``UsageEvent`` gets its id when
the window opens for it. Every ``flush_interval`` the window is cut: its events move to the
pending queue and are written to the control plane in batches. A failed write keeps the
batch (same ids) and retries with back-off, so a batch that was stored but not acknowledged
is deduplicated by the store instead of counted twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from ogelkit import USAGE_FIELDS, Capability, Layer, Reason, UsageEvent
from ogelkit_layer_usage.options import UsageOptions

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, Operation, Session

log = logging.getLogger("ogelkit.layer.usage")

GIB = float(1024**3)

#: Upstream error codes that mean "stopped by a deadline": Postgres statement_timeout
#: (SQLSTATE 57014) and MongoDB maxTimeMS (code 50). Redis has no server-side deadline.
TIMEOUT_ERRORS = frozenset({"57014", "50", "MaxTimeMSExpired"})

#: Rejection reasons with a counter of their own (tier advice reads them).
REASON_FIELDS = {
    Reason.CONNECTIONS: "rejected_connections",
    Reason.RATE: "rejected_rate",
    Reason.COST: "rejected_cost",
    Reason.BANNED: "banned",
}

_AMOUNTS = tuple(f for f in USAGE_FIELDS if f != "storage_bytes")


class _Meter:
    """Per admitted session: where its amounts go in the current window."""

    __slots__ = ("accounted", "counted", "database", "factor", "memory", "ops", "ops_epoch",
                 "session", "tenant")

    def __init__(self, session: Session, tenant: str, database: str, factor: float,
                 memory: float, now: float):
        self.session = session
        self.tenant = tenant
        self.database = database
        self.factor = factor  # vCPU share of an operation's duration
        self.memory = memory  # GB counted per second of connection
        self.ops: UsageEvent | None = None
        self.ops_epoch = -1
        self.accounted = now  # connection time is metered up to here
        self.counted = False  # the connection itself is counted once, in its first window


class UsageLayer(Layer[UsageOptions]):
    """O7s layer 6: usage metering and durable, idempotent delivery."""

    type_name = "usage"
    batches = True  # a batch counts op.count operations
    Config = UsageOptions

    def __init__(self, config: UsageOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        self.options = config
        self._slot = f"usage:{name}"
        self._open: dict[tuple[str, str, str], UsageEvent] = {}
        self._pending: deque[UsageEvent] = deque()
        self._live: set[_Meter] = set()
        self._epoch = 0
        self._window_started = time.monotonic()
        self._wake: anyio.Event | None = None
        self._backoff = config.retry_backoff
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._closed = False
        self.flushed = 0
        self.dropped = 0
        self.write_failures = 0
        self.storage_snapshots = 0
        self.last_storage_at: float | None = None

    def reconfigure(self, options: UsageOptions) -> None:
        """Config reload: windows, batches, retries and limits apply from now on; a
        connection's CPU factor and memory figure are the ones it was admitted with."""
        if (options.storage_interval > 0) != (self.options.storage_interval > 0):
            raise ValueError("storage_interval turns storage sampling on or off: restart to "
                             "change that")
        self.config = self.options = options
        self._backoff = options.retry_backoff
        if self._wake is not None:
            self._wake.set()  # the flush loop picks up a new flush_interval now

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        self._wake = anyio.Event()
        self._window_started = time.monotonic()
        lifecycle = getattr(self.context, "lifecycle", None)
        if lifecycle is not None:  # cold starts are announced by the core's lifecycle
            lifecycle.subscribe(self._on_lifecycle)

    def _on_lifecycle(self, event: Any) -> None:
        """A ``LifecycleEvent``: a cold start is metered on the woken database."""
        if event.kind == "cold_start" and not self._closed:
            ev = self._event(event.tenant, event.database, "lifecycle")
            ev.cold_starts += 1
            ev.cold_start_seconds += event.seconds

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.options.storage_interval > 0:
                tg.start_soon(self._storage_loop)
            while True:
                try:
                    await self._flush_loop()
                except Exception:  # a bug here must not take the gateway down: log, go on
                    log.exception("usage flush loop failed; restarting it",
                                  extra={"layer": self.name})
                    await anyio.sleep(self.options.retry_backoff)

    async def close(self) -> None:
        """Cut the last window (live connections up to now) and write everything left,
        retrying until ``close_timeout``; whatever is still unwritten is logged as dropped."""
        self._closed = True
        now = time.monotonic()
        self._cut(now)
        deadline = now + self.options.close_timeout
        backoff = self.options.retry_backoff
        while self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ok = False
            with anyio.move_on_after(remaining):
                ok = await self._write_next_batch()
            if not ok:
                await anyio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff = min(backoff * 2, self.options.max_backoff)
        if self._pending:
            self._drop(len(self._pending), "shutdown: the control plane did not accept them "
                                           "within close_timeout")

    # -- phases ------------------------------------------------------------------------------
    async def on_connect(self, session: Session) -> None:
        meter = self._meter(session)
        if meter is not None:
            self._live.add(meter)

    def on_complete(self, op: Operation) -> None:
        session = op.session
        meter = session.state.get(self._slot)
        if meter is None:
            # Operations of a session this layer never saw connect (layer added late, or
            # placed after a layer that admits in on_connect without error): meter anyway.
            meter = self._meter(session)
            if meter is None:
                return
            self._live.add(meter)
        ev = meter.ops
        if ev is None or meter.ops_epoch != self._epoch:
            ev = meter.ops = self._event(meter.tenant, meter.database, "operation")
            meter.ops_epoch = self._epoch
        rej = op.rejection
        if rej is None or rej.reason == Reason.TIMEOUT:
            # Executed (a timed-out operation ran upstream until it was stopped: billed).
            ended = op.ended
            duration = (ended if ended is not None else time.monotonic()) - op.started
            ev.operations += op.count  # a batch's requests, its wall time once
            ev.duration += duration
            ev.vcpu_seconds += duration * meter.factor
            err = op.error
            if rej is not None:
                ev.timeouts += 1
            elif err is not None:
                ev.errors += op.failed or 1
                if err in TIMEOUT_ERRORS:
                    ev.timeouts += 1
        else:
            ev.rejected += op.count
            field = REASON_FIELDS.get(rej.reason)
            if field is not None:
                setattr(ev, field, getattr(ev, field) + op.count)
        ev.bytes_in += op.size
        ev.bytes_out += op.bytes_out
        rows = op.rows
        if rows:
            ev.rows += rows
        written = op.written
        if written:
            ev.written += written

    def on_disconnect(self, session: Session) -> None:
        meter = session.state.pop(self._slot, None)
        if meter is not None:
            self._live.discard(meter)
            end = session.closed_at if session.closed_at is not None else time.monotonic()
            self._accrue(meter, end)
            return
        # Never admitted through this layer: a refused connection.
        rej = session.rejection
        tenant = session.tenant_slug
        if rej is None or tenant is None:
            return  # unknown tenants are not metered (nothing to bill, names unbounded)
        # Only routed sessions name a real database; a claimed name could be anything.
        database = (session.database or "") if session.db is not None else ""
        ev = self._event(tenant, database, "connection")
        if rej.reason == Reason.AUTH:
            ev.auth_failures += 1
            return
        ev.rejected += 1
        field = REASON_FIELDS.get(rej.reason)
        if field is not None:
            setattr(ev, field, getattr(ev, field) + 1)

    def on_tier_change(self, session: Session) -> None:
        meter = session.state.get(self._slot)
        if meter is not None:
            # Time so far is billed at the old tier's memory, from now on at the new one.
            self._accrue(meter, time.monotonic())
            meter.memory = self._memory_gb(session)

    # -- aggregation -------------------------------------------------------------------------
    def _meter(self, session: Session) -> _Meter | None:
        tenant = session.tenant_slug
        if tenant is None:
            return None
        backend = session.backend
        factors = self.options.cpu_factor
        factor = 1.0
        if backend is not None:
            factor = factors.get(backend.name, factors.get(backend.kind, 1.0))
        meter = _Meter(session, tenant, session.database or "", factor,
                       self._memory_gb(session), time.monotonic())
        session.state[self._slot] = meter
        return meter

    def _memory_gb(self, session: Session) -> float:
        per_connection = self.options.memory_per_connection
        if per_connection == "work_mem":
            tier = session.tier
            return (tier.work_mem or 0) / GIB if tier is not None else 0.0
        return per_connection / GIB

    def _event(self, tenant: str, database: str, kind: str) -> UsageEvent:
        key = (tenant, database, kind)
        ev = self._open.get(key)
        if ev is None:
            # The id is fixed here, when the window opens for this key.
            ev = UsageEvent(tenant, database, kind, gateway=self.context.gateway_id)
            self._open[key] = ev
            if len(self._open) >= self.options.batch_size and self._wake is not None:
                self._wake.set()
        return ev

    def _accrue(self, meter: _Meter, now: float) -> None:
        seconds = max(0.0, now - meter.accounted)
        ev = self._event(meter.tenant, meter.database, "connection")
        if not meter.counted:
            ev.connections += 1
            meter.counted = True
        ev.connection_seconds += seconds
        ev.gb_seconds += seconds * meter.memory
        meter.accounted = max(meter.accounted, now)

    def _take_compute_seconds(self) -> None:
        """Compute time of databases with a compute of their own (Neon), once a window."""
        for backend in self.context.backends.values():
            try:
                taken = backend.compute_seconds()
            except Exception:  # a broken backend must not stop metering the others
                log.exception("compute_seconds() of backend %s failed", backend.name)
                continue
            for (tenant, database), seconds in taken.items():
                self._event(tenant, database, "compute").compute_seconds += seconds

    def _cut(self, now: float) -> int:
        """Close the window: bill live connections up to now, queue the window's events."""
        for meter in list(self._live):
            self._accrue(meter, now)
        self._take_compute_seconds()
        events = list(self._open.values())
        self._open = {}
        self._epoch += 1
        self._window_started = now
        self._pending.extend(events)
        excess = len(self._pending) - self.options.max_pending
        if excess > 0:
            self._drop(excess, "the control plane is not accepting writes and max_pending "
                               "events are waiting")
        self.context.metrics.usage_pending.set(len(self._pending))
        return len(events)

    # -- delivery ----------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        interval = self.options.flush_interval
        while True:
            now = time.monotonic()
            wake_at = self._window_started + interval
            if self._pending:
                wake_at = min(wake_at, max(self._retry_at, now))
            if wake_at > now:
                assert self._wake is not None
                with anyio.move_on_after(wake_at - now):
                    await self._wake.wait()
                self._wake = anyio.Event()
            now = time.monotonic()
            if (now >= self._window_started + interval
                    or len(self._open) >= self.options.batch_size):
                self._cut(now)
            while self._pending and time.monotonic() >= self._retry_at:
                if not await self._write_next_batch():
                    self._retry_at = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, self.options.max_backoff)

    async def flush(self) -> bool:
        """Cut the window now and try to write every pending event once (tests, admin)."""
        self._cut(time.monotonic())
        while self._pending:
            if not await self._write_next_batch():
                return False
        return True

    async def _write_next_batch(self) -> bool:
        batch = [self._pending[i] for i in range(min(self.options.batch_size,
                                                     len(self._pending)))]
        try:
            await self.context.store.record_usage(batch)
        except Exception as exc:
            self.write_failures += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("usage write failed, keeping the batch and retrying",
                            extra={"layer": self.name, "events": len(batch),
                                   "pending": len(self._pending), "error": repr(exc)})
            return False
        # Only now are they durable: drop exactly this batch (normally the queue's head).
        pending = self._pending
        for ev in batch:
            if pending and pending[0] is ev:
                pending.popleft()
            else:  # the head moved meanwhile (events dropped over max_pending)
                with contextlib.suppress(ValueError):
                    pending.remove(ev)
        if self._down_since is not None:
            log.warning("usage writes work again", extra={
                "layer": self.name, "outage_seconds": round(time.monotonic() - self._down_since, 3),
                "pending": len(self._pending)})
            self._down_since = None
        self._backoff = self.options.retry_backoff
        self._retry_at = 0.0
        self.flushed += len(batch)
        metrics = self.context.metrics
        metrics.usage_flushed.inc(len(batch))
        metrics.usage_pending.set(len(self._pending))
        # An exporter's bug must not stop metering: the facade logs and skips it.
        self.context.hooks.fire("ogelkit_usage_flushed", context=self.context,
                                events=[e.as_dict() for e in batch])
        return True

    def _drop(self, count: int, why: str) -> None:
        """Give up the ``count`` oldest pending events, loudly: amounts go to the log."""
        dropped = [self._pending.popleft() for _ in range(min(count, len(self._pending)))]
        if not dropped:
            return
        totals = {f: 0.0 for f in _AMOUNTS}
        per_tenant: dict[str, int] = {}
        for ev in dropped:
            for f in _AMOUNTS:
                totals[f] += getattr(ev, f)
            per_tenant[ev.tenant] = per_tenant.get(ev.tenant, 0) + ev.operations
        self.dropped += len(dropped)
        self.context.metrics.usage_dropped.inc(len(dropped))
        self.context.metrics.usage_pending.set(len(self._pending))
        log.error("usage events dropped", extra={
            "layer": self.name, "why": why, "events": len(dropped),
            "first_ts": min(e.ts for e in dropped), "last_ts": max(e.ts for e in dropped),
            "amounts": {k: round(v, 6) for k, v in totals.items() if v},
            "operations_by_tenant": dict(sorted(per_tenant.items())[:50]),
            "tenants": len(per_tenant)})

    # -- storage snapshots -------------------------------------------------------------------
    async def _storage_loop(self) -> None:
        while True:
            try:
                await self.snapshot_storage()
            except Exception:
                log.exception("storage snapshot failed", extra={"layer": self.name})
            await anyio.sleep(self.options.storage_interval)

    async def snapshot_storage(self) -> int:
        """Record ``backend.storage_bytes(db)`` for the databases in ``storage_scope``;
        returns how many databases were measured."""
        databases: list[DatabaseRecord]
        if self.options.storage_scope == "active":
            seen: dict[tuple[str, str], DatabaseRecord] = {}
            for meter in self._live:
                db = meter.session.db
                if db is not None:
                    seen[(db.tenant, db.name)] = db
            databases = list(seen.values())
        else:
            databases = await self.context.store.list_databases()
        measured = 0
        failed: set[str] = set()
        for db in databases:
            backend = self.context.backends.get(db.backend)
            if backend is None or Capability.STORAGE_BYTES not in backend.capabilities:
                continue
            try:
                with anyio.fail_after(30):
                    size = await backend.storage_bytes(db)
            except Exception as exc:
                if db.backend not in failed:  # once per backend per round, not per database
                    failed.add(db.backend)
                    log.warning("storage_bytes failed", extra={
                        "layer": self.name, "backend": db.backend, "error": repr(exc)})
                continue
            if size is None:
                continue
            ev = self._event(db.tenant, db.name, "storage")
            ev.storage_bytes = max(ev.storage_bytes, int(size))
            measured += 1
        self.storage_snapshots += 1
        self.last_storage_at = time.time()
        return measured

    # -- introspection -----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"open_keys": len(self._open), "pending": len(self._pending),
                "live_sessions": len(self._live), "flushed": self.flushed,
                "dropped": self.dropped, "write_failures": self.write_failures,
                "store_down": self._down_since is not None, "closed": self._closed,
                "flush_interval": self.options.flush_interval,
                "storage_snapshots": self.storage_snapshots,
                "last_storage_at": self.last_storage_at}
