"""Batches through the seven layers (issue 15, the cheaper layer contract): pipelined
requests admitted and completed as one Operation (``count`` > 1) must leave the same
decisions and the same usage totals as the same requests one by one.

Driven directly through a Chain of the real layers (no front door), one tenant per run,
the same request sequence both ways: ``n`` requests as ``n`` operations, or as batches.
"""

from __future__ import annotations

import importlib

import pytest

from ogelkit.chain import Chain
from ogelkit.model import Reject
from ogelkit.testing import (
    isolated_plugins,
    make_operation,
    make_session,
    minimal_config,
    test_context,
)

pytestmark = pytest.mark.anyio

NAMES = ("gatekeeper", "ratelimit", "cost", "session", "timeout", "usage", "intelligence")
LAYERS = "".join(f'[[layers]]\ntype = "{name}"\n' for name in NAMES)
#: A tier whose rate limit the runs cross: burst 40, then 50 per second, refusing.
TIERS = ('[tiers.tight]\nbase = "pro"\nops_per_second = 50\nburst = 40\n')
EVER = (0.0, 4e9)


async def _run(control_url: str, tenant: str, batch: int, requests: int,
               errors_every: int) -> tuple[dict[str, float], dict[str, int]]:
    text = minimal_config(LAYERS.replace('type = "ratelimit"\n',
                                         'type = "ratelimit"\nmode = "reject"\n') + TIERS,
                          control_url=control_url)
    plugins = isolated_plugins(*((name, importlib.import_module(f"ogelkit_layer_{name}.plugin"))
                                 for name in NAMES))
    async with test_context(text, plugins=plugins) as ctx:
        layers = []
        for spec in ctx.config.layers:
            layer = spec.cls(spec.options, name=spec.name, context=ctx)
            await layer.open()
            layers.append(layer)
        chain = Chain(layers)
        assert chain.batches  # every built-in layer takes batches
        session = make_session(ctx, tenant=tenant, tier="tight")
        await chain.connect(session)
        outcome = {"admitted": 0, "refused": 0}
        sent = 0
        while sent < requests:
            n = min(batch, requests - sent)
            op = make_operation(session, "GET", None, kind="command", size=10 * n)
            op.count = n
            try:
                pending = chain.admit(op)
                assert pending is None  # in-process buckets decide synchronously
                outcome["admitted"] += n
                failed = sum(1 for i in range(sent, sent + n) if i % errors_every == 0)
                if failed:
                    op.error, op.failed = "ERR", failed
                op.bytes_out = 5 * n
                op.ended = op.started
            except Reject:
                outcome["refused"] += n
            chain.complete(op)
            sent += n
        chain.disconnect(session)
        for layer in reversed(layers):
            await layer.close()
        totals = {t.database: t for t in await ctx.store.usage_totals(tenant, *EVER)}
        return totals["main"].values, outcome


async def test_a_batch_counts_like_its_requests(tmp_path):
    """Inside the burst: 40 requests one by one and as 5 batches of 8 are all admitted, and
    the usage totals agree field by field (durations aside: a batch's wall time counts
    once)."""
    url = f"sqlite:///{tmp_path}/control.db"
    one, one_out = await _run(url, "single", 1, 40, errors_every=7)
    eight, eight_out = await _run(url, "batched", 8, 40, errors_every=7)
    assert one_out == eight_out == {"admitted": 40, "refused": 0}
    for field in ("operations", "errors", "rejected", "bytes_in", "bytes_out"):
        assert one[field] == eight[field], field
    assert one["operations"] == 40 and one["errors"] == 6  # requests 0, 7, ... 35


async def test_a_batch_is_admitted_like_its_first_request_and_pays_for_all(tmp_path):
    """192 requests at once: one by one, the burst (40) is admitted and the rest refused.
    In batches of 16, a batch passes when its first request would (three: 48, less than
    one batch past the burst) and is charged all 16 cells, so the rest are refused; every
    refused request is metered as refused."""
    url = f"sqlite:///{tmp_path}/control.db"
    one, one_out = await _run(url, "single", 1, 192, errors_every=10**9)
    big, big_out = await _run(url, "batched", 16, 192, errors_every=10**9)
    assert one_out["admitted"] == 40
    assert big_out["admitted"] == 48
    for totals, out in ((one, one_out), (big, big_out)):
        assert totals["operations"] == out["admitted"]
        assert totals["rejected"] == out["refused"] == 192 - out["admitted"]


async def test_a_batch_bigger_than_the_burst_is_not_refused_forever(tmp_path):
    """A batch of 64 could never fit a burst of 40: it passes on its first request and the
    bucket owes the difference, so the next request is refused (not a way past the rate)."""
    url = f"sqlite:///{tmp_path}/control.db"
    totals, out = await _run(url, "oversized", 64, 65, errors_every=10**9)
    assert out == {"admitted": 64, "refused": 1}
    assert totals["operations"] == 64 and totals["rejected"] == 1
