"""Config reload of a running `ogelkit run` (SIGHUP and POST /admin/reload): new tier values
and layer options reach a connection that stays open, a new backend and its tenant are
served, a bad config is reported and the running one kept, fixed tables need a restart."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import httpx
import psycopg

from ogelkit.testing import GatewayProcess, test_secret_key
from ogelkit.testing.services import pg_dsn

ADMIN = {"authorization": "Bearer reload-token"}
SUFFIX = secrets.token_hex(3)
ONE, TWO = f"rl-one-{SUFFIX}", f"rl-two-{SUFFIX}"


def _backend_and_tenant(backend: str, prefix: str, slug: str, password: str) -> str:
    """A Postgres backend and a free-tier tenant with its one database there."""
    return f"""
[backends.{backend}]
type = "postgres"
dsn = "{pg_dsn()}"
name_prefix = "{prefix}"

[tenants.{slug}]
tier = "free"
password = "{password}"
[tenants.{slug}.databases.main]
backend = "{backend}"
"""


def config(control: object, *, timeout: str, lock: str | None = None,
           second_backend: bool = False, http: int = 0) -> str:
    settings = f'settings = {{ lock_timeout = "{lock}" }}\n' if lock else ""
    # With the session settings, one option of every other layer changes too.
    grace, mode, queue, delay, batch, ban = (("2s", "warn", 7, "80ms", 400, "90s") if lock
                                             else ("1s", "enforce", 5, "50ms", 500, "60s"))
    text = f"""
[listen]
host = "127.0.0.1"
http = {http}
postgres = 0

[gateway]
admin_token = "reload-token"

[control]
url = "sqlite:///{control}"
secret_key = "{test_secret_key()}"
cache_ttl = "200ms"

[[layers]]
type = "gatekeeper"
queue_limit = {queue}

[[layers]]
type = "ratelimit"
max_delay = "{delay}"

[[layers]]
type = "cost"
mode = "{mode}"

[[layers]]
type = "session"
{settings}
[[layers]]
type = "timeout"
grace = "{grace}"

[[layers]]
type = "usage"
batch_size = {batch}

[[layers]]
type = "intelligence"
ban = "{ban}"

[tiers.free]
statement_timeout = "{timeout}"
""" + _backend_and_tenant("pg", "o7sreload_", ONE, "reload-pass-1")
    if second_backend:
        text += _backend_and_tenant("pg2", "o7sreload2_", TWO, "reload-pass-2")
    return text


def _wait_log(proc: GatewayProcess, msg: str, count: int, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [json.loads(ln) for ln in proc.log().splitlines() if f'"msg": "{msg}"' in ln]
        if len(lines) >= count:
            return lines[count - 1]
        time.sleep(0.05)
    raise AssertionError(f"no {count}th {msg!r} line:\n{proc.log()[-3000:]}")


def test_sighup_and_the_admin_call_reload_without_dropping_connections(tmp_path):
    control = tmp_path / "control.db"
    proc = GatewayProcess(config(control, timeout="10s"), workdir=str(tmp_path)).start(wait_ready=60)
    try:
        ports = proc.ports()
        dsn = (f"host=127.0.0.1 port={ports['postgres']} user={ONE} dbname=main "
               "password=reload-pass-1 sslmode=disable")
        with psycopg.connect(dsn, autocommit=True) as kept:
            assert kept.execute("SHOW statement_timeout").fetchone()[0] == "10s"

            # SIGHUP: a tier value, a layer option and a new backend with its tenant.
            proc.config_path.write_text(config(control, timeout="20s", lock="3s", second_backend=True))
            proc.signal(signal.SIGHUP)
            done = _wait_log(proc, "config reloaded", 1)
            assert "tiers" in done["changed"]
            assert {f"layers.{name}" for name in ("gatekeeper", "ratelimit", "cost", "session",
                                                   "timeout", "usage", "intelligence")} \
                <= set(done["changed"]), done
            assert "backends.pg2 (new)" in done["changed"] and "tenants" in done["changed"]
            assert done["needs_restart"] == [], done
            # The open connection is still there and gets the new values at its next use.
            assert kept.execute("SHOW statement_timeout").fetchone()[0] == "20s"
            assert kept.execute("SHOW lock_timeout").fetchone()[0] == "3s"
            two = dsn.replace(f"user={ONE}", f"user={TWO}").replace("reload-pass-1",
                                                                    "reload-pass-2")
            with psycopg.connect(two, autocommit=True) as other:
                assert other.execute("SELECT current_user").fetchone()[0].startswith(
                    "o7sreload2_")

            # A bad config: every problem reported, the running config kept.
            proc.config_path.write_text(config(control, timeout="20s", lock="3s", second_backend=True)
                                        .replace('tier = "free"', 'tier = "gold"', 1))
            proc.signal(signal.SIGHUP)
            failed = _wait_log(proc, "config reload failed; the running config is kept", 1)
            assert any('unknown tier "gold"' in p for p in failed["problems"]), failed
            assert kept.execute("SHOW statement_timeout").fetchone()[0] == "20s"

            # The admin call: the same, with the outcome in the response.
            admin = f"http://127.0.0.1:{ports['http']}/admin/reload"
            r = httpx.post(admin, headers=ADMIN, timeout=30)
            assert r.status_code == 422 and not r.json()["reloaded"], r.text
            proc.config_path.write_text(config(control, timeout="30s", lock="3s", second_backend=True)
                                        .replace('admin_token = "reload-token"',
                                                 'admin_token = "reload-token"\n'
                                                 'drain_timeout = "7s"')
                                        .replace('type = "ratelimit"',
                                                 'type = "ratelimit"\nkey_prefix = "x:"'))
            r = httpx.post(admin, headers=ADMIN, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["reloaded"] and body["changed"] == ["tiers"], body
            assert body["needs_restart"][0] == "[gateway]", body
            # a layer option it cannot take live: reported, the layer keeps its old one
            assert len(body["needs_restart"]) == 2 and body["needs_restart"][1].startswith(
                "layers.ratelimit (reconfigure failed: key_prefix"), body
            assert kept.execute("SHOW statement_timeout").fetchone()[0] == "30s"
            assert httpx.post(admin, timeout=10).status_code == 401
    finally:
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for slug in (ONE, TWO):  # their upstream roles and databases go with them
            subprocess.run([sys.executable, "-m", "ogelkit", "-c", str(proc.config_path),
                            "tenants", "delete", slug, "--yes"], cwd=tmp_path,
                           capture_output=True, env=os.environ, timeout=60)
