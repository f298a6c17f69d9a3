"""The cost layer driven directly through a Chain, with a test double of the backend's
capability API (cost_key / estimate_cost) that counts its calls. End-to-end tests through
the real Postgres front door are in test_e2e.py."""

from __future__ import annotations

import asyncio
import re

import pytest
from ogelkit_layer_cost import Cost, CostOptions
from ogelkit_layer_cost.cache import CostCache

import ogelkit
from ogelkit.chain import Chain
from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import structure
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_operation, make_session, minimal_config, test_context
from ogelkit.testing.contracts import LayerContract

pytestmark = pytest.mark.anyio


class CountingBackend(ogelkit.Backend):
    """Normalises literals away; costs come from a table; counts estimate_cost calls."""

    type_name = "counting"
    protocol = "test"

    def __init__(self, costs: dict[str, float | None] | None = None, delay: float = 0.01):
        super().__init__(None, name="counting", context=None)
        self.costs = costs or {}
        self.delay = delay
        self.calls: list[str] = []
        self.key_calls = 0

    def cost_key(self, op):
        self.key_calls += 1
        return self._key(op)

    @staticmethod
    def _key(op):
        text = (op.text or "").strip().lower()
        if text.split(" ", 1)[0] in ("set", "begin", "commit", "rollback", "show"):
            return None
        return re.sub(r"\b\d+\b", "?", text)

    async def estimate_cost(self, op):
        key = self._key(op)
        self.calls.append(key)
        await asyncio.sleep(self.delay)
        value = self.costs.get(key, 1.0)
        if value == "boom":
            raise RuntimeError("EXPLAIN failed")
        return value


class PlainBackend(ogelkit.Backend):
    type_name = "plain"
    protocol = "test"


def options(**values) -> CostOptions:
    errors = ErrorCollector("test")
    result = structure(CostOptions, values, "layers[0]", errors)
    assert not errors.errors, [str(e) for e in errors.errors]
    return result


async def _cost(ctx, **values) -> tuple[Cost, Chain]:
    layer = Cost(options(**values), name="cost", context=ctx)
    await layer.open()
    return layer, Chain([layer])


def _session(ctx, backend, **kw):
    session = make_session(ctx, **kw)
    session.backend = backend
    return session


async def run(chain: Chain, session, text: str):
    """One operation the way a front door drives it; returns the op (rejection on it)."""
    op = make_operation(session, text=text)
    try:
        pending = chain.admit(op)
        if pending is not None:
            await pending
    except Reject:
        pass
    chain.complete(op)
    return op


def _decisions(ctx, decision: str, reason: str, tier: str) -> float:
    return ctx.metrics.registry.get_sample_value(
        "ogelkit_layer_decisions_total",
        {"layer": "cost", "decision": decision, "reason": reason, "tier": tier}) or 0.0


class TestCostContract(LayerContract):
    layer_class = Cost
    options = {"mode": "warn", "cache_size": 100, "cache_ttl": "1min",
               "estimate_unlimited": True}
    refusal_options = {**options, "mode": "enforce"}

    def session_backend(self, ctx):
        """Every contract session estimates (a backend with estimate_cost)."""
        return CountingBackend({"select * from a cross join b": 125_478.5}, delay=0.001)

    async def provoke_refusal(self, drive):
        """An expensive statement over the free tier's ceiling, in enforce mode."""
        session = await drive.connect(tier="free")
        op = await drive.operation(session, text="SELECT * FROM a CROSS JOIN b")
        assert op.rejection is not None and op.rejection.reason == Reason.COST


async def test_repeated_statement_is_estimated_once_and_decided_synchronously():
    backend = CountingBackend()
    async with test_context() as ctx:
        layer, chain = await _cost(ctx)
        session = _session(ctx, backend)
        first = await run(chain, session, "SELECT * FROM t WHERE id = 1")
        assert first.cost == 1.0 and first.rejection is None
        for i in range(2, 50):
            op = make_operation(session, text=f"SELECT * FROM t WHERE id = {i}")
            assert chain.admit(op) is None  # a hit: no awaitable
            assert op.cost == 1.0
        assert backend.calls == ["select * from t where id = ?"]
        assert layer.describe()["hits"] == 48 and layer.describe()["misses"] == 1


