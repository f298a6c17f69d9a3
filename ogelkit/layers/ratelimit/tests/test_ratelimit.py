"""Ratelimit in-process mode, driven directly through a compiled Chain (no front door)."""

from __future__ import annotations

import asyncio
import time

import pytest
from ogelkit_layer_ratelimit import Ratelimit, RatelimitOptions
from ogelkit_layer_ratelimit.gcra import LocalBuckets

from ogelkit.chain import Chain
from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import structure
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_operation, make_session, minimal_config, test_context
from ogelkit.testing.contracts import LayerContract

pytestmark = pytest.mark.anyio


def options(**values) -> RatelimitOptions:
    errors = ErrorCollector("test")
    result = structure(RatelimitOptions, values, "layers[0]", errors)
    assert not errors.errors, [str(e) for e in errors.errors]
    return result


async def _ratelimit(ctx, **values) -> tuple[Ratelimit, Chain]:
    layer = Ratelimit(options(**values), name="ratelimit", context=ctx)
    await layer.open()
    return layer, Chain([layer])


def _decisions(ctx, decision: str, reason: str, tier: str) -> float:
    return ctx.metrics.registry.get_sample_value(
        "ogelkit_layer_decisions_total",
        {"layer": "ratelimit", "decision": decision, "reason": reason, "tier": tier}) or 0.0


class TestRatelimitContract(LayerContract):
    layer_class = Ratelimit
    options = {"mode": "delay", "max_delay": "250ms", "scope": "database"}

    async def provoke_refusal(self, drive):
        """A free tenant pipelining past its burst: delayed up to max_delay, then refused."""
        session = await drive.connect(tier="free")
        ops = await asyncio.gather(*(drive.operation(session) for _ in range(60)))
        assert {op.rejection.reason for op in ops if op.rejection} == {Reason.RATE}


def test_gcra_admits_the_burst_then_one_per_interval():
    buckets = LocalBuckets()
    now = 1000.0
    results = [buckets.take("t", 0.1, 2.0, -1.0, now) for _ in range(25)]
    assert results[:20] == [0.0] * 20
    assert all(r < 0 for r in results[20:])
    assert results[20] == pytest.approx(-0.1)
    assert buckets.take("t", 0.1, 2.0, -1.0, now + 0.1) == 0.0
    assert buckets.take("t", 0.1, 2.0, -1.0, now + 0.1) < 0
    # Delay mode books the slot and says how long to wait.
    assert buckets.take("t", 0.1, 2.0, 0.5, now + 0.1) == pytest.approx(0.1)
    assert buckets.purge(now + 10) == 1 and buckets.tat == {}


async def test_burst_of_100_from_a_free_tenant_passes_20_at_once():
    async with test_context() as ctx:
        _, chain = await _ratelimit(ctx)
        session = make_session(ctx, tier="free")
        admitted, rejections = 0, []
        for _ in range(100):
            op = make_operation(session)
            try:
                assert chain.admit(op) is None  # decided synchronously: no awaitable
                admitted += 1
            except Reject as rej:
                rejections.append(rej)
                assert op.rejection is rej
            chain.complete(op)
        assert admitted == 20 and len(rejections) == 80
        first = rejections[0]
        assert first.reason == Reason.RATE and first.layer == "ratelimit"
        assert first.message == 'rate limit exceeded for tenant "acme"'
        assert first.detail == "limit 10 operations per second with bursts of 20 on tier free."
        assert first.hint == "Retry after 100 ms. Upgrade to starter for 50 operations per second."
        assert first.retry_after == pytest.approx(0.1)
        # The sustained rate refills one operation per 100 ms.
        await asyncio.sleep(0.35)
        passed = 0
        for _ in range(10):
            try:
                chain.admit(make_operation(session))
                passed += 1
            except Reject:
                pass
        assert passed == 3
        assert _decisions(ctx, "allowed", "ok", "free") == 23
        assert _decisions(ctx, "rejected", "rate", "free") == 87
        assert "acme" not in ctx.metrics.render().decode()


