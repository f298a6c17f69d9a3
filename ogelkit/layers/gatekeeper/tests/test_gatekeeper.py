"""Gatekeeper in-process mode, driven directly through a compiled Chain (no front door)."""

from __future__ import annotations

import asyncio

import pytest
from ogelkit_layer_gatekeeper import Gatekeeper, GatekeeperOptions

from ogelkit.chain import Chain
from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import structure
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_session, minimal_config, test_context
from ogelkit.testing.contracts import LayerContract

pytestmark = pytest.mark.anyio


def options(**values) -> GatekeeperOptions:
    """Options as the config loader builds them from TOML values ("5s" -> 5.0)."""
    errors = ErrorCollector("test")
    result = structure(GatekeeperOptions, values, "layers[0]", errors)
    assert not errors.errors, [str(e) for e in errors.errors]
    return result


async def _gatekeeper(ctx, **values) -> tuple[Gatekeeper, Chain]:
    layer = Gatekeeper(options(**values), name="gatekeeper", context=ctx)
    await layer.open()
    return layer, Chain([layer])


def _decisions(ctx, decision: str, reason: str, tier: str) -> float:
    value = ctx.metrics.registry.get_sample_value(
        "ogelkit_layer_decisions_total",
        {"layer": "gatekeeper", "decision": decision, "reason": reason, "tier": tier})
    return value or 0.0


class TestGatekeeperContract(LayerContract):
    layer_class = Gatekeeper
    options = {"per_database": True, "queue": "1s", "queue_limit": 10, "state_down": "closed"}
    refusal_options = {**options, "queue": "200ms"}

    async def provoke_refusal(self, drive):
        """The sixth connection of a free tenant (5 connections), after its short queue."""
        for _ in range(6):
            session = await drive.connect(tier="free", tenant="acme")
        assert session.rejection is not None and session.rejection.reason == Reason.CONNECTIONS


async def test_sixth_connection_of_a_free_tenant_is_refused_with_details():
    async with test_context() as ctx:
        _, chain = await _gatekeeper(ctx)
        sessions = [make_session(ctx, tenant="acme", tier="free") for _ in range(5)]
        for s in sessions:
            await chain.connect(s)
        sixth = make_session(ctx, tenant="acme", tier="free")
        with pytest.raises(Reject) as info:
            await chain.connect(sixth)
        rej = info.value
        assert rej.reason == Reason.CONNECTIONS and rej.layer == "gatekeeper"
        assert rej.message == 'too many connections for tenant "acme"'
        assert rej.detail == "5/5 connections in use on tier free."
        assert rej.hint == "Upgrade to starter for 10 connections."
        assert sixth.rejection is rej
        # The refused session's log phase must not free somebody else's slot.
        chain.disconnect(sixth)
        with pytest.raises(Reject):
            await chain.connect(make_session(ctx, tenant="acme"))
        # Another tenant is not affected; a freed slot is usable again.
        await chain.connect(make_session(ctx, tenant="other"))
        chain.disconnect(sessions[0])
        await chain.connect(make_session(ctx, tenant="acme"))
        assert _decisions(ctx, "allowed", "ok", "free") == 7
        assert _decisions(ctx, "rejected", "connections", "free") == 2
        text = ctx.metrics.render().decode()
        assert "acme" not in text and "other" not in text  # never tenant ids as labels


async def test_top_tier_hint_has_no_upgrade():
    async with test_context(minimal_config('[tiers.enterprise]\nconnections = 1\n')) as ctx:
        _, chain = await _gatekeeper(ctx, queue=0)
        await chain.connect(make_session(ctx, tier="enterprise"))
        with pytest.raises(Reject) as info:
            await chain.connect(make_session(ctx, tier="enterprise"))
        assert info.value.detail == "1/1 connections in use on tier enterprise."
        assert info.value.hint == "Close idle connections, or pool them in the application."


async def test_per_database_caps_each_database_separately():
    async with test_context() as ctx:
        _, chain = await _gatekeeper(ctx, per_database=True)
        for db in ("main", "analytics"):
            for _ in range(5):
                await chain.connect(make_session(ctx, database=db))
        with pytest.raises(Reject) as info:
            await chain.connect(make_session(ctx, database="main"))
        assert info.value.message == 'too many connections for database "main" of tenant "acme"'


async def test_unlimited_tier_admits_everything_and_still_counts():
    config = minimal_config('[tiers.free]\nconnections = "unlimited"\n')
    async with test_context(config) as ctx:
        layer, chain = await _gatekeeper(ctx)
        sessions = [make_session(ctx) for _ in range(300)]
        for s in sessions:
            await chain.connect(s)
        assert layer.describe()["connections"] == 300
        for s in sessions:
            chain.disconnect(s)
        assert layer.describe() == {"mode": "local", "tenants": 0, "connections": 0, "queued": 0}


