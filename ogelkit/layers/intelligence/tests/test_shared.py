"""Bans and back-offs shared by replicas through the real Redis, and the state_down policy
(a private redis-server that the test stops and restarts)."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import anyio
import pytest
import redis.asyncio as aioredis

from ogelkit.chain import Chain
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_operation, make_session
from ogelkit.testing.redis_server import PrivateRedis
from ogelkit.testing.services import redis_url

pytestmark = pytest.mark.anyio


def fail(chain, ctx, tenant="acme", addr="10.2.2.2:4000"):
    s = make_session(ctx, tenant=tenant, client_addr=addr)
    s.authenticated = False
    s.rejection = Reject(Reason.AUTH, "password authentication failed")
    chain.disconnect(s)


def refused(chain, ctx, tenant="acme", addr="10.2.2.2:4001"):
    try:
        chain.auth(make_session(ctx, tenant=tenant, client_addr=addr))
    except Reject as rej:
        return rej
    return None


async def until(predicate, within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


async def replicas(stack, make, body, url, n=2):
    """``n`` gateways' intelligence layers on one Redis, each running its loops."""
    out = []
    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(tg.cancel_scope.cancel)
    for _ in range(n):
        ctx, layer = await stack.enter_async_context(make(body, state_url=url))
        tg.start_soon(layer.run)
        out.append((ctx, layer, Chain([layer])))
    return out


async def test_failures_on_two_replicas_add_up_and_the_ban_reaches_both(make_intelligence,
                                                                        redis_prefix):
    body = f'auth_failures = 6\nsync_interval = "50ms"\nkey_prefix = "{redis_prefix}"\n'
    async with AsyncExitStack() as stack:
        (ctx_a, a, chain_a), (ctx_b, b, chain_b) = await replicas(stack, make_intelligence,
                                                                  body, redis_url())
        for _ in range(3):
            fail(chain_a, ctx_a)
            fail(chain_b, ctx_b)
        # The replica whose script call reached the threshold applies the ban at once,
        # the other one within sync_interval.
        await until(lambda: refused(chain_a, ctx_a) and refused(chain_b, ctx_b))
        rej = refused(chain_b, ctx_b)
        assert rej.reason == Reason.BANNED and 119 < rej.retry_after <= 120
        assert a.describe()["bans"] + b.describe()["bans"] == 1  # decided once, in Redis
        client = aioredis.from_url(redis_url())
        try:
            members = await client.zrange(f"{redis_prefix}intel:blocks", 0, -1)
            level = await client.get(f"{redis_prefix}intel:level:a|acme|10.2.2.2")
        finally:
            await client.aclose()
        assert members == [b"a|acme|10.2.2.2"] and level == b"1"
        assert refused(chain_a, ctx_a, addr="10.3.3.3:1") is None


async def test_a_storm_seen_by_one_replica_backs_off_the_tenant_on_all(make_intelligence,
                                                                       redis_prefix):
    body = (f'storm_threshold = 10\nstorm_window = "1s"\nbackoff = "2s"\n'
            f'sync_interval = "50ms"\nkey_prefix = "{redis_prefix}"\n')
    async with AsyncExitStack() as stack:
        (ctx_a, a, chain_a), (ctx_b, b, chain_b) = await replicas(stack, make_intelligence,
                                                                  body, redis_url())
        s = make_session(ctx_a, tenant="acme")
        for _ in range(10):
            op = make_operation(s)
            op.rejection = Reject(Reason.RATE, "slow down", layer="ratelimit")
            chain_a.complete(op)
        other = make_session(ctx_b, tenant="acme")

        def backing_off():
            try:
                chain_b.admit(make_operation(other))
            except Reject as rej:
                return rej.reason == Reason.BANNED
            return False

        await until(backing_off)
        assert a.describe()["storms"] == 1 and b.describe()["storms"] == 0


async def test_redis_down_fails_open_with_local_bans_and_recovers(make_intelligence, caplog):
    body = 'auth_failures = 3\nsync_interval = "50ms"\nstate_down = "open"\n'
    with PrivateRedis() as server:
        async with AsyncExitStack() as stack:
            ((ctx, layer, chain),) = await replicas(stack, make_intelligence, body, server.url,
                                                    n=1)
            with caplog.at_level(logging.WARNING, logger="ogelkit.state"):
                server.stop()
                await until(lambda: layer.describe()["state_down"], 5)
                assert refused(chain, ctx) is None  # serving: open
                for _ in range(3):
                    fail(chain, ctx)  # counted in this process meanwhile
                rej = refused(chain, ctx)
                assert rej is not None and rej.reason == Reason.BANNED
            downs = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(downs) == 1  # once per outage, not per login
            metrics = ctx.metrics.render().decode()
            line = [m for m in metrics.splitlines() if m.startswith(
                'ogelkit_state_unavailable_total{layer="intelligence",policy="open"}')]
            assert line and float(line[0].split()[-1]) >= 2
            server.start()
            await until(lambda: not layer.describe()["state_down"], 10)
            for _ in range(3):
                fail(chain, ctx, tenant="zeta")  # back to Redis: decided there
            await until(lambda: refused(chain, ctx, tenant="zeta") is not None)
            client = aioredis.from_url(server.url)
            try:
                assert await client.zcard("o7s:intel:blocks") == 1
            finally:
                await client.aclose()


async def test_redis_down_fails_closed_when_configured(make_intelligence):
    body = 'sync_interval = "50ms"\nstate_down = "closed"\n'
    with PrivateRedis() as server:
        async with AsyncExitStack() as stack:
            ((ctx, layer, chain),) = await replicas(stack, make_intelligence, body, server.url,
                                                    n=1)
            assert refused(chain, ctx) is None
            server.stop()
            await until(lambda: layer.describe()["state_down"], 5)
            rej = refused(chain, ctx)
            assert rej is not None and rej.reason == Reason.UNAVAILABLE
            assert rej.layer == "intelligence" and rej.retry_after
            # Operations of connections already open keep flowing.
            assert chain.admit(make_operation(make_session(ctx))) is None
            server.start()
            await until(lambda: not layer.describe()["state_down"], 10)
            assert refused(chain, ctx) is None
            assert layer.describe()["refused_state_down"] >= 1
