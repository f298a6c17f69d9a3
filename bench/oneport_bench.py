"""What the one port ([listen] port) costs: connect latency and per-query throughput through
it against the protocol's own port, on the same gateway, in the same run.

    python bench/oneport_bench.py [--connects 300] [--queries 5000]

Runs ``ogelkit run`` (uvloop, as in production) with the Postgres and Redis doors on their
own ports *and* the one port, no layers, and measures from this process:

- connect: asyncpg (startup + SCRAM + ReadyForQuery, then close) and redis-py (TCP + AUTH),
  p50 and p95 over ``--connects`` sequential connections, per port;
- queries: ``SELECT 1`` (asyncpg) and ``GET`` (redis-py) on one open connection, per second;
  after dispatch the one port hands the socket to the door, so these should be equal.

Prints the added latency (one port minus own port) and the throughput ratio. Not a timed
test: the numbers go in the closing note and docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import asyncpg
import redis.asyncio as aioredis

from ogelkit.testing import GatewayProcess, test_secret_key
from ogelkit.testing.redis_server import free_port
from ogelkit.testing.services import pg_dsn, redis_url

PASSWORD = "oneport-bench-pass"


def config(one: int, work: str) -> str:
    return f"""
[listen]
host = "127.0.0.1"
http = 0
port = {one}
postgres = 0
redis = 0

[control]
url = "sqlite:///{work}/control.db"
secret_key = "{test_secret_key()}"

[backends.pg]
type = "postgres"
dsn = "{pg_dsn()}"
name_prefix = "o7sonep_"

[backends.cache]
type = "redis"
url = "{redis_url()}"

[tenants.onep]
tier = "enterprise"
password = "{PASSWORD}"
[tenants.onep.databases.main]
backend = "pg"
[tenants.onep.databases.cache]
backend = "cache"
"""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def pg_connects(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="onep",
                                     password=PASSWORD, database="main", ssl=False)
        out.append(time.perf_counter() - t0)
        await conn.close()
    return out


async def pg_queries(port: int, n: int) -> float:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="onep", password=PASSWORD,
                                 database="main", ssl=False)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            await conn.fetchval("SELECT 1")
        return n / (time.perf_counter() - t0)
    finally:
        await conn.close()


async def redis_connects(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        client = aioredis.Redis(host="127.0.0.1", port=port, username="onep.cache",
                                password=PASSWORD)
        await client.ping()
        out.append(time.perf_counter() - t0)
        await client.aclose()
    return out


async def redis_queries(port: int, n: int) -> float:
    client = aioredis.Redis(host="127.0.0.1", port=port, username="onep.cache",
                            password=PASSWORD)
    try:
        await client.ping()
        t0 = time.perf_counter()
        for _ in range(n):
            await client.get("k")
        return n / (time.perf_counter() - t0)
    finally:
        await client.aclose()


async def measure(ports: dict[str, int], args: argparse.Namespace) -> None:
    one = ports["port"]
    for name, own, connects, queries in (
            ("postgres (asyncpg)", ports["postgres"], pg_connects, pg_queries),
            ("redis (redis-py)", ports["redis"], redis_connects, redis_queries)):
        await connects(own, 20)  # warm the pools and the password cache
        c_own, c_one, q_own, q_one = [], [], [], []
        for _ in range(3):  # alternate, so drift hits both the same
            c_own += await connects(own, args.connects // 3)
            c_one += await connects(one, args.connects // 3)
            q_own.append(await queries(own, args.queries // 3))
            q_one.append(await queries(one, args.queries // 3))
        print(f"{name}:")
        print(f"  connect, own port: p50 {pct(c_own, .5) * 1000:.2f} ms, "
              f"p95 {pct(c_own, .95) * 1000:.2f} ms")
        print(f"  connect, one port: p50 {pct(c_one, .5) * 1000:.2f} ms, "
              f"p95 {pct(c_one, .95) * 1000:.2f} ms  -> added p50 "
              f"{(pct(c_one, .5) - pct(c_own, .5)) * 1000:+.2f} ms")
        own_q, one_q = statistics.median(q_own), statistics.median(q_one)
        print(f"  queries on one connection: own port {own_q:,.0f}/s, one port {one_q:,.0f}/s "
              f"-> {one_q / own_q:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connects", type=int, default=300)
    parser.add_argument("--queries", type=int, default=6000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ogelkit-oneport-")
    proc = GatewayProcess(config(free_port(), work), workdir=work).start(wait_ready=60)
    try:
        asyncio.run(measure(proc.ports(), args))
    finally:
        proc.kill()
        # The bench tenant's upstream role, database and ACL user go with it.
        subprocess.run([sys.executable, "-m", "ogelkit", "-c", str(proc.config_path),
                        "tenants", "delete", "onep", "--yes"], capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
