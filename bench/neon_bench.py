"""Neon-local figures: cold starts, branch creation by size and method, disk per branch.

    python bench/neon_bench.py [--wakes 100] [--scale 10] [--sleeping 50] [--data-dir DIR]

Drives a ``NeonBackend`` (local driver) directly, no gateway:

- wake: N times, sleep the compute (``pg_ctl stop -m fast``), then time ``wake()`` (start
  + probe) and the first tenant query after it (a new asyncpg connection and SELECT 1 as
  the tenant's role): p50/p95/max of both.
- branch: creation time of a branch of an empty database and of a ~150 MB one
  (``pgbench -i -s 10``), with the parent running (``pg_basebackup``) and stopped
  (``cp -a --reflink=auto``), and the disk each branch takes.
- sleeping: M provisioned databases, all asleep: running computes, this process's RSS,
  disk per branch.

Not a timed test: numbers for closing notes and docs/plugins/neon.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time

import asyncpg
from ogelkit_neon import NeonBackend, NeonOptions
from ogelkit_neon.local import _disk_bytes

from ogelkit import DatabaseRecord
from ogelkit.testing import test_context
from ogelkit.testing.contracts import _config


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def ms(values: list[float]) -> str:
    return (f"p50 {pct(values, 50) * 1000:.0f} ms, p95 {pct(values, 95) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms (n={len(values)})")


async def first_query(backend: NeonBackend, db: DatabaseRecord) -> None:
    host, port, user, password, dbname = await backend.upstream_target(db)
    conn = await asyncpg.connect(host=host, port=port, user=user, password=password,
                                 database=dbname, timeout=30)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


async def provision(backend: NeonBackend, ctx, tenant, name: str) -> DatabaseRecord:
    up = await backend.provision(tenant, name, ctx.tiers["free"])
    return await ctx.store.put_database(DatabaseRecord(tenant.slug, name, "neon", "neon", up))


async def branch_times(backend: NeonBackend, ctx, tenant, parent: DatabaseRecord,
                       label: str) -> None:
    driver = backend.driver
    for state in ("running", "stopped"):
        if state == "running":
            await backend.wake(parent)
        else:
            await backend.sleep(parent)
        name = f"{parent.name}-{state}"
        t0 = time.perf_counter()
        up, method = await driver.branch_with_method(parent, name)
        took = time.perf_counter() - t0
        db = await ctx.store.put_database(DatabaseRecord(tenant.slug, name, "neon", "neon", up))
        t1 = time.perf_counter()
        await first_query(backend, db)
        start = time.perf_counter() - t1
        disk = await backend.storage_bytes(db)
        print(f"  branch of {label} parent ({state}, {method}): {took * 1000:.0f} ms; "
              f"first query on it {start * 1000:.0f} ms; disk {disk / 2**20:.1f} MiB")
        await backend.deprovision(tenant, db)


async def main(args: argparse.Namespace) -> None:
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="ogelkit-neon-bench-", dir="/var/tmp")
    os.chmod(data_dir, 0o755)
    async with test_context() as ctx:
        cfg = _config(NeonOptions, {"local": {"data_dir": data_dir,
                                              "max_running_computes": 1000}})
        backend = NeonBackend(cfg, name="neon", context=ctx)
        await backend.open()
        try:
            tenant = await ctx.store.create_tenant("bench", "free")
            t0 = time.perf_counter()
            db = await provision(backend, ctx, tenant, "main")
            print(f"provision (template initdb + copy + role/db): "
                  f"{(time.perf_counter() - t0) * 1000:.0f} ms")

            wakes, queries = [], []
            for _ in range(args.wakes):
                await backend.sleep(db)
                t0 = time.perf_counter()
                await backend.wake(db)
                t1 = time.perf_counter()
                await first_query(backend, db)
                wakes.append(t1 - t0)
                queries.append(time.perf_counter() - t0)
            print(f"wake (pg_ctl start + probe): {ms(wakes)}")
            print(f"wake + first tenant query on a new connection: {ms(queries)}")
            print(f"cold starts {backend.driver.cold_starts}, crashes {backend.driver.crashes}")

            print("branches:")
            await branch_times(backend, ctx, tenant, db, "empty")
            big = await provision(backend, ctx, tenant, "big")
            host, port, user, password, dbname = await backend.upstream_target(big)
            t0 = time.perf_counter()
            cmd = ["pgbench", "-i", "-q", "-s", str(args.scale), "-h", host, "-p", str(port),
                   "-U", user, dbname]
            await asyncio.to_thread(subprocess.run, cmd, check=True, capture_output=True,
                                    env={**os.environ, "PGPASSWORD": password})
            size = await backend.storage_bytes(big)
            print(f"  (pgbench -i -s {args.scale}: {time.perf_counter() - t0:.1f} s, "
                  f"branch dir {size / 2**20:.0f} MiB)")
            await branch_times(backend, ctx, tenant, big, f"{size / 2**20:.0f} MiB")

            if args.sleeping:
                t0 = time.perf_counter()
                dbs = [await provision(backend, ctx, tenant, f"s{i}")
                       for i in range(args.sleeping)]
                for d in dbs:
                    await backend.sleep(d)
                await backend.sleep(db)
                await backend.sleep(big)
                disks = [_disk_bytes(backend.driver.branch_dir("bench", d.name) / "pgdata")
                         for d in dbs]
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{args.sleeping} sleeping databases (provisioned in "
                      f"{time.perf_counter() - t0:.0f} s): running computes "
                      f"{backend.driver.running_computes()}, bench process max RSS "
                      f"{rss:.0f} MiB, disk per branch {statistics.mean(disks) / 2**20:.1f} MiB")
        finally:
            await backend.close()
    if not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wakes", type=int, default=100)
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (10 = ~150 MB)")
    parser.add_argument("--sleeping", type=int, default=50)
    parser.add_argument("--data-dir", help="keep the computes here (default: a temp dir)")
    asyncio.run(main(parser.parse_args()))
