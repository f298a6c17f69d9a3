"""Delivery: batching, retries with the same ids, replays, bounded memory, shutdown flush,
storage snapshots."""

from __future__ import annotations

import logging
import time

import anyio
import pytest

import ogelkit
from ogelkit.chain import Chain
from ogelkit.control.records import DatabaseRecord
from ogelkit.testing import make_operation, make_session

pytestmark = pytest.mark.anyio

EVER = (0.0, 4e9)


class FlakyStore:
    """The real store behind a fault injector: ``fail`` writes raise before touching the
    store; ``lost_acks`` writes are committed and *then* raise (a lost acknowledgement)."""

    def __init__(self, inner, *, fail: int = 0, lost_acks: int = 0):
        self.inner = inner
        self.fail = fail
        self.lost_acks = lost_acks
        self.attempts: list[tuple[float, list[str]]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def record_usage(self, events):
        events = list(events)
        self.attempts.append((time.monotonic(), [e.id for e in events]))
        if self.fail > 0:
            self.fail -= 1
            raise ConnectionError("control plane unreachable")
        new = await self.inner.record_usage(events)
        if self.lost_acks > 0:
            self.lost_acks -= 1
            raise TimeoutError("acknowledgement lost")
        return new


async def ops(ctx, chain, n, tenant="acme", database="main", *, keep_open=False):
    """A client session that runs ``n`` operations (and disconnects unless keep_open)."""
    s = make_session(ctx, tenant=tenant, database=database)
    await chain.connect(s)
    for _ in range(n):
        op = make_operation(s)
        op.ended = op.started + 0.001
        chain.complete(op)
    if not keep_open:
        s.closed_at = time.monotonic()
        chain.disconnect(s)
    return s


async def until(predicate, within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


async def operations(ctx, tenant="acme"):
    return sum(t["operations"] for t in await ctx.store.usage_totals(tenant, *EVER))


async def test_a_lost_acknowledgement_is_replayed_without_double_counting(make_usage, control_url):
    async with make_usage(control_url=control_url) as (ctx, layer):
        chain = Chain([layer])
        flaky = ctx.store = FlakyStore(ctx.store, lost_acks=1)
        await ops(ctx, chain, 25)
        assert not await layer.flush()  # stored, but the layer could not know
        assert layer.describe()["pending"] == 2  # its operation and connection events
        assert await layer.flush()  # the same batch again: the store keeps it once
        first, second = (ids for _, ids in flaky.attempts)
        assert first == second
        assert await operations(ctx) == 25
        assert await ctx.store.count_usage_events("acme") == 2


async def test_failed_writes_keep_their_ids_and_back_off(make_usage):
    body = 'flush_interval = "100ms"\nretry_backoff = "50ms"\nmax_backoff = "150ms"\n'
    async with make_usage(body) as (ctx, layer):
        chain = Chain([layer])
        flaky = ctx.store = FlakyStore(ctx.store, fail=4)
        await ops(ctx, chain, 7)
        async with anyio.create_task_group() as tg:
            tg.start_soon(layer.run)
            await until(lambda: layer.describe()["flushed"] > 0)
            tg.cancel_scope.cancel()
        first_ids = flaky.attempts[0][1]
        assert all(ids[:len(first_ids)] == first_ids for _, ids in flaky.attempts[:5])
        gaps = [b[0] - a[0] for a, b in zip(flaky.attempts, flaky.attempts[1:5], strict=False)]
        # 50 ms, 100 ms, then capped at 150 ms (a window cut may wake the loop, never sooner).
        assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.145 and gaps[3] >= 0.145
        assert await operations(ctx) == 7
        assert layer.describe()["write_failures"] == 4


async def test_the_loop_cuts_windows_and_early_when_batch_size_keys_are_open(make_usage):
    async with make_usage('flush_interval = "60s"\nbatch_size = 3\n') as (ctx, layer):
        chain = Chain([layer])
        async with anyio.create_task_group() as tg:
            tg.start_soon(layer.run)
            await ops(ctx, chain, 5, tenant="t1", keep_open=True)
            await ops(ctx, chain, 5, tenant="t2", keep_open=True)
            await anyio.sleep(0.1)
            assert layer.describe()["flushed"] == 0  # two keys: the 60 s window stays open
            # The third tenant's operation event is the third open key: batch_size.
            await ops(ctx, chain, 5, tenant="t3", keep_open=True)
            await until(lambda: layer.describe()["flushed"] >= 3, 2)
            tg.cancel_scope.cancel()
        for tenant in ("t1", "t2", "t3"):
            assert await operations(ctx, tenant) == 5


async def test_beyond_max_pending_the_oldest_are_dropped_loudly(make_usage, caplog):
    async with make_usage("max_pending = 3\n") as (ctx, layer):
        chain = Chain([layer])
        ctx.store = FlakyStore(ctx.store, fail=10**6)
        for i in range(5):
            await ops(ctx, chain, i + 1, tenant=f"t{i}")
            await anyio.sleep(0.002)  # distinct window-open times: t0 is the oldest
        with caplog.at_level(logging.ERROR, logger="ogelkit.layer.usage"), \
                caplog.at_level(logging.ERROR, logger="ogelkit.hooks"):
            assert not await layer.flush()
        # 10 events (an operation and a connection event per tenant), 3 kept: the oldest 7 go.
        assert layer.describe()["pending"] == 3 and layer.describe()["dropped"] == 7
        (record,) = [r for r in caplog.records if r.getMessage() == "usage events dropped"]
        assert record.events == 7 and record.amounts["operations"] == 1 + 2 + 3 + 4
        assert record.amounts["connections"] == 3
        assert record.operations_by_tenant == {"t0": 1, "t1": 2, "t2": 3, "t3": 4}
        assert "max_pending" in record.why
        assert b"ogelkit_usage_events_dropped_total 7.0" in ctx.metrics.render()
        assert b"ogelkit_usage_events_pending 3.0" in ctx.metrics.render()


async def test_close_flushes_live_connections_and_everything_pending(make_usage, control_url):
    async with make_usage('flush_interval = "60s"\n', control_url=control_url) as (ctx, layer):
        chain = Chain([layer])
        s = make_session(ctx)
        await chain.connect(s)
        await ops(ctx, chain, 40)
        ctx.store = FlakyStore(ctx.store, fail=2)  # still failing when the drain ends
        await anyio.sleep(0.05)
        started = time.monotonic()
        await layer.close()
        assert time.monotonic() - started < 3
        ((total),) = await ctx.store.usage_totals("acme", *EVER)
        assert total["operations"] == 40 and total["connections"] == 2
        assert total["connection_seconds"] >= 0.05
        assert layer.describe()["pending"] == 0 and layer.describe()["dropped"] == 0


async def test_close_gives_up_after_close_timeout_and_says_what_was_lost(make_usage, caplog):
    async with make_usage('close_timeout = "300ms"\n') as (ctx, layer):
        chain = Chain([layer])
        await ops(ctx, chain, 12)
        ctx.store = FlakyStore(ctx.store, fail=10**6)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="ogelkit.layer.usage"), \
                caplog.at_level(logging.ERROR, logger="ogelkit.hooks"):
            await layer.close()
        assert 0.25 < time.monotonic() - started < 2
        (record,) = [r for r in caplog.records if r.getMessage() == "usage events dropped"]
        assert record.amounts["operations"] == 12 and "shutdown" in record.why


class Disk(ogelkit.Backend):
    """A backend reporting storage (the Postgres one runs pg_database_size end to end)."""

    type_name = "disk"
    protocol = "disk"

    async def storage_bytes(self, db):
        if db.name == "broken":
            raise OSError("upstream down")
        return 1000 * len(db.name)


async def test_storage_snapshots_all_databases_or_active_ones(make_usage, caplog):
    async with make_usage() as (ctx, layer):
        ctx.backends["disk"] = Disk(None, name="disk", context=ctx)
        await ctx.store.create_tenant("acme", "free")
        for name, backend in (("main", "disk"), ("archive", "disk"), ("broken", "disk"),
                              ("elsewhere", "other-gateways-backend")):
            await ctx.store.put_database(DatabaseRecord("acme", name, "disk", backend))
        with caplog.at_level(logging.WARNING, logger="ogelkit.layer.usage"):
            assert await layer.snapshot_storage() == 2
            assert await layer.snapshot_storage() == 2  # same window: a max, not a sum
        assert len([r for r in caplog.records if r.getMessage() == "storage_bytes failed"]) == 2
        assert await layer.flush()
        by_db = {t.database: t for t in await ctx.store.usage_totals("acme", *EVER)}
        assert by_db["main"]["storage_bytes"] == 4000
        assert by_db["archive"]["storage_bytes"] == 7000
        assert "broken" not in by_db and "elsewhere" not in by_db

    async with make_usage('storage_scope = "active"\nstorage_interval = "50ms"\n') as (ctx, layer):
        ctx.backends["disk"] = Disk(None, name="disk", context=ctx)
        s = make_session(ctx, tenant="zeta", database="live")
        s.db = DatabaseRecord("zeta", "live", "disk", "disk")
        s.backend = ctx.backends["disk"]
        await Chain([layer]).connect(s)
        async with anyio.create_task_group() as tg:
            tg.start_soon(layer.run)
            await until(lambda: layer.describe()["storage_snapshots"] >= 2, 2)
            tg.cancel_scope.cancel()
        assert await layer.flush()
        (live,) = await ctx.store.usage_totals("zeta", *EVER)
        assert live.database == "live" and live["storage_bytes"] == 4000


class BrokenExporter:
    @ogelkit.hookimpl
    def ogelkit_usage_flushed(self, context, events):
        raise RuntimeError("exporter bug")


async def test_a_broken_exporter_or_loop_bug_does_not_stop_metering(make_usage, caplog):
    body = 'flush_interval = "50ms"\nretry_backoff = "50ms"\n'
    async with make_usage(body, extra_plugins=[("broken", BrokenExporter())]) as (ctx, layer):
        chain = Chain([layer])
        real_cut, calls = layer._cut, []

        def cut_failing_once(now):
            calls.append(now)
            if len(calls) == 1:
                raise RuntimeError("bug in a cut")
            return real_cut(now)

        layer._cut = cut_failing_once
        with caplog.at_level(logging.ERROR, logger="ogelkit.layer.usage"), \
                caplog.at_level(logging.ERROR, logger="ogelkit.hooks"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(layer.run)
                await ops(ctx, chain, 9)
                await until(lambda: layer.describe()["flushed"] >= 2)
                tg.cancel_scope.cancel()
        assert await operations(ctx) == 9
        messages = [r.getMessage() for r in caplog.records]
        assert "usage flush loop failed; restarting it" in messages
        assert any(r.getMessage() == "plugin hook failed" and r.hook == "ogelkit_usage_flushed"
                   for r in caplog.records)