async def test_queue_hands_freed_slots_over_in_arrival_order():
    async with test_context() as ctx:
        layer, chain = await _gatekeeper(ctx, queue="5s")
        held = [make_session(ctx) for _ in range(5)]
        for s in held:
            await chain.connect(s)
        first, second, third = (make_session(ctx) for _ in range(3))
        t1 = asyncio.create_task(chain.connect(first))
        await asyncio.sleep(0.01)
        t2 = asyncio.create_task(chain.connect(second))
        await asyncio.sleep(0.01)
        assert layer.describe()["queued"] == 2
        chain.disconnect(held[0])
        await asyncio.wait_for(t1, 1)
        assert not t2.done()
        # A newcomer does not overtake the queued client (no barging).
        t3 = asyncio.create_task(chain.connect(third))
        await asyncio.sleep(0.01)
        chain.disconnect(held[1])
        await asyncio.wait_for(t2, 1)
        assert not t3.done()
        chain.disconnect(held[2])
        await asyncio.wait_for(t3, 1)
        assert layer.describe()["connections"] == 5
        assert _decisions(ctx, "queued", "connections", "free") == 3
        assert _decisions(ctx, "allowed", "queued", "free") == 3


async def test_queue_wait_is_bounded_then_refused():
    async with test_context() as ctx:
        layer, chain = await _gatekeeper(ctx, queue="200ms")
        for _ in range(5):
            await chain.connect(make_session(ctx))
        started = asyncio.get_running_loop().time()
        with pytest.raises(Reject) as info:
            await chain.connect(make_session(ctx))
        waited = asyncio.get_running_loop().time() - started
        assert 0.18 <= waited < 1.0
        assert info.value.detail == ("5/5 connections in use on tier free; waited 200ms for a "
                                     "free slot.")
        assert layer.describe()["queued"] == 0


async def test_queue_limit_refuses_at_once():
    async with test_context() as ctx:
        _, chain = await _gatekeeper(ctx, queue="5s", queue_limit=1)
        for _ in range(5):
            await chain.connect(make_session(ctx))
        waiting = asyncio.create_task(chain.connect(make_session(ctx)))
        await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        with pytest.raises(Reject):
            await chain.connect(make_session(ctx))
        assert asyncio.get_running_loop().time() - started < 0.1
        waiting.cancel()


async def test_tier_queue_time_is_the_default():
    config = minimal_config('[tiers.pro]\nconnections = 1\nconnection_queue = "300ms"\n')
    async with test_context(config) as ctx:
        _, chain = await _gatekeeper(ctx)  # queue = "tier"
        await chain.connect(make_session(ctx, tier="pro"))
        started = asyncio.get_running_loop().time()
        with pytest.raises(Reject):
            await chain.connect(make_session(ctx, tier="pro"))
        assert asyncio.get_running_loop().time() - started >= 0.28
        # free has connection_queue 0: refused at once
        for _ in range(5):
            await chain.connect(make_session(ctx, tenant="f", tier="free"))
        started = asyncio.get_running_loop().time()
        with pytest.raises(Reject):
            await chain.connect(make_session(ctx, tenant="f", tier="free"))
        assert asyncio.get_running_loop().time() - started < 0.1


async def test_client_leaving_the_queue_leaks_nothing():
    async with test_context() as ctx:
        layer, chain = await _gatekeeper(ctx, queue="5s")
        held = [make_session(ctx) for _ in range(5)]
        for s in held:
            await chain.connect(s)
        quitter = asyncio.create_task(chain.connect(make_session(ctx)))
        await asyncio.sleep(0.01)
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        # A slot handed over at the very moment the client leaves is passed on, not lost.
        late = make_session(ctx)
        racer = asyncio.create_task(chain.connect(late))
        await asyncio.sleep(0.01)
        chain.disconnect(held[0])
        racer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await racer
        for s in held[1:]:
            chain.disconnect(s)
        assert layer.describe() == {"mode": "local", "tenants": 0, "connections": 0, "queued": 0}


async def test_a_later_layer_refusing_still_frees_the_slot():
    async with test_context() as ctx:
        layer, _ = await _gatekeeper(ctx)

        class Refuser(Gatekeeper):
            type_name = "refuser"

            async def on_connect(self, session):
                raise Reject(Reason.BANNED, "no")

        chain = Chain([layer, Refuser(options(), name="refuser", context=ctx)])
        for _ in range(10):
            s = make_session(ctx)
            with pytest.raises(Reject):
                await chain.connect(s)
            chain.disconnect(s)
        assert layer.describe()["connections"] == 0