async def test_expensive_statement_refused_on_free_allowed_on_pro():
    backend = CountingBackend({"select * from a cross join b": 125_478.5})
    async with test_context() as ctx:
        _, chain = await _cost(ctx)
        free = await run(chain, _session(ctx, backend, tenant="f", tier="free"),
                         "SELECT * FROM a CROSS JOIN b")
        rej = free.rejection
        assert rej is not None and rej.reason == Reason.COST and rej.layer == "cost"
        assert rej.message == "estimated cost 125,478 exceeds the cost ceiling of tier free"
        assert rej.detail == "estimated cost 125,478, ceiling 10,000 on tier free."
        # starter's ceiling (50,000) is too low: the hint names the tier that allows it
        assert rej.hint == "Upgrade to pro (cost ceiling 200,000), or narrow the statement."
        assert free.cost == 125_478.5
        pro = await run(chain, _session(ctx, backend, tenant="p", tier="pro"),
                        "SELECT * FROM a CROSS JOIN b")
        assert pro.rejection is None and pro.cost == 125_478.5
        assert _decisions(ctx, "rejected", "cost", "free") == 1
        assert _decisions(ctx, "allowed", "ok", "pro") == 1
        # beyond every ceiling but enterprise's (unlimited)
        huge = CountingBackend({"select huge": 5e6})
        op = await run(chain, _session(ctx, huge, tier="pro"), "SELECT huge")
        assert op.rejection.hint == "Upgrade to enterprise (no cost ceiling), or narrow the statement."


async def test_no_tier_allows_it():
    config = minimal_config("[tiers.enterprise]\ncost_ceiling = 1000\n")
    async with test_context(config) as ctx:
        _, chain = await _cost(ctx)
        op = await run(chain, _session(ctx, CountingBackend({"select x": 5000}),
                                       tier="enterprise"), "SELECT x")
        assert op.rejection.hint.startswith("No tier allows a statement this expensive")


async def test_warn_mode_only_counts():
    backend = CountingBackend({"select big": 99_999})
    async with test_context() as ctx:
        _, chain = await _cost(ctx, mode="warn")
        op = await run(chain, _session(ctx, backend), "SELECT big")
        assert op.rejection is None and op.cost == 99_999
        assert _decisions(ctx, "warned", "cost", "free") == 1
        assert "acme" not in ctx.metrics.render().decode()


async def test_unplannable_statements_pass_untouched():
    backend = CountingBackend()
    async with test_context() as ctx:
        _, chain = await _cost(ctx)
        session = _session(ctx, backend)
        for text in ("SET work_mem = '1MB'", "BEGIN", "COMMIT", "SHOW work_mem"):
            op = make_operation(session, text=text)
            assert chain.admit(op) is None and op.cost is None
        assert backend.calls == []
        # A backend without the capability is never asked either.
        op = make_operation(_session(ctx, PlainBackend(None, name="p", context=ctx)))
        assert chain.admit(op) is None and op.cost is None


async def test_concurrent_misses_share_one_estimate():
    backend = CountingBackend({"select slow": 42.0}, delay=0.2)
    async with test_context() as ctx:
        _, chain = await _cost(ctx)
        session = _session(ctx, backend)
        ops = await asyncio.gather(*(run(chain, session, "SELECT slow") for _ in range(30)))
        assert backend.calls == ["select slow"]
        assert all(op.cost == 42.0 and op.rejection is None for op in ops)


async def test_estimates_are_per_tenant_database():
    backend = CountingBackend()
    async with test_context() as ctx:
        _, chain = await _cost(ctx)
        for tenant, db in (("a", "main"), ("a", "other"), ("b", "main"), ("a", "main")):
            await run(chain, _session(ctx, backend, tenant=tenant, database=db), "SELECT 1")
        assert len(backend.calls) == 3


async def test_failures_and_none_mean_unknown_and_pass():
    backend = CountingBackend({"select broken": "boom", "select opaque": None})
    async with test_context() as ctx:
        layer, chain = await _cost(ctx)
        session = _session(ctx, backend)
        for text in ("SELECT broken", "SELECT opaque"):
            op = await run(chain, session, text)
            assert op.rejection is None and op.cost is None
            # cached as unknown too: no second call inside the short retry window
            op = await run(chain, session, text)
            assert op.rejection is None
        assert len(backend.calls) == 2
        assert layer.describe()["failures"] == 1
        assert _decisions(ctx, "allowed", "unknown", "free") == 4


