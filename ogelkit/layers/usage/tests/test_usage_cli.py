"""``ogelkit usage show`` over what the usage layer stored (subprocess, real SQLite file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import anyio
import pytest

from ogelkit.chain import Chain
from ogelkit.control.records import DatabaseRecord
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_operation, make_session, minimal_config

PRICES = ('[tiers.starter.price]\nbase = 10\nincluded_vcpu_hours = 0\nvcpu_hour = 36\n'
          'included_gb_hours = 0\ngb_hour = 3.6\n')


@pytest.fixture
def meter_and_config(tmp_path, make_usage):
    url = f"sqlite:///{tmp_path}/cp.db"
    config = tmp_path / "config.toml"
    config.write_text(minimal_config(PRICES, control_url=url))

    async def meter():
        async with make_usage('memory_per_connection = "1GiB"\n', control_url=url) as (ctx, layer):
            await ctx.store.create_tenant("acme", "starter")
            chain = Chain([layer])
            for database, n, seconds in (("main", 30, 2.0), ("cache", 10, 0.5)):
                s = make_session(ctx, tenant="acme", tier="starter", database=database)
                await chain.connect(s)
                for _ in range(n):
                    op = make_operation(s, size=10)
                    op.ended = op.started + seconds
                    op.rows = 1
                    chain.complete(op)
                limited = make_operation(s)
                limited.rejection = Reject(Reason.RATE, "slow down", layer="ratelimit")
                chain.complete(limited)
                s.closed_at = s.opened_at + 100.0  # 100 connection-seconds, 1 GiB each
                chain.disconnect(s)
            refused = make_session(ctx, tenant="acme")
            refused.rejection = Reject(Reason.AUTH, "bad password")
            chain.disconnect(refused)
            capped = make_session(ctx, tenant="acme", database="main")
            capped.db = DatabaseRecord("acme", "main", "postgres", "pg")
            capped.rejection = Reject(Reason.CONNECTIONS, "cap", layer="gatekeeper")
            chain.disconnect(capped)
            assert await layer.flush()

    anyio.run(meter, backend="asyncio")
    return config


def ogelkit(config, *args):
    env = {**os.environ, "OGELKIT_CONFIG": str(config), "OGELKIT_LOAD_PLUGINS": "usage"}
    return subprocess.run([sys.executable, "-m", "ogelkit", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_usage_show_reports_what_was_metered_and_invoices_the_whole_tenant(meter_and_config):
    month = time.strftime("%Y-%m", time.gmtime())
    result = ogelkit(meter_and_config, "usage", "show", "acme", "--month", month, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    by_db = {d["database"]: d for d in data["databases"]}
    assert set(by_db) == {"main", "cache", ""}
    main, cache = by_db["main"], by_db["cache"]
    assert main["operations"] == 30 and isinstance(main["operations"], int)
    assert main["rows"] == 30 and main["bytes_in"] == 30 * 10 + 16
    assert main["rejected"] == 2 and main["rejected_rate"] == 1
    assert main["rejected_connections"] == 1 and main["connections"] == 1
    assert main["duration"] == pytest.approx(60.0) and main["vcpu_seconds"] == pytest.approx(60.0)
    assert main["gb_seconds"] == pytest.approx(100.0)
    assert cache["operations"] == 10 and cache["vcpu_seconds"] == pytest.approx(5.0)
    assert by_db[""]["auth_failures"] == 1
    inv = data["invoice"]
    assert inv["vcpu_hours"] == pytest.approx(65 / 3600)
    assert inv["gb_hours"] == pytest.approx(200 / 3600)
    assert inv["total"] == pytest.approx(10 + 65 / 100 + 200 / 1000, abs=0.01)

    only = json.loads(ogelkit(meter_and_config, "usage", "show", "acme", "--month", month,
                              "--database", "cache", "--json").stdout)
    assert [d["database"] for d in only["databases"]] == ["cache"]
    assert only["invoice"] == inv  # the invoice is per tenant, whatever the filter

    human = ogelkit(meter_and_config, "usage", "show", "acme", "--month", month)
    assert human.returncode == 0, human.stderr
    assert "(no database)" in human.stdout and "refusals:" in human.stdout
    assert "total" in human.stdout and f"{inv['total']:.2f}" in human.stdout


def test_month_out_of_range_is_a_clean_usage_error(meter_and_config):
    for bad in ("0000-01", "2026-13", "soon"):
        result = ogelkit(meter_and_config, "usage", "show", "acme", "--month", bad)
        assert result.returncode == 2 and "2026-11" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