async def test_tenant_scope_spans_databases_and_database_scope_splits_them():
    async with test_context() as ctx:
        _, chain = await _ratelimit(ctx)
        main, other = make_session(ctx, database="main"), make_session(ctx, database="other")
        for i in range(20):
            chain.admit(make_operation(main if i % 2 else other))
        with pytest.raises(Reject):
            chain.admit(make_operation(main))
        with pytest.raises(Reject):
            chain.admit(make_operation(other))
        assert chain.admit(make_operation(make_session(ctx, tenant="b"))) is None

    async with test_context() as ctx:
        _, chain = await _ratelimit(ctx, scope="database")
        main, other = make_session(ctx, database="main"), make_session(ctx, database="other")
        for _ in range(20):
            chain.admit(make_operation(main))
        with pytest.raises(Reject) as info:
            chain.admit(make_operation(main))
        assert info.value.message == 'rate limit exceeded for database "main" of tenant "acme"'
        assert chain.admit(make_operation(other)) is None


async def test_unlimited_tier_is_never_limited():
    async with test_context() as ctx:
        _, chain = await _ratelimit(ctx)
        session = make_session(ctx, tier="enterprise")
        for _ in range(5000):
            assert chain.admit(make_operation(session)) is None
        assert _decisions(ctx, "allowed", "ok", "enterprise") == 5000


async def test_top_limited_tier_hint_and_custom_tiers():
    config = minimal_config('[tiers.pro]\nops_per_second = 2.5\nburst = 1\n'
                            '[tiers.enterprise]\nops_per_second = 2.5\n')
    async with test_context(config) as ctx:
        _, chain = await _ratelimit(ctx)
        pro = make_session(ctx, tier="pro")
        chain.admit(make_operation(pro))
        with pytest.raises(Reject) as info:
            chain.admit(make_operation(pro))
        assert info.value.detail == "limit 2.5 operations per second with bursts of 1 on tier pro."
        assert info.value.hint.startswith("Retry after 40") and "Upgrade" not in info.value.hint
        # burst = None (unset in the default table is 'unlimited' for enterprise) -> 1 s worth
        ent = make_session(ctx, tenant="e", tier="enterprise")
        passed = 0
        for _ in range(10):
            try:
                chain.admit(make_operation(ent))
                passed += 1
            except Reject:
                pass
        assert passed == 3


async def test_delay_mode_holds_back_up_to_max_delay_then_refuses():
    async with test_context() as ctx:
        _, chain = await _ratelimit(ctx, mode="delay", max_delay="1s")
        session = make_session(ctx)
        now, delayed, refused = 0, [], 0
        started = time.monotonic()
        for _ in range(100):
            op = make_operation(session)
            try:
                pending = chain.admit(op)
            except Reject as rej:
                refused += 1
                assert rej.hint.startswith("Retry after")
                continue
            if pending is None:
                now += 1
            else:
                delayed.append(pending)
        assert (now, len(delayed), refused) == (20, 10, 70)
        done_at = []
        for pending in delayed:
            await pending
            done_at.append(time.monotonic() - started)
        # the k-th delayed operation waits about k * 100 ms, in order
        for k, t in enumerate(done_at, start=1):
            assert k * 0.1 - 0.02 <= t <= k * 0.1 + 0.15, (k, t)
        assert _decisions(ctx, "delayed", "rate", "free") == 10


async def test_purge_forgets_full_buckets():
    async with test_context() as ctx:
        layer, chain = await _ratelimit(ctx)
        for tenant in ("a", "b", "c"):
            chain.admit(make_operation(make_session(ctx, tenant=tenant)))
        assert layer.describe()["local_buckets"] == 3
        assert layer._local.purge(time.monotonic() + 1) == 3


def test_bad_options_are_reported():
    errors = ErrorCollector("config.toml")
    structure(RatelimitOptions, {"mode": "throttle", "scope": "org", "max_delay": 0},
              "layers[1]", errors)
    text = "\n".join(str(e) for e in errors.errors)
    assert "layers[1].mode" in text and "layers[1].scope" in text
