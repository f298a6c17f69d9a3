"""Gatekeeper with shared state: leases in the real test Redis, several replicas, outages."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from ogelkit_layer_gatekeeper import Gatekeeper, GatekeeperOptions

from ogelkit.chain import Chain
from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import structure
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_session, minimal_config, services, test_context
from ogelkit.testing.contracts import LayerContract
from ogelkit.testing.redis_server import PrivateRedis

pytestmark = pytest.mark.anyio


def _state(url: str) -> str:
    return minimal_config(f'[state]\nurl = "{url}"\n')


class TestGatekeeperSharedContract(LayerContract):
    layer_class = Gatekeeper
    options = {"lease_ttl": "5s", "key_prefix": "o7s-test-gk-contract:"}
    context_config = _state(services.redis_url())
    refusal_options = {"lease_ttl": "5s", "queue": "0s",
                       "key_prefix": f"o7s-test-gk-contract-{uuid.uuid4().hex[:8]}:"}

    async def provoke_refusal(self, drive):
        """The sixth lease of a free tenant in Redis is refused."""
        for _ in range(6):
            session = await drive.connect(tier="free", tenant="acme")
        assert session.rejection is not None and session.rejection.reason == Reason.CONNECTIONS


@asynccontextmanager
async def replica(url: str, **values):
    """One gateway replica's gatekeeper: its own context (own gateway id), shared Redis."""
    errors = ErrorCollector("test")
    options = structure(GatekeeperOptions, values, "layers[0]", errors)
    assert not errors.errors, [str(e) for e in errors.errors]
    async with test_context(_state(url)) as ctx:
        layer = Gatekeeper(options, name="gatekeeper", context=ctx)
        await layer.open()
        try:
            yield ctx, layer, Chain([layer])
        finally:
            await layer.close()


async def _live_leases(prefix: str, key: str, url: str | None = None) -> int:
    client = aioredis.from_url(url or services.redis_url())
    try:
        now_s, now_us = await client.time()
        return await client.zcount(f"{prefix}conn:{key}", f"({now_s * 1000 + now_us // 1000}",
                                   "+inf")
    finally:
        await client.aclose()


async def test_two_replicas_share_one_cap(key_prefix):
    url = services.redis_url()
    async with AsyncExitStack() as stack:
        ctx_a, a, chain_a = await stack.enter_async_context(replica(url, key_prefix=key_prefix))
        ctx_b, b, chain_b = await stack.enter_async_context(replica(url, key_prefix=key_prefix))
        assert ctx_a.gateway_id != ctx_b.gateway_id
        on_a = [make_session(ctx_a, tenant="acme") for _ in range(3)]
        on_b = [make_session(ctx_b, tenant="acme") for _ in range(2)]
        for s in on_a:
            await chain_a.connect(s)
        for s in on_b:
            await chain_b.connect(s)
        assert await _live_leases(key_prefix, "acme") == 5
        for chain, ctx in ((chain_a, ctx_a), (chain_b, ctx_b)):
            with pytest.raises(Reject) as info:
                await chain.connect(make_session(ctx, tenant="acme"))
            assert info.value.reason == Reason.CONNECTIONS
            assert info.value.detail == "5/5 connections in use on tier free."
        # Freed on A, usable on B (once the release reached Redis).
        chain_a.disconnect(on_a[0])
        await asyncio.gather(*a._releases)
        await chain_b.connect(make_session(ctx_b, tenant="acme"))
        assert await _live_leases(key_prefix, "acme") == 5
        assert b.describe()["connections"] == 3 and a.describe()["connections"] == 2


