"""Session layer through the Postgres front door: each client's SHOW reflects its tier, a
tier change applies from the next checkout, and the settings are enforced upstream."""

from __future__ import annotations

import time

import anyio
import asyncpg
import psycopg
import pytest

from .conftest import Tenant, thread_gateway

LAYERS = '[[layers]]\ntype = "session"\n'


def show(conn: psycopg.Connection, name: str) -> str:
    return conn.execute(f"SHOW {name}").fetchone()[0]


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_each_client_sees_its_tiers_settings(workdir, mode, backend):
    free, pro = Tenant("free", backend=backend), Tenant("pro", backend=backend)
    with thread_gateway(workdir, [free, pro], layers=LAYERS, mode=mode) as gw:
        expected = {
            free: {"work_mem": "16MB", "statement_timeout": "10s",
                   "idle_in_transaction_session_timeout": "30s",
                   "max_parallel_workers_per_gather": "2",
                   # the client's own (it set none): no tier or tenant shown (issue 16)
                   "application_name": ""},
            pro: {"work_mem": "256MB", "statement_timeout": "1min",
                  "idle_in_transaction_session_timeout": "2min",
                  "max_parallel_workers_per_gather": "8",
                  "application_name": ""},
        }
        for tenant, settings in expected.items():
            with psycopg.connect(gw.conninfo(tenant), autocommit=True) as conn:
                for name, value in settings.items():
                    assert show(conn, name) == value, (tenant.tier, name)
                # pg_stat_activity upstream agrees with what the client set
                me = conn.execute("SELECT application_name FROM pg_stat_activity "
                                  "WHERE pid = pg_backend_pid()").fetchone()[0]
                assert me == ""
            # psql (simple protocol) sees the same
            out = gw.psql(tenant, "-c", "SHOW work_mem")
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == settings["work_mem"]


def test_asyncpg_clients_and_per_tier_overrides(workdir):
    layers = LAYERS + ('settings = { lock_timeout = "3s" }\n'
                       '[layers.tiers.starter]\nwork_mem = "100MB"\n')
    starter = Tenant("starter")
    with thread_gateway(workdir, [starter], layers=layers) as gw:
        async def check():
            conn = await asyncpg.connect(**gw.asyncpg_kw(starter))
            try:
                assert await conn.fetchval("SHOW work_mem") == "100MB"  # the layer's override
                assert await conn.fetchval("SHOW lock_timeout") == "3s"  # every tier
                assert await conn.fetchval("SHOW statement_timeout") == "30s"  # the backend's
                # a prepared statement (extended protocol) runs with the settings too
                stmt = await conn.prepare("SELECT current_setting('work_mem')")
                assert await stmt.fetchval() == "100MB"
            finally:
                await conn.close()
        anyio.run(check)


def test_a_tier_change_applies_from_the_next_checkout_and_is_enforced(workdir, backend):
    # Short statement timeouts so that enforcement is visible in a test.
    extra = ('[tiers.free]\nstatement_timeout = "300ms"\n'
             '[tiers.starter]\nstatement_timeout = "5s"\n')
    tenant = Tenant("free", backend=backend)
    with thread_gateway(workdir, [tenant], layers=LAYERS, extra=extra) as gw:
        with psycopg.connect(gw.conninfo(tenant), autocommit=True) as conn:
            assert show(conn, "work_mem") == "16MB"
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                conn.execute("SELECT pg_sleep(1)")
            assert info.value.sqlstate == "57014"

            gw.cli("tenants", "set-tier", tenant.slug, "starter")
            deadline = time.monotonic() + 10
            while show(conn, "work_mem") != "64MB":  # each statement is a new checkout
                assert time.monotonic() < deadline, "tier change never reached the session"
                time.sleep(0.1)
            assert show(conn, "statement_timeout") == "5s"
            conn.execute("SELECT pg_sleep(1)")  # allowed on starter, on the same connection

        # In a transaction the settings stay put until it ends (no change mid-transaction).
        with psycopg.connect(gw.conninfo(tenant)) as conn:
            assert show(conn, "work_mem") == "64MB"
            gw.cli("tenants", "set-tier", tenant.slug, "pro")
            time.sleep(1.0)
            assert show(conn, "work_mem") == "64MB"  # still the same transaction
            conn.commit()
            deadline = time.monotonic() + 10
            while show(conn, "work_mem") != "256MB":
                assert time.monotonic() < deadline
                conn.commit()
                time.sleep(0.1)
