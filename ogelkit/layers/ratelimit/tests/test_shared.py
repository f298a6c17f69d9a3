"""Ratelimit with shared state: one bucket per tenant in the real test Redis, several
replicas, Redis outages (on a private redis-server)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import redis.asyncio as aioredis
from ogelkit_layer_ratelimit import Ratelimit, RatelimitOptions

from ogelkit.chain import Chain
from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import structure
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_operation, make_session, minimal_config, services, test_context
from ogelkit.testing.contracts import LayerContract
from ogelkit.testing.redis_server import PrivateRedis

pytestmark = pytest.mark.anyio


def _config(url: str, tiers: str = "") -> str:
    return minimal_config(f'[state]\nurl = "{url}"\n{tiers}')


class TestRatelimitSharedContract(LayerContract):
    layer_class = Ratelimit
    options = {"key_prefix": "o7s-test-rl-contract:"}
    context_config = _config(services.redis_url())
    refusal_options = {"key_prefix": f"o7s-test-rl-contract-{uuid.uuid4().hex[:8]}:"}

    async def provoke_refusal(self, drive):
        """A free tenant past its burst in the shared bucket is refused."""
        session = await drive.connect(tier="free")
        for _ in range(200):
            op = await drive.operation(session)
            if op.rejection is not None:
                break
        assert op.rejection is not None and op.rejection.reason == Reason.RATE


@asynccontextmanager
async def replica(url: str, tiers: str = "", **values):
    errors = ErrorCollector("test")
    options = structure(RatelimitOptions, values, "layers[0]", errors)
    assert not errors.errors, [str(e) for e in errors.errors]
    async with test_context(_config(url, tiers)) as ctx:
        layer = Ratelimit(options, name="ratelimit", context=ctx)
        await layer.open()
        try:
            yield ctx, layer, Chain([layer])
        finally:
            await layer.close()


async def attempt(chain: Chain, session) -> bool:
    """One operation through the chain, the way a front door drives it."""
    op = make_operation(session)
    try:
        pending = chain.admit(op)
        if pending is not None:
            await pending
        return True
    except Reject:
        return False
    finally:
        op.ended = time.monotonic()
        chain.complete(op)


async def test_burst_of_100_is_decided_in_few_round_trips(key_prefix):
    async with replica(services.redis_url(), key_prefix=key_prefix) as (ctx, layer, chain):
        session = make_session(ctx)
        pending = []
        for _ in range(100):
            op = make_operation(session)
            admit = chain.admit(op)
            assert admit is not None  # shared state: decided by Redis
            pending.append(admit)
        results = await asyncio.gather(*pending, return_exceptions=True)
        admitted = [r for r in results if r is None]
        rejected = [r for r in results if isinstance(r, Reject)]
        assert len(admitted) in (20, 21) and len(admitted) + len(rejected) == 100
        assert rejected[0].reason == Reason.RATE
        assert rejected[0].hint.startswith("Retry after ")
        assert 0 < rejected[0].retry_after <= 0.1
        assert layer.describe()["redis_calls"] <= 3  # batched, not one call per operation
        # The bucket lives under the prefix, on Redis's clock (µs), with an expiry.
        client = aioredis.from_url(services.redis_url())
        try:
            tat = int(await client.get(f"{key_prefix}rl:acme"))
            now_s, now_us = await client.time()
            now = now_s * 1_000_000 + now_us
            assert now < tat <= now + 2_000_000
            assert 0 < await client.pttl(f"{key_prefix}rl:acme") <= 3000
        finally:
            await client.aclose()


async def test_two_replicas_admit_the_configured_rate_within_5_percent(key_prefix):
    rate, burst, duration = 100, 10, 10.0
    tiers = f"[tiers.free]\nops_per_second = {rate}\nburst = {burst}\n"
    url = services.redis_url()
    async with AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(replica(url, tiers, key_prefix=key_prefix))
                    for _ in range(2)]
        admitted = [0, 0]
        offered = [0, 0]
        deadline = time.monotonic() + duration

        async def worker(i: int, ctx, chain) -> None:
            session = make_session(ctx)
            while time.monotonic() < deadline:
                offered[i] += 1
                if await attempt(chain, session):
                    admitted[i] += 1
                await asyncio.sleep(0.008)  # ~120 offered/s per worker, 4x the rate in all

        await asyncio.gather(*(worker(i, ctx, chain) for i, (ctx, _, chain) in
                               enumerate(replicas) for _ in range(4)))
        total = sum(admitted)
        expected = rate * duration + burst
        assert sum(offered) > 2 * expected
        assert abs(total - expected) <= 0.05 * rate * duration, (admitted, offered)
        assert min(admitted) > 0.3 * total  # both replicas got their share


async def test_prefetched_credits_save_round_trips_and_keep_the_limit(key_prefix):
    # 1000/s, burst 100: a replica may take min(1000 * 10ms, 100 / 4) = 10 tokens ahead.
    tiers = "[tiers.free]\nops_per_second = 1000\nburst = 100\n"
    url = services.redis_url()
    async with AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(replica(url, tiers, key_prefix=key_prefix))
                    for _ in range(2)]
        sessions = [make_session(ctx) for ctx, _, _ in replicas]
        started = time.monotonic()
        admitted = 0
        for _ in range(40):  # within the burst: all admitted, mostly from credits
            for (_, _, chain), session in zip(replicas, sessions, strict=True):
                admitted += await attempt(chain, session)
        assert admitted == 80
        calls = sum(layer.describe()["redis_calls"] for _, layer, _ in replicas)
        assert calls <= 2 * (40 // 11 + 2), calls  # one round trip per 1 + 10 operations
        for _ in range(150):  # then far over the rate
            for (_, _, chain), session in zip(replicas, sessions, strict=True):
                admitted += await attempt(chain, session)
        elapsed = time.monotonic() - started
        # never more than the burst plus what the rate refilled meanwhile
        assert 100 <= admitted <= 100 + 1000 * elapsed + 1, (admitted, elapsed)
        # unused credits expire instead of being saved up for a later burst
        for _, layer, _ in replicas:
            layer._credits.clear()
        await asyncio.sleep(0.2)
        _, layer, chain = replicas[0]
        before = layer.describe()["redis_calls"]
        assert await attempt(chain, sessions[0])
        assert layer.describe()["redis_calls"] == before + 1
        assert layer.describe()["credits"] == 10
        await asyncio.sleep(0.15)
        assert await attempt(chain, sessions[0])
        assert layer.describe()["redis_calls"] == before + 2  # the old credits had expired


async def test_two_replicas_at_a_high_rate_stay_within_5_percent(key_prefix):
    rate, burst, duration = 2000, 100, 3.0
    tiers = f"[tiers.free]\nops_per_second = {rate}\nburst = {burst}\n"
    url = services.redis_url()
    async with AsyncExitStack() as stack:
        replicas = [await stack.enter_async_context(replica(url, tiers, key_prefix=key_prefix))
                    for _ in range(2)]
        admitted = [0, 0]
        deadline = time.monotonic() + duration

        async def worker(i: int, ctx, chain) -> None:
            session = make_session(ctx)
            while time.monotonic() < deadline:
                if await attempt(chain, session):
                    admitted[i] += 1
                else:
                    await asyncio.sleep(0.002)
                await asyncio.sleep(0)

        await asyncio.gather(*(worker(i, ctx, chain) for i, (ctx, _, chain) in
                               enumerate(replicas) for _ in range(3)))
        expected = rate * duration + burst
        assert abs(sum(admitted) - expected) <= 0.05 * rate * duration, admitted


async def test_delay_mode_through_redis(key_prefix):
    async with replica(services.redis_url(), key_prefix=key_prefix, mode="delay",
                       max_delay="500ms") as (ctx, _, chain):
        session = make_session(ctx)
        started = time.monotonic()
        results = await asyncio.gather(*(attempt(chain, session) for _ in range(40)))
        elapsed = time.monotonic() - started
        # 20 at once, 5 more held back up to 500 ms (one per 100 ms), the rest refused
        assert results.count(True) in (25, 26)
        assert 0.45 <= elapsed < 1.0
        assert ctx.metrics.registry.get_sample_value(
            "ogelkit_layer_decisions_total",
            {"layer": "ratelimit", "decision": "delayed", "reason": "rate", "tier": "free"}) >= 5


async def test_redis_down_fails_open_to_the_local_bucket_and_recovers(caplog):
    caplog.set_level(logging.WARNING, logger="ogelkit.state")
    with PrivateRedis() as server:
        async with replica(server.url, state_retry="300ms") as (ctx, layer, chain):
            session = make_session(ctx)
            assert await attempt(chain, session)
            server.stop()
            results = [await attempt(chain, session) for _ in range(40)]
            # The first call fails; then every operation is decided by the in-process bucket
            # (a fresh one: 20 pass) without trying Redis for state_retry.
            assert results.count(True) == 20
            calls = layer.describe()["redis_calls"]
            for _ in range(5):
                await attempt(chain, session)
            assert layer.describe()["redis_calls"] == calls
            assert layer.describe()["state_down"] is True
            assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
            assert ctx.metrics.registry.get_sample_value(
                "ogelkit_state_unavailable_total", {"layer": "ratelimit", "policy": "open"}) == 45
            assert ctx.metrics.registry.get_sample_value(
                "ogelkit_layer_decisions_total",
                {"layer": "ratelimit", "decision": "allowed", "reason": "state_down",
                 "tier": "free"}) == 20
            server.start()
            await asyncio.sleep(0.35)
            # Redis is asked again; a restarted, empty Redis has a full bucket.
            assert await attempt(chain, make_session(ctx, tenant="fresh"))
            assert layer.describe()["state_down"] is False
            assert any("available again" in r.getMessage() for r in caplog.records)


async def test_redis_down_fails_closed_when_configured():
    with PrivateRedis() as server:
        async with replica(server.url, state_down="closed") as (ctx, _, chain):
            session = make_session(ctx)
            assert await attempt(chain, session)
            server.stop()
            op = make_operation(session)
            with pytest.raises(Reject) as info:
                await chain.admit(op)
            assert info.value.reason == Reason.UNAVAILABLE and op.rejection is info.value
            # within state_retry: refused synchronously, without a Redis call
            with pytest.raises(Reject):
                chain.admit(make_operation(session))
            # unlimited tiers do not depend on Redis at all
            assert chain.admit(make_operation(make_session(ctx, tier="enterprise"))) is None


async def test_script_is_reloaded_after_noscript():
    with PrivateRedis() as server:
        async with replica(server.url) as (ctx, _, chain):
            session = make_session(ctx)
            assert await attempt(chain, session)
            client = aioredis.from_url(server.url)
            await client.script_flush()  # our private server only
            await client.aclose()
            assert await attempt(chain, session)
            assert ctx.metrics.registry.get_sample_value(
                "ogelkit_state_unavailable_total", {"layer": "ratelimit", "policy": "open"}) == 0
