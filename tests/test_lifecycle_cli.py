"""``ogelkit databases list|show|sleep|wake``: through a running gateway's scheduler (the
request goes through the control plane), and directly on the backend when none runs."""

from __future__ import annotations

import os
import subprocess
import sys

from ogelkit_postgres.testing import Tenant, gateway_config, pg_gateway, unique

TIER = '[tiers.nap]\nbase = "free"\nrank = 9\nidle_before_sleep = "1h"\n'
LIFE = '[lifecycle]\ncheck_every = "200ms"\n'


def test_sleep_and_wake_from_the_cli(tmp_path):
    url = f"sqlite:///{tmp_path}/control.db"
    t = Tenant(unique("dlc"), tier="nap")
    config = tmp_path / "config.toml"
    config.write_text(gateway_config([t], extra=TIER + LIFE, control_url=url))

    def cli(*args: str) -> str:
        env = {**os.environ, "OGELKIT_CONFIG": str(config)}
        result = subprocess.run([sys.executable, "-m", "ogelkit", *args], capture_output=True,
                                text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr + result.stdout
        return result.stdout

    try:
        with pg_gateway([t], extra=TIER + LIFE, control_url=url, cleanup=False) as gw:
            assert gw.psql(t, "-c", "CREATE TABLE c AS SELECT 5 AS v").returncode == 0
            assert gw.pool(t).stats()["size"] >= 1
            out = cli("databases", "sleep", t.slug, "main")
            assert "applied it: asleep" in out and gw.context.gateway_id in out
            assert gw.pool(t).stats()["size"] == 0
            listing = cli("databases", "list", t.slug)
            assert "LAST COLD START" in listing and "asleep" in listing
            out = cli("databases", "wake", t.slug, "main")
            assert "applied it: active" in out
            assert gw.context.lifecycle.state_of(t.slug, "main") in ("active", "idle")
            shown = cli("databases", "show", t.slug, "main")
            assert "last cold start: 20" in shown and " ms)" in shown  # awake, no client: idle
            assert gw.psql(t, "-c", "SELECT v FROM c").stdout.strip() == "5"

        # No gateway any more: the CLI acts on the backend itself.
        assert "no gateway is running: put to sleep directly" in cli(
            "databases", "sleep", t.slug, "main")
        assert "asleep" in cli("databases", "show", t.slug, "main")
        assert "no gateway is running: woken directly" in cli("databases", "wake", t.slug, "main")
        assert '"state": "active"' in cli("databases", "list", t.slug, "--json")
    finally:
        cli("databases", "delete", t.slug, "main", "--yes")