async def test_queued_client_gets_a_slot_freed_on_another_replica(key_prefix):
    url = services.redis_url()
    async with AsyncExitStack() as stack:
        ctx_a, _, chain_a = await stack.enter_async_context(replica(url, key_prefix=key_prefix))
        ctx_b, b, chain_b = await stack.enter_async_context(
            replica(url, key_prefix=key_prefix, queue="3s", queue_poll="50ms"))
        held = [make_session(ctx_a) for _ in range(5)]
        for s in held:
            await chain_a.connect(s)
        waiter = asyncio.create_task(chain_b.connect(make_session(ctx_b)))
        await asyncio.sleep(0.2)
        assert not waiter.done() and b.describe()["queued"] == 1
        started = time.monotonic()
        chain_a.disconnect(held[0])
        await asyncio.wait_for(waiter, 2)
        assert time.monotonic() - started < 0.5
        # Queued, then refused when nothing frees up within the wait.
        started = time.monotonic()
        with pytest.raises(Reject) as info:
            await chain_b.connect(make_session(ctx_b))
        assert 2.9 < time.monotonic() - started < 4
        assert "waited 3s" in info.value.detail


async def test_leases_of_a_silent_replica_expire_and_heartbeat_keeps_live_ones(key_prefix):
    url = services.redis_url()
    async with AsyncExitStack() as stack:
        _, alive, _ = await stack.enter_async_context(
            replica(url, key_prefix=key_prefix, lease_ttl="1s"))
        ctx_dead, _, chain_dead = await stack.enter_async_context(
            replica(url, key_prefix=key_prefix, lease_ttl="1s"))
        ctx_b, _, chain_b = await stack.enter_async_context(
            replica(url, key_prefix=key_prefix, lease_ttl="1s"))
        # "alive" holds 2 and refreshes them; "dead" holds 3 and never refreshes (a crash).
        for _ in range(2):
            await alive.on_connect(make_session(alive.context))
        for _ in range(3):
            await chain_dead.connect(make_session(ctx_dead))
        heartbeat = asyncio.create_task(alive.run())
        try:
            with pytest.raises(Reject):
                await chain_b.connect(make_session(ctx_b))
            await asyncio.sleep(1.6)
            assert await _live_leases(key_prefix, "acme") == 2
            for _ in range(3):
                await chain_b.connect(make_session(ctx_b))
            with pytest.raises(Reject):
                await chain_b.connect(make_session(ctx_b))
        finally:
            heartbeat.cancel()


async def test_slots_of_a_sigkilled_replica_come_back_within_the_lease_ttl(key_prefix):
    url = services.redis_url()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("lease_holder.py")), url, key_prefix,
        "acme", "5", "1500ms", stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert line.startswith(b"ready"), line
        async with replica(url, key_prefix=key_prefix, lease_ttl="1500ms") as (ctx, _, chain):
            # The holder's heartbeat keeps its 5 leases alive well past one TTL.
            await asyncio.sleep(2.0)
            with pytest.raises(Reject):
                await chain.connect(make_session(ctx))
            holder.send_signal(signal.SIGKILL)
            await asyncio.wait_for(holder.wait(), 5)
            killed = time.monotonic()
            while True:
                try:
                    await chain.connect(make_session(ctx))
                    break
                except Reject:
                    assert time.monotonic() - killed < 1.5 + 0.5, "leases outlived their TTL"
                    await asyncio.sleep(0.05)
            for _ in range(4):
                await chain.connect(make_session(ctx))
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_redis_down_fails_open_on_the_local_count_and_recovers(caplog):
    caplog.set_level(logging.WARNING, logger="ogelkit.state")
    with PrivateRedis() as server:
        async with replica(server.url, lease_ttl="3s") as (ctx, layer, chain):
            first = [make_session(ctx) for _ in range(2)]
            for s in first:
                await chain.connect(s)
            server.stop()
            # Down: admitted by this replica's own count (2 held + 3 more = the cap) ...
            during = [make_session(ctx) for _ in range(3)]
            for s in during:
                await chain.connect(s)
            with pytest.raises(Reject) as info:
                await chain.connect(make_session(ctx))
            assert info.value.reason == Reason.CONNECTIONS
            # ... logged once for the episode, every decision counted.
            outage_logs = [r for r in caplog.records if "unavailable" in r.getMessage()]
            assert len(outage_logs) == 1
            assert ctx.metrics.registry.get_sample_value(
                "ogelkit_state_unavailable_total", {"layer": "gatekeeper", "policy": "open"}) == 4
            assert ctx.metrics.registry.get_sample_value(
                "ogelkit_layer_decisions_total",
                {"layer": "gatekeeper", "decision": "allowed", "reason": "state_down",
                 "tier": "free"}) == 3
            # Back up (empty: a restarted Redis lost every lease): the heartbeat re-creates
            # this replica's leases, and the episode ends.
            server.start()
            assert await layer.heartbeat()
            assert await _live_leases("o7s:", "acme", server.url) == 5
            with pytest.raises(Reject):
                await chain.connect(make_session(ctx))
            assert any("available again" in r.getMessage() for r in caplog.records)
            for s in first + during:
                chain.disconnect(s)
            await asyncio.gather(*layer._releases)
            assert await _live_leases("o7s:", "acme", server.url) == 0


