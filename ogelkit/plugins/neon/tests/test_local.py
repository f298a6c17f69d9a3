"""Neon-local databases through the gateway with psql, asyncpg and psycopg; branch, reset,
sleep/wake, a SIGKILL'd compute, the running-compute limit (real PostgreSQL 15 computes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psycopg
import pytest
from neon_helpers import neon_backend_toml, neon_gateway, new_data_dir, stop_all
from ogelkit_neon import NeonBackend
from ogelkit_neon.local import _pid_alive
from ogelkit_postgres.testing import PgGateway, Tenant, unique

from ogelkit import DatabaseRecord
from ogelkit.testing import minimal_config
from ogelkit.testing.contracts import BackendContract


def _backend(gw: PgGateway) -> NeonBackend:
    return gw.backend("neon")


def _db(gw: PgGateway, tenant: Tenant, name: str = "main") -> DatabaseRecord:
    db = gw.call(gw.context.store.get_database(tenant.slug, name))
    assert db is not None
    return db


def _branch(gw: PgGateway, tenant: Tenant, name: str, parent: str = "main") -> DatabaseRecord:
    async def go() -> DatabaseRecord:
        store = gw.context.store
        record = await store.get_tenant(tenant.slug)
        parent_db = await store.get_database(tenant.slug, parent)
        backend = _backend(gw)
        up = await backend.branch(record, parent_db, name, gw.context.directory.tier(record.tier))
        db = await store.put_database(DatabaseRecord(tenant.slug, name, "neon", "neon", up))
        gw.context.directory.invalidate(tenant.slug)
        return db
    return gw.call(go(), timeout=120)


def _reset(gw: PgGateway, tenant: Tenant, name: str) -> None:
    async def go() -> None:
        record = await gw.context.store.get_tenant(tenant.slug)
        await _backend(gw).reset(record, await gw.context.store.get_database(tenant.slug, name))
    gw.call(go(), timeout=120)


def _sql(gw: PgGateway, tenant: Tenant, sql: str, database: str = "main") -> str:
    out = gw.psql(tenant, "-c", sql, database=database)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _postmaster_pid(data_dir: str, tenant: Tenant, name: str) -> int | None:
    try:
        text = (Path(data_dir) / tenant.slug / name / "pgdata" / "postmaster.pid").read_text()
    except FileNotFoundError:
        return None
    return int(text.split("\n")[0])


def test_three_clients_write_and_read(neon_gw):
    gw, _ = neon_gw
    t = gw.tenants[0]
    _sql(gw, t, "CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY, body text)")
    _sql(gw, t, "INSERT INTO notes VALUES (1, 'psql')")

    async def with_asyncpg() -> list:
        conn = await asyncpg.connect(**gw.asyncpg_kw(t), timeout=20)
        try:
            await conn.execute("INSERT INTO notes VALUES ($1, $2)", 2, "asyncpg")
            assert await conn.fetchval("SELECT current_setting('server_version_num')::int") \
                // 10000 == 15
            return await conn.fetch("SELECT id FROM notes ORDER BY id")
        finally:
            await conn.close()
    assert [r["id"] for r in asyncio.run(with_asyncpg())] == [1, 2]

    with psycopg.connect(gw.conninfo(t), connect_timeout=20) as conn:
        conn.execute("INSERT INTO notes VALUES (%s, %s)", (3, "psycopg"))
        conn.commit()
        rows = conn.execute("SELECT body FROM notes ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["psql", "asyncpg", "psycopg"]
    # Tenants are isolated: the other tenant's compute has no such table.
    other = gw.psql(gw.tenants[1], "-c", "SELECT count(*) FROM notes")
    assert other.returncode != 0 and "does not exist" in other.stderr


def test_branch_sees_parent_rows_then_diverges_and_reset(neon_gw):
    gw, data_dir = neon_gw
    t = gw.tenants[1]
    _sql(gw, t, "CREATE TABLE items (n int); INSERT INTO items SELECT generate_series(1, 100)")
    dev = _branch(gw, t, "dev")
    assert dev.upstream["parent"] == "main"
    assert _sql(gw, t, "SELECT count(*) FROM items", database="dev") == "100"
    # Later writes diverge both ways.
    _sql(gw, t, "INSERT INTO items VALUES (1000)", database="dev")
    _sql(gw, t, "DELETE FROM items WHERE n <= 10")
    assert _sql(gw, t, "SELECT count(*) FROM items", database="dev") == "101"
    assert _sql(gw, t, "SELECT count(*) FROM items") == "90"
    # Each branch is its own compute (its own postmaster).
    assert _postmaster_pid(data_dir, t, "dev") != _postmaster_pid(data_dir, t, "main")
    # psycopg sees the branch too.
    with psycopg.connect(gw.conninfo(t, "dev"), connect_timeout=20) as conn:
        assert conn.execute("SELECT max(n) FROM items").fetchone()[0] == 1000
    # Reset: the branch takes the parent's *current* data; its own write is gone.
    _reset(gw, t, "dev")
    assert _sql(gw, t, "SELECT count(*), max(n) FROM items", database="dev") == "90|100"
    # A branch of a sleeping parent is a file copy; it sees the same rows.
    gw.call(_backend(gw).sleep(_db(gw, t)))
    assert _postmaster_pid(data_dir, t, "main") is None
    cold = _branch(gw, t, "cold")
    meta = _backend(gw).driver.known_meta(t.slug, "cold")
    assert meta["method"] == "copy", meta
    assert _sql(gw, t, "SELECT count(*) FROM items", database="cold") == "90"
    assert cold.upstream["parent"] == "main"
    storage = gw.call(_backend(gw).storage_bytes(_db(gw, t, "dev")))
    assert storage is not None and storage > 10 * 1024 * 1024


def test_sleep_stops_the_compute_and_wake_keeps_the_data(neon_gw):
    gw, data_dir = neon_gw
    t = gw.tenants[0]
    _sql(gw, t, "CREATE TABLE IF NOT EXISTS kept (v text); INSERT INTO kept VALUES ('before')")
    backend = _backend(gw)
    db = _db(gw, t)
    pid = _postmaster_pid(data_dir, t, "main")
    assert pid is not None and _pid_alive(pid)
    gw.call(backend.sleep(db))
    assert _postmaster_pid(data_dir, t, "main") is None
    assert not _pid_alive(pid)
    pool = gw.pool(t, backend="neon")
    assert pool is None or not pool.idle  # no pooled upstream connection left
    starts = backend.driver.cold_starts
    gw.call(backend.wake(db))
    assert backend.driver.cold_starts == starts + 1
    new_pid = _postmaster_pid(data_dir, t, "main")
    assert new_pid is not None and new_pid != pid
    # psql through the gateway after the explicit wake: the data survived.
    assert "before" in _sql(gw, t, "SELECT v FROM kept")


def test_killed_compute_is_recovered_on_next_wake(neon_gw):
    gw, data_dir = neon_gw
    t = gw.tenants[0]
    _sql(gw, t, "CREATE TABLE IF NOT EXISTS crash (v int); INSERT INTO crash VALUES (42)")
    backend = _backend(gw)
    pid = _postmaster_pid(data_dir, t, "main")
    assert pid is not None
    crashes = backend.driver.crashes
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid)
    gw.call(backend.wake(_db(gw, t)), timeout=60)
    assert backend.driver.crashes == crashes + 1
    assert _sql(gw, t, "SELECT v FROM crash") == "42"
    # And once more without the explicit wake: a new connection restarts it too.
    pid = _postmaster_pid(data_dir, t, "main")
    os.kill(pid, signal.SIGKILL)
    while _pid_alive(pid) and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    gw.call(backend.sleep(_db(gw, t)))  # closes the dead pooled connections
    assert _sql(gw, t, "SELECT count(*) FROM crash") == "1"
    assert backend.driver.crashes == crashes + 2


def test_running_compute_limit_sleeps_the_least_recently_used():
    tenants = [Tenant(unique("nlru"), backend="neon") for _ in range(3)]
    with neon_gateway(tenants, local="max_running_computes = 2") as (gw, data_dir):
        backend = _backend(gw)
        for t in tenants:
            _sql(gw, t, "SELECT 1")
            # The pooled connection goes back idle: no client holds this compute.
        assert backend.driver.running_computes() <= 2
        assert _postmaster_pid(data_dir, tenants[0], "main") is None  # the oldest slept
        assert _postmaster_pid(data_dir, tenants[2], "main") is not None
        _sql(gw, tenants[0], "SELECT 1")  # wakes again, another one makes room
        assert backend.driver.running_computes() <= 2


def test_gateway_restart_adopts_running_computes():
    tenant = Tenant(unique("nrst"), backend="neon")
    data_dir = new_data_dir()
    control = os.path.join(data_dir, "control.db")
    from ogelkit_postgres.testing import pg_gateway
    try:
        with pg_gateway([tenant], backends=neon_backend_toml(
                data_dir, local="stop_computes_on_close = false"),
                control_url=f"sqlite:///{control}") as gw:
            _sql(gw, tenant, "CREATE TABLE r (v int); INSERT INTO r VALUES (7)")
            pid = _postmaster_pid(data_dir, tenant, "main")
        assert pid is not None and _pid_alive(pid)  # left running on purpose
        with pg_gateway([tenant], backends=neon_backend_toml(data_dir),
                        control_url=f"sqlite:///{control}") as gw:
            comp = _backend(gw).driver.computes[f"{tenant.slug}/main"]
            assert comp.running and comp.pid == pid and not comp.started_here
            assert _sql(gw, tenant, "SELECT v FROM r") == "7"
            assert _postmaster_pid(data_dir, tenant, "main") == pid
    finally:
        stop_all(data_dir)
        import shutil
        shutil.rmtree(data_dir, ignore_errors=True)


def test_cli_branch_and_reset(tmp_path):
    data_dir = new_data_dir()
    control = os.path.join(data_dir, "control.db")
    config = minimal_config(control_url=f"sqlite:///{control}").replace(
        "http = 0\n", "http = 0\npostgres = 0\n", 1) + neon_backend_toml(data_dir)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(config)
    env = {**os.environ, "OGELKIT_CONFIG": str(cfg)}
    exe = [sys.executable, "-m", "ogelkit"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*exe, *args], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return out
    try:
        made = cli("tenants", "create", "acme", "--tier", "free").stdout
        cli("databases", "create", "acme", "main", "--kind", "neon")
        password = made.split("password:")[1].split()[0]
        # Write through a gateway, then branch and reset from the CLI while it runs.
        tenant = Tenant("acme")
        tenant.password = password
        from ogelkit.testing import gateway_thread
        with gateway_thread(config) as running:
            gw = PgGateway(running, [tenant])
            _sql(gw, tenant, "CREATE TABLE c (v int); INSERT INTO c VALUES (1)")
            out = cli("databases", "branch", "acme", "feature", "--from", "main")
            assert "created branch feature of main" in out.stdout
            gw.context.directory.invalidate()
            assert _sql(gw, tenant, "SELECT count(*) FROM c", database="feature") == "1"
            _sql(gw, tenant, "INSERT INTO c VALUES (2)", database="feature")
            gw.call(gw.backend("neon").sleep(_db(gw, tenant, "feature")))
            cli("databases", "reset", "acme", "feature", "--yes")
            assert _sql(gw, tenant, "SELECT count(*) FROM c", database="feature") == "1"
            listed = cli("databases", "list", "acme").stdout
            assert "feature" in listed and "neon" in listed
        bad = subprocess.run([*exe, "databases", "reset", "acme", "main", "--yes"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and "not a branch" in bad.stderr
    finally:
        stop_all(data_dir)
        import shutil
        shutil.rmtree(data_dir, ignore_errors=True)


_CONTRACT_DIR = new_data_dir()


@pytest.fixture(autouse=True, scope="module")
def _contract_cleanup():
    yield
    stop_all(_CONTRACT_DIR)
    import shutil
    shutil.rmtree(_CONTRACT_DIR, ignore_errors=True)


class TestNeonLocalContract(BackendContract):
    backend_class = NeonBackend
    options = {"local": {"data_dir": _CONTRACT_DIR, "port_range": "56100-56999"}}


def test_compute_seconds_are_metered_from_start_to_stop(neon_gw):
    gw, _ = neon_gw
    t = gw.tenants[1]
    backend = _backend(gw)
    db = _db(gw, t)
    _sql(gw, t, "SELECT 1")  # the compute runs
    backend.compute_seconds()  # what ran so far is taken; measure from here
    time.sleep(1.0)
    gw.call(backend.sleep(db))  # stopped: its running time is fixed at the stop
    time.sleep(0.5)
    taken = backend.compute_seconds()
    seconds = taken.get((t.slug, "main"), 0.0)
    assert 1.0 <= seconds < 3.0, taken
    assert (t.slug, "main") not in backend.compute_seconds()  # consumed, and nothing runs
    gw.call(backend.wake(db))
    assert gw.call(backend.running(db)) is True
    gw.call(backend.sleep(db))
    assert gw.call(backend.running(db)) is False


def test_a_cancel_request_reaches_the_branchs_own_compute(neon_gw):
    gw, _ = neon_gw
    t = gw.tenants[0]
    with psycopg.connect(gw.conninfo(t), autocommit=True) as conn:
        import threading
        timer = threading.Timer(0.5, conn.cancel_safe)  # PQcancel would hold the GIL
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10  # the compute's port, not the shared server's
        assert conn.execute("SELECT 3").fetchone()[0] == 3
