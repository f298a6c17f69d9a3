"""Cost calibration from (cost, duration) pairs; tier advice from the control plane; the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import anyio
import pytest
from ogelkit_layer_intelligence.advice import advise
from ogelkit_layer_intelligence.calibration import Samples, fit, percentile, report

import ogelkit
from ogelkit.chain import Chain
from ogelkit.control.records import USAGE_FIELDS, DatabaseRecord, UsageEvent, UsageTotals
from ogelkit.testing import make_operation, make_session, minimal_config
from ogelkit.tiers import DEFAULT_TIER_TABLE, GB

pytestmark = pytest.mark.anyio


class Pg(ogelkit.Backend):
    type_name = "pgcal"
    protocol = "pgcal"


def costed(ctx, chain, backend, pairs):
    s = make_session(ctx, tier="free")
    s.backend = backend
    for cost, seconds in pairs:
        op = make_operation(s)
        op.cost = cost
        op.ended = op.started + seconds
        chain.complete(op)


def linear_pairs(n, *, a=0.002, b=1e-5, jitter=0.1, seed=7):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        cost = rng.uniform(10, 50_000)
        out.append((cost, (a + b * cost) * rng.uniform(1 - jitter, 1 + jitter)))
    return out


async def test_calibration_suggests_a_ceiling_per_tier_from_the_p99_target(make_intelligence):
    body = ('calibration_samples = 400\ncalibration_min_samples = 100\n'
            'latency_targets = { free = "1s", starter = "5s", pro = "30s" }\n')
    async with make_intelligence(body) as (ctx, layer):
        chain = Chain([layer])
        backend = Pg(None, name="pg-main", context=ctx)
        costed(ctx, chain, backend, linear_pairs(99))
        (only,) = layer.calibration().values()
        assert only["status"].startswith("collecting") and only["tiers"] == {}
        costed(ctx, chain, backend, linear_pairs(500, seed=8))
        rep = layer.calibration()["pg-main"]
        assert rep["samples"] == 400 and rep["seen"] == 599 and rep["status"] == "ok"
        fitted = rep["fit"]
        assert fitted["seconds_per_cost_unit"] == pytest.approx(1e-5, rel=0.05)
        assert 1.0 <= fitted["p99_slowdown"] <= 1.2  # the 10 % jitter
        free, starter, pro = (rep["tiers"][t] for t in ("free", "starter", "pro"))
        # cost at which the slowest 1 % reach 1 s: (1/q - a)/b, about 90,000 units here
        q, a, b = fitted["p99_slowdown"], fitted["intercept_s"], fitted["seconds_per_cost_unit"]
        assert free["cost_at_target"] == pytest.approx((1 / q - a) / b, rel=1e-3)
        assert 80_000 < free["suggested_ceiling"] < 100_000
        assert starter["suggested_ceiling"] == pytest.approx(5 * free["suggested_ceiling"], rel=0.01)
        assert pro["suggested_ceiling"] > starter["suggested_ceiling"]
        assert free["configured_ceiling"] == 10_000  # the default tier table, for comparison
        assert "enterprise" not in rep["tiers"]  # no target, no suggestion

        # Rejected, failed or uncosted operations teach nothing.
        before = layer.describe()["calibration_pairs"]
        s = make_session(ctx)
        s.backend = backend
        chain.complete(make_operation(s))
        errored = make_operation(s)
        errored.cost, errored.error = 5.0, "XX000"
        chain.complete(errored)
        assert layer.describe()["calibration_pairs"] == before


def test_the_p95_cost_is_a_floor_and_flat_costs_give_no_suggestion():
    steep = Samples(100)
    for i in range(100):  # duration climbs fast with cost: the fit alone says "900"
        steep.add(1000.0 + i, 2.0 + i * 0.01)
    entry = report(steep, {"free": 1.0}, {"free": 10.0}, min_samples=10)["tiers"]["free"]
    assert entry["cost_at_target"] == pytest.approx(900, abs=1)
    # ... but refusing what the backend runs every day is worse: the p95 cost is the floor.
    assert entry["suggested_ceiling"] == pytest.approx(percentile(steep.costs, 95), abs=0.1)

    slow = Samples(100)
    for i in range(100):  # 2 s of overhead whatever the cost: a 1 s target is out of reach
        slow.add(10.0 * (i + 1), 2.0 + i * 1e-4)
    entry = report(slow, {"free": 1.0}, {}, min_samples=10)["tiers"]["free"]
    assert entry["cost_at_target"] is None and "missed" in entry["note"]
    assert entry["suggested_ceiling"] == pytest.approx(percentile(slow.costs, 95))

    flat = Samples(10)
    for i in range(10):
        flat.add(50.0, 0.01 * i)
    assert fit(flat.costs, flat.durations) is None
    assert "does not predict" in report(flat, {"free": 1.0}, {}, min_samples=5)["status"]
    assert report(Samples(5), {"free": 1.0}, {}, min_samples=5)["samples"] == 0


def totals(**values) -> list[UsageTotals]:
    return [UsageTotals("acme", "main", {f: float(values.get(f, 0)) for f in USAGE_FIELDS})]


def test_advice_names_the_tier_that_allows_what_was_refused():
    free = DEFAULT_TIER_TABLE["free"]
    adv = advise("acme", free, DEFAULT_TIER_TABLE,
                 totals(rejected_connections=12, rejected_cost=87, rejected_rate=3,
                        auth_failures=15, banned=4),
                 1.0, min_refusals=10, storage_ratio=0.8, auth_failures=10)
    kinds = {r.kind: r for r in adv.recommendations}
    assert set(kinds) == {"connections", "cost_ceiling"}  # 3 rate refusals: below the bar
    assert kinds["connections"].tier == "starter"
    assert kinds["connections"].message == (
        "12 connections refused at the cap in 1 day (free: 5 connections); starter allows "
        "10 connections.")
    assert kinds["cost_ceiling"].tier == "starter" and "87 operations" in kinds["cost_ceiling"].message
    assert adv.recommended_tier == "starter"
    assert any("15 failed logins" in n for n in adv.notes)
    assert any("4 requests refused by a ban" in n for n in adv.notes)

    pro = DEFAULT_TIER_TABLE["pro"]
    big = advise("acme", pro, DEFAULT_TIER_TABLE,
                 totals(timeouts=40, storage_bytes=90 * GB), 7.0,
                 min_refusals=10, storage_ratio=0.8, auth_failures=10)
    kinds = {r.kind: r for r in big.recommendations}
    assert kinds["statement_timeout"].tier == "enterprise"
    assert kinds["storage"].tier == "enterprise" and "90%" in kinds["storage"].message
    assert big.recommended_tier == "enterprise"

    top = advise("acme", DEFAULT_TIER_TABLE["enterprise"], DEFAULT_TIER_TABLE,
                 totals(rejected_connections=50), 1.0, min_refusals=10, storage_ratio=0.8,
                 auth_failures=10)
    assert top.recommended_tier is None and "no tier allows more" in top.recommendations[0].message

    calm = advise("acme", free, DEFAULT_TIER_TABLE, totals(operations=1000), 30.0,
                  min_refusals=10, storage_ratio=0.8, auth_failures=10)
    assert calm.recommended_tier is None and "fits this workload" in calm.notes[0]


def test_advice_compares_prices_at_the_projected_usage():
    starter = DEFAULT_TIER_TABLE["starter"]  # $10 + 0.15/vCPU-h beyond 25
    # 100 vCPU-hours in 3 days: 1000 vCPU-hours a month projected.
    adv = advise("acme", starter, DEFAULT_TIER_TABLE, totals(vcpu_seconds=100 * 3600), 3.0,
                 min_refusals=10, storage_ratio=0.8, auth_failures=10)
    (rec,) = adv.recommendations
    # starter: 10 + 975*0.15 = 156.25; pro: 50 + 800*0.12 = 146; enterprise: 200
    assert rec.kind == "price" and rec.tier == "pro"
    assert rec.evidence["cost_now"] == 156.25 and rec.evidence["cost_on_pro"] == 146.0


@pytest.fixture
def cli(tmp_path, make_intelligence):
    url = f"sqlite:///{tmp_path}/cp.db"
    config = tmp_path / "config.toml"
    config.write_text(minimal_config('[[layers]]\ntype = "intelligence"\n'
                                     "advise_min_refusals = 5\n", control_url=url))

    def run(*args):
        env = {**os.environ, "OGELKIT_CONFIG": str(config),
               "OGELKIT_LOAD_PLUGINS": "intelligence"}
        return subprocess.run([sys.executable, "-m", "ogelkit", *args], capture_output=True,
                              text=True, env=env, timeout=60)

    run.url = url
    return run


def test_tenants_advise_and_calibration_commands_read_the_control_plane(cli, make_intelligence):
    async def seed():
        async with make_intelligence(control_url=cli.url) as (ctx, layer):
            await ctx.store.create_tenant("acme", "free")
            await ctx.store.put_database(DatabaseRecord("acme", "main", "pgcal", "pg-main"))
            now = time.time()
            await ctx.store.record_usage([
                UsageEvent("acme", "main", ts=now - 3600, operations=500, rejected=6,
                           rejected_rate=6),
                UsageEvent("acme", "main", ts=now - 60, operations=20, rejected=7,
                           rejected_connections=7),
                UsageEvent("acme", "main", ts=now - 40 * 86400, rejected_cost=99),  # too old
            ])
            costed(ctx, Chain([layer]), Pg(None, name="pg-main", context=ctx),
                   linear_pairs(200))
            assert await layer.write_reports() == 1

    anyio.run(seed, backend="asyncio")
    out = cli("tenants", "advise", "acme", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["tier"] == "free" and data["recommended_tier"] == "starter"
    assert {r["kind"] for r in data["recommendations"]} == {"connections", "ops_per_second"}
    assert data["usage"]["operations"] == 520
    assert data["calibration"]["pg-main"]["samples"] == 200
    assert data["calibration"]["pg-main"]["suggested_ceiling"] > 0

    human = cli("tenants", "advise", "acme", "--days", "7")
    assert human.returncode == 0, human.stderr
    assert "recommended tier: starter" in human.stdout
    assert "7 connections refused at the cap" in human.stdout
    assert "calibration on pg-main" in human.stdout

    cal = cli("intelligence", "calibration")
    assert cal.returncode == 0, cal.stderr
    assert "backend pg-main: 200 samples, ok" in cal.stdout and "SUGGESTED" in cal.stdout
    assert json.loads(cli("intelligence", "calibration", "--json").stdout)["pg-main"]["status"] == "ok"

    missing = cli("tenants", "advise", "nobody")
    assert missing.returncode == 1 and 'no tenant "nobody"' in missing.stderr