async def test_redis_down_fails_closed_when_configured():
    with PrivateRedis() as server:
        async with replica(server.url, state_down="closed") as (ctx, _, chain):
            await chain.connect(make_session(ctx))
            server.stop()
            with pytest.raises(Reject) as info:
                await chain.connect(make_session(ctx))
            assert info.value.reason == Reason.UNAVAILABLE
            assert ctx.metrics.registry.get_sample_value(
                "ogelkit_state_unavailable_total",
                {"layer": "gatekeeper", "policy": "closed"}) == 1


async def test_unlimited_tiers_never_wait_for_redis_and_are_counted_by_the_heartbeat():
    config = '[tiers.enterprise]\nconnections = "unlimited"\n'
    with PrivateRedis() as server:
        async with test_context(minimal_config(f'[state]\nurl = "{server.url}"\n{config}')) as ctx:
            errors = ErrorCollector("test")
            layer = Gatekeeper(structure(GatekeeperOptions, {"state_down": "closed"}, "x", errors),
                               name="gatekeeper", context=ctx)
            await layer.open()
            chain = Chain([layer])
            server.stop()
            sessions = [make_session(ctx, tier="enterprise") for _ in range(3)]
            for s in sessions:
                await chain.connect(s)  # no cap: admitted even though Redis is down (closed)
            server.start()
            # (the first call may hit the client's stale pooled connection and fail: the
            # next heartbeat succeeds)
            assert await layer.heartbeat() or await layer.heartbeat()
            assert await _live_leases("o7s:", "acme", server.url) == 3
            for s in sessions:
                chain.disconnect(s)
            await layer.close()
            assert await _live_leases("o7s:", "acme", server.url) == 0


async def test_scripts_are_reloaded_after_noscript():
    with PrivateRedis() as server:
        async with replica(server.url) as (ctx, _, chain):
            await chain.connect(make_session(ctx))
            client = aioredis.from_url(server.url)
            await client.script_flush()  # our private server: nobody else's scripts
            await client.aclose()
            await chain.connect(make_session(ctx))
            assert await _live_leases("o7s:", "acme", server.url) == 2


def test_bad_options_are_reported():
    errors = ErrorCollector("config.toml")
    structure(GatekeeperOptions, {"lease_ttl": 0, "queue": "soon", "state_down": "ajar"},
              "layers[0]", errors)
    text = "\n".join(str(e) for e in errors.errors)
    assert "layers[0].queue" in text and "layers[0].state_down" in text
    errors = ErrorCollector("config.toml")
    structure(GatekeeperOptions, {"lease_ttl": 0}, "layers[0]", errors)
    assert "lease_ttl must be greater than 0" in str(errors.errors[0])
    assert errors.errors[0].path == "layers[0].lease_ttl"