async def test_slow_estimate_lets_the_operation_pass_and_is_cached_later():
    backend = CountingBackend({"select slow": 50_000.0}, delay=0.3)
    async with test_context() as ctx:
        _, chain = await _cost(ctx, estimate_timeout="50ms")
        session = _session(ctx, backend)
        op = await run(chain, session, "SELECT slow")
        assert op.rejection is None and op.cost is None
        await asyncio.sleep(0.4)
        op = await run(chain, session, "SELECT slow")
        assert op.rejection is not None and op.rejection.reason == Reason.COST
        assert len(backend.calls) == 1


async def test_cache_ttl_and_size_are_bounded():
    backend = CountingBackend(delay=0)
    async with test_context() as ctx:
        layer, chain = await _cost(ctx, cache_size=3, cache_ttl="100ms")
        session = _session(ctx, backend)
        for i in range(5):
            await run(chain, session, f"SELECT c{i}")
        assert len(layer.cache) == 3
        await run(chain, session, "SELECT c4")  # still cached
        assert len(backend.calls) == 5
        await asyncio.sleep(0.15)
        await run(chain, session, "SELECT c4")  # expired: asked again
        assert len(backend.calls) == 6


async def test_unlimited_tiers_are_not_estimated_unless_asked():
    backend = CountingBackend()
    async with test_context() as ctx:
        _, chain = await _cost(ctx)
        op = await run(chain, _session(ctx, backend, tier="enterprise"), "SELECT 1")
        assert op.cost is None and backend.calls == []
    async with test_context() as ctx:
        _, chain = await _cost(ctx, estimate_unlimited=True)
        op = await run(chain, _session(ctx, backend, tier="enterprise"), "SELECT 1")
        assert op.cost == 1.0 and len(backend.calls) == 1


async def test_verbatim_repeats_skip_the_backends_cost_key():
    backend = CountingBackend(delay=0)
    async with test_context() as ctx:
        layer, chain = await _cost(ctx, cache_size=50)
        session = _session(ctx, backend)
        for _ in range(100):
            await run(chain, session, "SELECT * FROM t WHERE id = $1")
            await run(chain, session, "BEGIN")
        assert backend.key_calls == 2 and len(backend.calls) == 1
        # other literals: cost_key is asked (and maps to the same estimate)
        for i in range(10):
            await run(chain, session, f"SELECT * FROM t WHERE id = {i}")
        assert backend.key_calls == 12 and len(backend.calls) == 2
        # another tenant database never shares a remembered statement
        await run(chain, _session(ctx, backend, tenant="other"), "BEGIN")
        assert backend.key_calls == 13
        # bounded like the cache
        for i in range(200):
            await run(chain, session, f"SELECT {i}")
        assert layer.describe()["statements_remembered"] <= 50


async def test_remembering_pauses_when_every_text_is_new(monkeypatch):
    import ogelkit_layer_cost.layer as cost_module
    monkeypatch.setattr(cost_module, "ALIAS_WINDOW", 16)
    monkeypatch.setattr(cost_module, "ALIAS_QUIET", 2)
    backend = CountingBackend(delay=0)
    async with test_context() as ctx:
        layer, chain = await _cost(ctx)
        session = _session(ctx, backend)
        for i in range(20):  # literals inlined: every text is new
            await run(chain, session, f"SELECT * FROM t WHERE id = {i}")
        assert layer.describe()["remembering"] is False
        remembered = layer.describe()["statements_remembered"]
        for i in range(20, 36):
            await run(chain, session, f"SELECT * FROM t WHERE id = {i}")
        assert layer.describe()["statements_remembered"] == remembered  # nothing added
        for _ in range(40):  # after the quiet windows it tries again
            await run(chain, session, "SELECT * FROM t WHERE id = $1")
        assert layer.describe()["remembering"] is True
        assert len(backend.calls) == 2  # one estimate per normalised statement


def test_cache_evicts_oldest_first():
    cache = CostCache(2)
    cache.put("a", 1.0, 10)
    cache.put("b", 2.0, 10)
    cache.put("c", 3.0, 10)
    assert cache.get("a", 0) is None and cache.get("b", 0) == (2.0, 10)
    assert cache.get("c", 11) is None and len(cache) == 1
