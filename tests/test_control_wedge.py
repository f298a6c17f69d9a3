"""Issue 16, defect 1, end to end: clients resetting mid-login cannot wedge the SQLite
control plane.

Before the fix, 50 unauthenticated connections that sent a StartupMessage and reset (RST,
SO_LINGER 0) while their tenant lookup ran left a transaction open for good: /readyz 503,
"cannot start a transaction within a transaction" for every later transaction, the CLI
"database is locked", tier changes and suspensions no longer applied.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import asyncpg
import httpx
import pytest
from ogelkit_postgres import wire as pg
from ogelkit_postgres.testing import Tenant, gateway_config, pg_gateway, unique

A = Tenant(unique("cwa"))
B = Tenant(unique("cwb"))
CACHE = 'cache_ttl = "300ms"\n'  # lands in [control]: lookups go to the store again soon


def reset_during_login(port: int, users: list[str], *, hold: float) -> None:
    """Open one socket per user, send a StartupMessage, then reset them all (RST)."""
    socks = []
    for user in users:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(pg.startup_message({"user": user, "database": "main"}))
        socks.append(s)
    time.sleep(hold)
    for s in socks:
        s.close()


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # keep trying until the deadline
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached in {timeout}s (last error: {last!r})")


def cli(config_path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ogelkit", "-c", str(config_path), *args],
                          capture_output=True, text=True, timeout=60, env=os.environ.copy())


def test_resets_during_login_leave_sqlite_control_plane_working(tmp_path):
    control_url = f"sqlite:///{tmp_path}/control.db"
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(gateway_config([A, B], extra=CACHE, control_url=control_url))
    with pg_gateway([A, B], extra=CACHE, control_url=control_url) as gw:
        readyz = gw.running.url("/readyz")
        assert httpx.get(readyz, timeout=10).status_code == 200

        # Waves of 50 resets: known tenants (cache expired between waves) and unknown
        # names (always looked up), each reset at a different moment of the lookup.
        # Half the waves also run while another process (the CLI, say) holds the write lock
        # for 100 ms, with logins timing out at random moments of their lookup.
        other = sqlite3.connect(tmp_path / "control.db", isolation_level=None,
                                check_same_thread=False)
        saved_timeout = gw.door.handshake_timeout
        try:
            for wave in range(12):
                # Mostly names the gateway does not know: each one is a lookup in the store
                # (known tenants are served from the cache after their first lookup).
                users = [random.choice([A.slug, B.slug] + [unique("nobody")] * 8)
                         for _ in range(50)]
                contended = wave % 3 == 2
                if contended:
                    other.execute("BEGIN IMMEDIATE")
                    threading.Timer(0.1, other.execute, ("ROLLBACK",)).start()
                    gw.door.handshake_timeout = random.random() * 0.05
                reset_during_login(gw.port, users, hold=random.random() * 0.03)
                gw.door.handshake_timeout = saved_timeout
                time.sleep(0.35)
                # The store still answers at once.
                gw.call(gw.context.store.ping(), timeout=15)
        finally:
            gw.door.handshake_timeout = saved_timeout
            time.sleep(0.2)
            other.close()

        # /readyz is 200 (not 503 for 20 minutes).
        wait_for(lambda: httpx.get(readyz, timeout=10).status_code == 200, 15, "/readyz 200")

        # Real clients log in: psql and asyncpg.
        out = gw.psql(A, "-c", "SELECT 40 + 2")
        assert out.returncode == 0 and out.stdout.strip() == "42", out.stderr

        async def live_session():
            conn = await asyncpg.connect(**gw.asyncpg_kw(B), ssl=False, timeout=20)
            assert await conn.fetchval("SELECT 1") == 1
            return conn

        loop = asyncio.new_event_loop()
        try:
            conn = loop.run_until_complete(live_session())

            def b_tiers() -> set[str]:
                return {s.tier.name for s in gw.context.directory.sessions.of(B.slug)}

            assert b_tiers() == {"pro"}
            # The CLI (another process, the same SQLite file) is not locked out, and the
            # running gateway applies its tier change to the live session.
            done = cli(config_path, "tenants", "set-tier", B.slug, "free")
            assert done.returncode == 0, done.stderr
            wait_for(lambda: b_tiers() == {"free"}, 15, "tier change applied to the session")

            # A suspension closes the live session and refuses new logins.
            done = cli(config_path, "tenants", "suspend", B.slug)
            assert done.returncode == 0, done.stderr
            wait_for(lambda: not gw.context.directory.sessions.of(B.slug), 15,
                     "suspended session closed")
            with pytest.raises(asyncpg.PostgresError):
                loop.run_until_complete(conn.fetchval("SELECT 1"))
            done = cli(config_path, "tenants", "resume", B.slug)
            assert done.returncode == 0, done.stderr
            conn = wait_for(lambda: loop.run_until_complete(live_session()), 15,
                            "login after resume")
            loop.run_until_complete(conn.close())
        finally:
            loop.close()
        assert httpx.get(readyz, timeout=10).status_code == 200
