"""Usage layer through the Postgres front door: `ogelkit usage show` reports what the test
clients did; SIGTERM under load loses nothing; SIGKILL loses at most one window."""

from __future__ import annotations

import signal
import time

import anyio
import asyncpg
import psycopg
import pytest

from .conftest import Tenant, log_lines, process_gateway, thread_gateway

MB, GIB = 1024**2, 1024**3


def usage_layers(flush: str = "500ms", storage: str = "10min") -> str:
    return ('[[layers]]\ntype = "session"\n\n'
            f'[[layers]]\ntype = "usage"\nflush_interval = "{flush}"\n'
            f'storage_interval = "{storage}"\n')


def by_database(data: dict) -> dict[str, dict]:
    return {d["database"]: d for d in data["databases"]}


def wait_for(predicate, within: float = 15.0, every: float = 0.3):
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(every)


def test_usage_show_reports_what_the_clients_did(workdir, backend):
    tenant = Tenant("free", databases=("main", "other"), backend=backend)
    with thread_gateway(workdir, [tenant], layers=usage_layers()) as gw:
        # main: psycopg (extended protocol) and psql (simple protocol)
        with psycopg.connect(gw.conninfo(tenant), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 50)")
            for _ in range(20):
                assert len(conn.execute("SELECT * FROM t").fetchall()) == 50
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT * FROM no_such_table")
            conn.execute("UPDATE t SET id = id + 1 WHERE id <= 5")
        out = gw.psql(tenant, "-c", "SELECT count(*) FROM t")
        assert out.returncode == 0 and out.stdout.strip() == "50", out.stderr
        # other: asyncpg, prepared statements
        async def other():
            conn = await asyncpg.connect(**gw.asyncpg_kw(tenant, "other"))
            try:
                for i in range(10):
                    assert (await conn.fetch("SELECT $1::int", i))[0][0] == i
                # fetchval asks for one row at most: the server ends with PortalSuspended,
                # which carries no row count (operations, but no rows, are metered)
                assert await conn.fetchval("SELECT 42") == 42
                assert await conn.fetchval("SELECT 43") == 43
            finally:
                await conn.close()
        anyio.run(other)

        def stored():
            data = gw.cli.usage(tenant)
            dbs = by_database(data)
            main, oth = dbs.get("main", {}), dbs.get("other", {})
            done = (main.get("operations") == 25 and oth.get("operations") == 12
                    and main.get("connections") == 2 and oth.get("connections") == 1
                    and (backend != "neon" or (main.get("compute_seconds", 0) > 0
                                               and oth.get("compute_seconds", 0) > 0)))
            return data if done else None

        data = wait_for(stored)
        dbs = by_database(data)
        main, oth = dbs["main"], dbs["other"]
        # 25 = CREATE + INSERT + 20 SELECT + failed SELECT + UPDATE + psql's SELECT
        assert main["errors"] == 1 and main["rejected"] == 0 and main["timeouts"] == 0
        assert main["rows"] == 20 * 50 + 1  # SELECT row counts from the command tags
        assert main["written"] == 50 + 5  # INSERT 0 50, UPDATE 5
        assert oth["rows"] == 10 and oth["written"] == 0
        for db in (main, oth):
            assert db["bytes_in"] > 0 and db["bytes_out"] > 0
            assert db["duration"] > 0
            assert db["vcpu_seconds"] == pytest.approx(db["duration"])  # cpu_factor 1.0
            assert db["connection_seconds"] > 0
            assert db["gb_seconds"] == pytest.approx(db["connection_seconds"] * 16 * MB / GIB)
            assert db["storage_bytes"] > 1_000_000  # pg_database_size / the branch's data dir
            if backend == "neon":  # each database's compute ran from its start on
                assert db["compute_seconds"] > 0
            else:  # the shared server is nobody's compute
                assert db["compute_seconds"] == 0
        assert main["bytes_out"] > oth["bytes_out"]  # 1,000 rows against 10
        inv = data["invoice"]
        assert inv["tier"] == "free" and inv["total"] == 0  # free: no base, no overage
        assert inv["vcpu_hours"] == pytest.approx((main["vcpu_seconds"] + oth["vcpu_seconds"]) / 3600)


async def _load(gw, tenant, clients: int, stop: anyio.Event, completions: list[float]) -> int:
    """Clients running SELECT 1 in a loop until the gateway goes away (or ``stop``);
    ``completions`` gets the time of every operation a client saw complete."""
    errors: list[BaseException] = []

    async def client():
        try:
            conn = await asyncpg.connect(**gw.asyncpg_kw(tenant))
        except Exception as exc:  # the gateway went down before this client got in
            errors.append(exc)
            return
        try:
            while not stop.is_set():
                await conn.fetch("SELECT 1")
                completions.append(time.monotonic())
        except Exception as exc:  # closed by the drain, or killed
            errors.append(exc)
        finally:
            conn.terminate()

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(client)
    return len(errors)


def test_sigterm_under_load_loses_no_usage(workdir, control_url):
    tenant = Tenant("pro")
    with process_gateway(workdir, [tenant], layers=usage_layers(flush="1s"),
                         control=control_url) as gw:
        completions: list[float] = []

        async def run():
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_load, gw, tenant, 8, stop, completions)
                await anyio.sleep(3)
                gw.process.signal(signal.SIGTERM)  # mid-load: clients are running queries
                codes.append(await anyio.to_thread.run_sync(gw.process.wait, 30))
                stop.set()
        codes: list[int] = []
        anyio.run(run)
        assert codes == [0], gw.process.log()[-3000:]
        assert completions, "no client completed an operation"
        assert not log_lines(gw.process, "usage events dropped")

        data = gw.cli.usage(tenant)
        stored = sum(d["operations"] for d in data["databases"])
        assert stored == len(completions), (stored, len(completions))
        (main,) = data["databases"]
        assert main["connections"] == 8 and main["rows"] == len(completions)


def test_sigkill_loses_at_most_one_window(workdir):
    tenant = Tenant("pro")
    window = 1.0
    with process_gateway(workdir, [tenant], layers=usage_layers(flush=f"{window}s")) as gw:
        completions: list[float] = []
        killed_at: list[float] = []

        async def run():
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_load, gw, tenant, 4, stop, completions)
                await anyio.sleep(3.5)
                killed_at.append(time.monotonic())
                gw.process.signal(signal.SIGKILL)
                await anyio.sleep(1)
                stop.set()
        anyio.run(run)
        gw.process.wait(10)
        total = len(completions)
        stored = sum(d["operations"] for d in gw.cli.usage(tenant)["databases"])
        lost = total - stored
        # The window in progress, plus the time its predecessor's write may take.
        recent = sum(1 for t in completions if t > killed_at[0] - window - 0.5)
        assert 0 < stored <= total
        assert lost <= recent, (total, stored, recent)
