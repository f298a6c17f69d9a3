"""The usage layer driven directly through a Chain: what is metered, and how."""

from __future__ import annotations

import time

import pytest
from ogelkit_layer_usage import UsageLayer

import ogelkit
from ogelkit.chain import Chain
from ogelkit.control.records import DatabaseRecord
from ogelkit.model import Reason, Reject, Session
from ogelkit.testing import make_operation, make_session
from ogelkit.testing.contracts import LayerContract

pytestmark = pytest.mark.anyio

MB = 1024**2
GIB = 1024**3
EVER = (0.0, 4e9)


class Capture:
    """An exporter plugin: what ogelkit_usage_flushed hands out."""

    def __init__(self):
        self.batches: list[list[dict]] = []

    @ogelkit.hookimpl
    def ogelkit_usage_flushed(self, context, events):
        self.batches.append(events)


class PgLike(ogelkit.Backend):
    type_name = "pglike"
    protocol = "pglike"


async def totals(ctx, tenant="acme"):
    return {t.database: t for t in await ctx.store.usage_totals(tenant, *EVER)}


def done(op, seconds=0.01):
    op.ended = op.started + seconds
    return op


class TestUsageContract(LayerContract):
    layer_class = UsageLayer
    options = {"flush_interval": "1s", "cpu_factor": {"postgres": 0.5},
               "memory_per_connection": "work_mem"}
    never_refuses = True  # metering only: the contract checks it refuses nothing


async def test_every_outcome_is_metered_per_database_and_stored_exactly(make_usage, control_url):
    capture = Capture()
    async with make_usage(control_url=control_url,
                          extra_plugins=[("capture", capture)]) as (ctx, layer):
        chain = Chain([layer])
        s = make_session(ctx, tenant="acme", tier="free", database="main")
        await chain.connect(s)
        for _ in range(10):
            op = done(make_operation(s, size=20))
            op.bytes_out, op.rows = 100, 2
            chain.complete(op)
        w = done(make_operation(s, "INSERT", "INSERT ...", size=50))
        w.written = 5
        chain.complete(w)
        for reason in (Reason.RATE, Reason.COST, Reason.BANNED, Reason.QUOTA):
            rejected = make_operation(s, size=10)
            rejected.rejection = Reject(reason, "no", layer="x")
            chain.complete(rejected)
        failed = done(make_operation(s))
        failed.error = "42P01"
        chain.complete(failed)
        upstream_timeout = done(make_operation(s), 2.0)
        upstream_timeout.error = "57014"
        chain.complete(upstream_timeout)
        gateway_timeout = done(make_operation(s), 3.0)
        gateway_timeout.rejection = Reject(Reason.TIMEOUT, "deadline", layer="timeout")
        chain.complete(gateway_timeout)

        other = make_session(ctx, tenant="acme", database="cache")
        await chain.connect(other)
        chain.complete(done(make_operation(other, "GET", None, kind="command", size=7)))
        for session in (s, other):
            session.closed_at = time.monotonic()
            chain.disconnect(session)

        assert await layer.flush()
        main, cache = (await totals(ctx))["main"], (await totals(ctx))["cache"]
        assert main["operations"] == 14  # 10 + insert + error + two timeouts (ran upstream)
        assert main["rejected"] == 4
        assert (main["rejected_rate"], main["rejected_cost"], main["banned"]) == (1, 1, 1)
        assert main["errors"] == 2 and main["timeouts"] == 2
        assert main["bytes_in"] == 10 * 20 + 50 + 4 * 10 + 3 * 16
        assert main["bytes_out"] == 1000 and main["rows"] == 20 and main["written"] == 5
        assert main["duration"] == pytest.approx(12 * 0.01 + 2.0 + 3.0)
        assert main["vcpu_seconds"] == pytest.approx(main["duration"])  # factor 1.0
        assert main["connections"] == 1 and cache["connections"] == 1
        assert cache["operations"] == 1 and cache["bytes_in"] == 7
        # One event per (tenant, database, kind) in the window, not one per operation.
        assert await ctx.store.count_usage_events("acme") == 4
        ids = [e["id"] for batch in capture.batches for e in batch]
        assert len(ids) == 4 and len(set(ids)) == 4
        kinds = sorted((e["database"], e["kind"]) for batch in capture.batches for e in batch)
        assert kinds == [("cache", "connection"), ("cache", "operation"),
                         ("main", "connection"), ("main", "operation")]
        assert ctx.metrics.usage_flushed._value.get() == 4


