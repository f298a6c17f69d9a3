"""The timeout layer driven directly through a Chain; cancellation through a canceller the
way a front door installs it. End-to-end (pg_sleep through the Postgres front door) is in
test_e2e.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from ogelkit_layer_timeout import Timeout, TimeoutOptions

from ogelkit.chain import Chain
from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import structure
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_operation, make_session, minimal_config, test_context
from ogelkit.testing.contracts import LayerContract

pytestmark = pytest.mark.anyio

FAST = minimal_config('[tiers.free]\nstatement_timeout = "150ms"\n'
                      '[tiers.enterprise]\nstatement_timeout = "unlimited"\n')


def options(**values) -> TimeoutOptions:
    errors = ErrorCollector("test")
    result = structure(TimeoutOptions, values, "layers[0]", errors)
    assert not errors.errors, [str(e) for e in errors.errors]
    return result


async def _timeout(ctx, **values) -> tuple[Timeout, Chain]:
    layer = Timeout(options(**values), name="timeout", context=ctx)
    await layer.open()
    return layer, Chain([layer])


def _cancellable(session):
    """An operation with a canceller that records what the layer asked for."""
    op = make_operation(session, text="SELECT pg_sleep(15)")
    op.state = {"cancelled": []}

    def canceller(reason: Reject) -> None:
        op.state["cancelled"].append((time.monotonic(), reason))

    op.canceller = canceller
    return op


class TestTimeoutContract(LayerContract):
    layer_class = Timeout
    options = {"grace": "500ms"}
    refusal_options = {"grace": "50ms"}
    refusal_context_config = FAST

    async def provoke_refusal(self, drive):
        """A statement still running at the free tier's deadline is cancelled."""
        session = await drive.connect(tier="free")
        op = await drive.operation(session, text="SELECT pg_sleep(15)", hold=5.0)
        assert op.rejection is not None and op.rejection.reason == Reason.TIMEOUT


async def test_deadline_cancels_with_a_timeout_reject_and_tier_hint():
    async with test_context(FAST) as ctx:
        layer, chain = await _timeout(ctx)
        op = _cancellable(make_session(ctx, tier="free"))
        started = time.monotonic()
        assert chain.admit(op) is None
        await asyncio.sleep(0.3)
        [(at, rej)] = op.state["cancelled"]
        assert 0.14 <= at - started <= 0.25
        assert rej.reason == Reason.TIMEOUT and rej.layer == "timeout"
        assert rej.message == "canceling statement due to the gateway's statement timeout (150ms)"
        assert rej.detail == "statement timeout 150ms on tier free."
        assert rej.hint == "Upgrade to starter for a 30s statement timeout."
        op.ended = time.monotonic()
        chain.complete(op)
        assert layer.describe()["running"] == 0 and layer.describe()["expired"] == 1
        assert ctx.metrics.registry.get_sample_value(
            "ogelkit_layer_decisions_total",
            {"layer": "timeout", "decision": "rejected", "reason": "timeout", "tier": "free"}) == 1


async def test_default_tiers_free_gets_10_seconds():
    async with test_context() as ctx:
        layer, chain = await _timeout(ctx)
        op = _cancellable(make_session(ctx, tier="free"))
        chain.admit(op)
        watch = op.session.state[layer.name]
        assert watch.handle.when() - asyncio.get_running_loop().time() == pytest.approx(10.0, abs=0.05)
        assert layer.describe()["running"] == 1
        chain.complete(op)
        assert layer.describe()["running"] == 0
        # One timer per session, left armed: it finds nothing to cancel and goes idle.
        chain.disconnect(op.session)
        assert watch.handle.cancelled()


async def test_completed_operations_are_never_cancelled():
    async with test_context(FAST) as ctx:
        layer, chain = await _timeout(ctx)
        session = make_session(ctx)
        tasks_before = len(asyncio.all_tasks())
        ops = []
        for _ in range(2000):
            op = _cancellable(session)
            assert chain.admit(op) is None
            ops.append(op)
        assert len(asyncio.all_tasks()) == tasks_before  # timers, not tasks
        for op in ops:
            op.ended = time.monotonic()
            chain.complete(op)
        assert layer.describe()["running"] == 0
        await asyncio.sleep(0.25)
        assert all(not op.state["cancelled"] for op in ops)
        # Ended but not yet completed when the timer fires: not cancelled either.
        late = _cancellable(session)
        chain.admit(late)
        late.ended = time.monotonic()
        await asyncio.sleep(0.25)
        assert not late.state["cancelled"]


async def test_grace_extends_the_deadline():
    async with test_context(FAST) as ctx:
        _, chain = await _timeout(ctx, grace="200ms")
        op = _cancellable(make_session(ctx))
        started = time.monotonic()
        chain.admit(op)
        await asyncio.sleep(0.25)
        assert not op.state["cancelled"]
        await asyncio.sleep(0.2)
        [(at, _)] = op.state["cancelled"]
        assert 0.33 <= at - started <= 0.45


async def test_unlimited_tier_has_no_deadline_and_top_tier_hint():
    config = minimal_config('[tiers.enterprise]\nstatement_timeout = "100ms"\n')
    async with test_context(FAST) as ctx:
        layer, chain = await _timeout(ctx)
        op = _cancellable(make_session(ctx, tier="enterprise"))
        chain.admit(op)
        assert layer.describe()["running"] == 0
    async with test_context(config) as ctx:
        _, chain = await _timeout(ctx)
        op = _cancellable(make_session(ctx, tier="enterprise"))
        chain.admit(op)
        await asyncio.sleep(0.2)
        [(_, rej)] = op.state["cancelled"]
        assert rej.hint == "Break the work into shorter statements."


async def test_operation_without_canceller_is_counted_not_crashed():
    async with test_context(FAST) as ctx:
        _, chain = await _timeout(ctx)
        op = make_operation(make_session(ctx))  # no canceller installed
        chain.admit(op)
        broken = _cancellable(make_session(ctx))

        def explode(reason):
            raise RuntimeError("front door bug")

        broken.canceller = explode
        chain.admit(broken)
        await asyncio.sleep(0.25)
        assert ctx.metrics.registry.get_sample_value(
            "ogelkit_layer_decisions_total",
            {"layer": "timeout", "decision": "warned", "reason": "uncancellable",
             "tier": "free"}) == 2


async def test_one_timer_per_session_tracks_pipelined_operations():
    """Several operations in flight on one session (Redis pipelines): each gets its own
    deadline from one lazily re-armed timer, whatever order they finish in."""
    async with test_context(FAST) as ctx:
        layer, chain = await _timeout(ctx)
        session = make_session(ctx, tier="free")
        first, second, third = (_cancellable(session) for _ in range(3))
        for op in (first, second, third):
            chain.admit(op)
            await asyncio.sleep(0.02)
        first.ended = time.monotonic()
        chain.complete(first)  # in order
        third.ended = time.monotonic()
        chain.complete(third)  # out of order
        await asyncio.sleep(0.3)
        assert first.state["cancelled"] == [] and third.state["cancelled"] == []
        [(_at, rej)] = second.state["cancelled"]
        assert rej.reason == Reason.TIMEOUT
        watch = session.state[layer.name]
        assert len(watch.pending) == 0 and watch.handle is None  # idle: no timer left armed
        # A new operation re-arms it.
        fourth = _cancellable(session)
        chain.admit(fourth)
        assert watch.handle is not None
        fourth.ended = time.monotonic()
        chain.complete(fourth)
        chain.disconnect(session)
        assert layer.describe()["running"] == 0
