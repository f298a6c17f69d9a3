"""All seven layers in the pinned order through the Postgres front door: the other layers'
refusals (connection cap, rate, cost ceiling, deadline) reach the usage store by reason,
`ogelkit tenants advise` recommends the tier that allows them, and the intelligence layer
calibrates cost to duration from the cost layer's real EXPLAIN estimates."""

from __future__ import annotations

import time

import anyio
import asyncpg
import psycopg
import pytest

from . import conftest
from .conftest import Tenant, thread_gateway

SEVEN = """
[[layers]]
type = "gatekeeper"

[[layers]]
type = "ratelimit"

[[layers]]
type = "cost"

[[layers]]
type = "session"

[[layers]]
type = "timeout"

[[layers]]
type = "usage"
flush_interval = "300ms"

[[layers]]
type = "intelligence"
advise_min_refusals = 3
calibration_min_samples = 20
report_interval = "300ms"
"""

# A small free tier, so that every limit is reached quickly.
TIERS = """
[tiers.free]
connections = 2
ops_per_second = 5
burst = 5
cost_ceiling = 5000
statement_timeout = "1s"
"""


@pytest.fixture(autouse=True)
def _all_layers(monkeypatch):
    monkeypatch.setattr(conftest, "PLUGINS", conftest.PLUGINS +
                        ",gatekeeper,ratelimit,cost,timeout")
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", conftest.PLUGINS)


def refused(gw, tenant, sql: str) -> str | None:
    """SQLSTATE of the refusal of one statement on a fresh asyncpg connection (None: it
    ran). asyncpg, because libpq drivers report a refused login without its SQLSTATE."""
    async def attempt():
        try:
            conn = await asyncpg.connect(**gw.asyncpg_kw(tenant))
        except asyncpg.PostgresError as exc:
            return f"connect:{exc.sqlstate}"
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            return exc.sqlstate
        finally:
            await conn.close()
        return None
    return anyio.run(attempt)


def test_refusals_by_reason_drive_advice_and_costs_are_calibrated(workdir, backend):
    small, big = Tenant("free", backend=backend), Tenant("starter", backend=backend)
    with thread_gateway(workdir, [small, big], layers=SEVEN, extra=TIERS) as gw:
        # connection cap: two connections held, the third refused (53300) each time
        holders = [psycopg.connect(gw.conninfo(small), autocommit=True) for _ in range(2)]
        try:
            caps = [refused(gw, small, "SELECT 1") for _ in range(4)]
        finally:
            for conn in holders:
                conn.close()
        assert caps == ["connect:53300"] * 4

        # rate: 5/s with a burst of 5, so a tight loop of 15 is mostly refused (53400)
        rates = 0
        with psycopg.connect(gw.conninfo(small), autocommit=True) as conn:
            for _ in range(15):
                try:
                    conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    assert exc.sqlstate == "53400"
                    rates += 1
        assert rates >= 5
        time.sleep(1.5)  # refill the bucket

        # cost ceiling (54001) from the planner's estimate, and the 1 s deadline (57014)
        expensive = ("SELECT count(*) FROM generate_series(1, 100000) a "
                     "CROSS JOIN generate_series(1, 1000) b")
        costs = [refused(gw, small, expensive) for _ in range(3)]
        assert costs == ["54001"] * 3
        time.sleep(1.0)
        slow = [refused(gw, small, "SELECT pg_sleep(1.5)") for _ in range(3)]
        assert slow == ["57014"] * 3

        # calibration: starter queries of growing cost, all under its 50,000 ceiling
        with psycopg.connect(gw.conninfo(big), autocommit=True) as conn:
            for i in range(40):
                n = 2_000 * (i + 1)
                # A distinct alias per query: literals are normalised away, so without it
                # all 40 shared one cost estimate (n = 2,000's) and the fit rested on the
                # SELECT 1s alone, which a loaded machine could make slower (a flake).
                conn.execute(f"SELECT count(*) FROM generate_series(1, {n}) g{i}(x) "
                             "WHERE x % 7 = 0").fetchone()

        def stored():
            rows = gw.cli.usage(small)["databases"]
            main = next((d for d in rows if d["database"] == "main"), {})
            return main if main.get("timeouts") == 3 and main.get("rejected_cost") == 3 else None

        deadline = time.monotonic() + 15
        while (main := stored()) is None:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert main["rejected_connections"] == 4 and main["rejected_rate"] == rates
        assert main["rejected"] == 4 + rates + 3

        advice = gw.cli.json("tenants", "advise", small.slug, "--days", "1")
        kinds = {r["kind"]: r for r in advice["recommendations"]}
        assert {"connections", "ops_per_second", "cost_ceiling", "statement_timeout"} <= set(kinds)
        assert kinds["connections"]["tier"] == "starter"
        assert "4 connections refused at the cap" in kinds["connections"]["message"]
        assert advice["recommended_tier"] == "starter"

        deadline = time.monotonic() + 10
        while True:
            calibration = gw.cli.json("intelligence", "calibration")
            if calibration.get(backend, {}).get("samples", 0) >= 20:
                break
            assert time.monotonic() < deadline, calibration
            time.sleep(0.3)
        pg = calibration[backend]  # calibrated per backend: pg or neon
        assert pg["status"] == "ok", pg
        assert pg["fit"]["seconds_per_cost_unit"] > 0
        for tier in ("free", "starter", "pro"):
            assert pg["tiers"][tier]["suggested_ceiling"] > 0
        assert pg["tiers"]["free"]["configured_ceiling"] == 5000