async def test_ids_are_fixed_when_a_window_opens_and_new_windows_get_new_ids(make_usage):
    capture = Capture()
    async with make_usage(extra_plugins=[("capture", capture)]) as (ctx, layer):
        chain = Chain([layer])
        s = make_session(ctx)
        await chain.connect(s)
        chain.complete(done(make_operation(s)))
        first_id = layer._open[("acme", "main", "operation")].id
        chain.complete(done(make_operation(s)))
        assert layer._open[("acme", "main", "operation")].id == first_id
        assert await layer.flush()
        chain.complete(done(make_operation(s)))
        second_id = layer._open[("acme", "main", "operation")].id
        assert await layer.flush()
        stored = [(e["id"], e["operations"]) for batch in capture.batches for e in batch
                  if e["kind"] == "operation"]
        assert stored == [(first_id, 2), (second_id, 1)]


async def test_connection_time_is_billed_per_window_and_counted_once(make_usage):
    async with make_usage() as (ctx, layer):
        chain = Chain([layer])
        s = make_session(ctx, tier="free")
        await chain.connect(s)
        t0 = time.monotonic()
        await _sleep(0.3)
        assert await layer.flush()  # the connection is still open: billed up to now
        first = (await totals(ctx))["main"]
        assert first["connections"] == 1
        assert first["connection_seconds"] == pytest.approx(0.3, abs=0.1)
        assert first["gb_seconds"] == pytest.approx(first["connection_seconds"] * 16 * MB / GIB)

        s.tier = ctx.tiers["pro"]  # 256MB from here on
        chain.tier_changed(s)
        t1 = time.monotonic()
        await _sleep(0.2)
        s.closed_at = time.monotonic()
        chain.disconnect(s)
        assert await layer.flush()
        total = (await totals(ctx))["main"]
        assert total["connections"] == 1  # counted once although it spans three windows
        assert total["connection_seconds"] == pytest.approx(s.closed_at - t0, abs=0.02)
        expected_gb = ((t1 - t0) * 16 + (s.closed_at - t1) * 256) * MB / GIB
        assert total["gb_seconds"] == pytest.approx(expected_gb, rel=0.1)
        assert layer.describe()["live_sessions"] == 0


async def test_refused_connections_are_counted_by_reason(make_usage):
    async with make_usage() as (ctx, layer):
        chain = Chain([layer])
        bad_password = make_session(ctx, tenant="acme")
        bad_password.authenticated = False
        bad_password.rejection = Reject(Reason.AUTH, "password authentication failed")
        chain.disconnect(bad_password)
        at_cap = make_session(ctx, tenant="acme", database="main")
        at_cap.db = DatabaseRecord("acme", "main", "postgres", "pg")
        at_cap.rejection = Reject(Reason.CONNECTIONS, "too many", layer="gatekeeper")
        chain.disconnect(at_cap)
        claimed = make_session(ctx, tenant="acme", database="no-such-db")  # not routed
        claimed.rejection = Reject(Reason.UNKNOWN, "no such database")
        chain.disconnect(claimed)
        stranger = Session("test", "10.0.0.9:5555", user="nobody")
        stranger.rejection = Reject(Reason.AUTH, "password authentication failed")
        chain.disconnect(stranger)  # unknown tenant: nothing to attribute it to

        assert await layer.flush()
        by_db = await totals(ctx)
        assert set(by_db) == {"", "main"}
        assert by_db[""]["auth_failures"] == 1 and by_db[""]["rejected"] == 1  # the claim
        assert by_db["main"]["rejected_connections"] == 1 and by_db["main"]["rejected"] == 1
        assert by_db["main"]["connections"] == 0
        assert await ctx.store.count_usage_events() == 2


async def test_cpu_factor_by_backend_id_or_kind_and_fixed_memory(make_usage):
    body = 'cpu_factor = { pglike = 0.5, special = 0.25 }\nmemory_per_connection = "1GiB"\n'
    async with make_usage(body) as (ctx, layer):
        chain = Chain([layer])
        by_kind = make_session(ctx, tenant="acme", database="a")
        by_kind.backend = PgLike(None, name="pg1", context=ctx)
        by_id = make_session(ctx, tenant="acme", database="b")
        by_id.backend = PgLike(None, name="special", context=ctx)
        for s in (by_kind, by_id):
            await chain.connect(s)
            chain.complete(done(make_operation(s), 2.0))
        await _sleep(0.1)
        for s in (by_kind, by_id):
            s.closed_at = time.monotonic()
            chain.disconnect(s)
        assert await layer.flush()
        by_db = await totals(ctx)
        assert by_db["a"]["vcpu_seconds"] == pytest.approx(1.0)
        assert by_db["b"]["vcpu_seconds"] == pytest.approx(0.5)
        assert by_db["a"]["gb_seconds"] == pytest.approx(by_db["a"]["connection_seconds"])


async def _sleep(seconds: float) -> None:
    import anyio
    await anyio.sleep(seconds)
