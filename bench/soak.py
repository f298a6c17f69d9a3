"""Soak (issue 16, "Faults, soak"): many clients of all three protocols for minutes against
one gateway; the gateway's memory and file descriptors must stay flat and no upstream
connection may be left over.

    python bench/soak.py                    # 1,000 clients for 600 s
    python bench/soak.py --quick            # 100 clients for 30 s
    python bench/soak.py --clients 300 --seconds 120 --json soak.json

Starts ``ogelkit run`` (its own process) with a Postgres, a Redis and a MongoDB backend on
the workspace's real servers (``scripts/services.sh up``) and the session, gatekeeper,
ratelimit and usage layers, on a tier whose limits the load never reaches. ``--tenants``
tenants (10) are seeded, each with one database per protocol. The clients run in this
process on one event loop, split evenly across the protocols (asyncpg ``SELECT``,
redis.asyncio ``SET``/``GET``, pymongo's ``AsyncMongoClient`` ``insert_one``/``find_one``),
each doing one operation every ``--think`` seconds (0.5 on average) and reconnecting every
``--reconnect`` operations (50), so logins and closes churn all along.

Every ``--sample`` seconds (10) it prints the gateway's RSS and peak RSS (/proc/PID/status),
its open fds (/proc/PID/fd), its TCP connections to each upstream server (its own sockets
in /proc/PID/net/tcp) and the operations and errors so far. At the end, after every client
has disconnected and a short settle, it prints the upstream connections again with the
gateway's own ``ogelkit_upstream_connections`` (active ones must be 0; idle ones are pool
members kept until ``server_idle_timeout``, bounded by the pool sizes). Verdict lines:
RSS and fd growth between the first sample after warm-up and the last, errors, leftovers.

Not a timed test and not run by the suite; do not run it long on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

TIER = """
[tiers.soak]
base = "pro"
rank = 10
connections = 5000
ops_per_second = 1000000
burst = 1000000
"""
PREFIX = "o7ssk_"


def env_url(name: str, default: str) -> str:
    return os.environ.get(name, default)


def config(tenants: list[tuple[str, str]], control: str, pool_size: int) -> tuple[str, dict[str, int]]:
    from ogelkit.testing import test_secret_key

    pg = env_url("OGELKIT_TEST_PG_DSN", "postgresql://postgres:postgres@127.0.0.1:55432/postgres")
    redis_url = env_url("OGELKIT_TEST_REDIS_URL", "redis://127.0.0.1:56379/0")
    mongo = env_url("OGELKIT_TEST_FERRETDB_URL", "mongodb://127.0.0.1:57017/")
    text = f"""[listen]
host = "127.0.0.1"
http = 0
postgres = 0
redis = 0
mongodb = 0

[gateway]
drain_timeout = "5s"
admin_token = "soak-admin-token"

[control]
url = "{control}"
secret_key = "{test_secret_key()}"

[backends.pg]
type = "postgres"
dsn = "{pg}"
name_prefix = "{PREFIX}"
pool_size = {pool_size}

[backends.r]
type = "redis"
url = "{redis_url}"

[backends.mongo]
type = "mongodb"
url = "{mongo}"

[[layers]]
type = "session"

[[layers]]
type = "gatekeeper"

[[layers]]
type = "ratelimit"

[[layers]]
type = "usage"
{TIER}
"""
    for slug, password in tenants:
        text += (
            f'\n[tenants.{slug}]\ntier = "soak"\npassword = "{password}"\n'
            f'[tenants.{slug}.databases.main]\nbackend = "pg"\n'
            f'[tenants.{slug}.databases.cache]\nbackend = "r"\n'
            f'[tenants.{slug}.databases.docs]\nbackend = "mongo"\n'
        )
    return text, {
        "pg": urlparse(pg).port or 5432,
        "redis": urlparse(redis_url).port or 6379,
        "mongodb": urlparse(mongo).port or 27017,
    }


# -- the gateway process, seen from /proc ------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) // 1024  # MB
    return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def upstream_sockets(pid: int, ports: dict[str, int]) -> dict[str, int]:
    """The gateway's established TCP connections to each upstream port."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    by_port = {port: name for name, port in ports.items()}
    counts = dict.fromkeys(ports, 0)
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            remote, state, inode = cols[2], cols[3], cols[9]
            port = int(remote.rsplit(":", 1)[1], 16)
            if state == "01" and inode in inodes and port in by_port:
                counts[by_port[port]] += 1
    return counts


# -- the clients -------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.ops = dict.fromkeys(("postgres", "redis", "mongodb"), 0)
        self.errors = dict.fromkeys(("postgres", "redis", "mongodb"), 0)
        self.last_error: dict[str, str] = {}

    def error(self, protocol: str, exc: BaseException) -> None:
        self.errors[protocol] += 1
        self.last_error[protocol] = repr(exc)[:200]


async def pg_client(port: int, slug: str, password: str, args, stats: Stats, stop: asyncio.Event):
    import asyncpg

    while not stop.is_set():
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user=slug,
                password=password,
                database="main",
                ssl=False,
                timeout=30,
            )
        except Exception as exc:
            stats.error("postgres", exc)
            await asyncio.sleep(1)
            continue
        try:
            for i in range(args.reconnect):
                if stop.is_set():
                    break
                try:
                    assert await conn.fetchval("SELECT $1::int", i) == i
                    stats.ops["postgres"] += 1
                except Exception as exc:
                    stats.error("postgres", exc)
                    break
                await asyncio.sleep(random.uniform(0, 2 * args.think))
        finally:
            conn.terminate()


async def redis_client(port: int, slug: str, password: str, args, stats: Stats, stop: asyncio.Event):
    import redis.asyncio as aredis

    key = f"soak:{secrets.token_hex(4)}"
    while not stop.is_set():
        r = aredis.Redis(
            host="127.0.0.1",
            port=port,
            username=f"{slug}.cache",
            password=password,
            socket_timeout=30,
            single_connection_client=True,
        )
        try:
            for i in range(args.reconnect):
                if stop.is_set():
                    break
                try:
                    if i % 2:
                        assert await r.get(key) is not None
                    else:
                        assert await r.set(key, i, ex=600)
                    stats.ops["redis"] += 1
                except Exception as exc:
                    stats.error("redis", exc)
                    await asyncio.sleep(1)
                    break
                await asyncio.sleep(random.uniform(0, 2 * args.think))
        finally:
            try:
                await r.aclose()
            except Exception:
                pass


async def mongo_client(port: int, slug: str, password: str, args, stats: Stats, stop: asyncio.Event):
    from pymongo import AsyncMongoClient

    me = secrets.token_hex(4)
    while not stop.is_set():
        client = AsyncMongoClient(
            f"mongodb://{slug}:{password}@127.0.0.1:{port}/",
            serverSelectionTimeoutMS=30000,
            maxPoolSize=1,
            directConnection=True,
        )
        try:
            coll = client.docs.soak
            for i in range(args.reconnect):
                if stop.is_set():
                    break
                try:
                    if i % 2:
                        assert await coll.find_one({"c": me}) is not None
                    else:
                        await coll.insert_one({"c": me, "i": i})
                    stats.ops["mongodb"] += 1
                except Exception as exc:
                    stats.error("mongodb", exc)
                    await asyncio.sleep(1)
                    break
                await asyncio.sleep(random.uniform(0, 2 * args.think))
        finally:
            try:
                await client.close()
            except Exception:
                pass


# -- the run -----------------------------------------------------------------------------------


def row(t: float, pid: int, ports: dict[str, int], stats: Stats, clients: int) -> dict[str, Any]:
    st = proc_status(pid)
    up = upstream_sockets(pid, ports)
    return {
        "t": round(t),
        "clients": clients,
        "ops": sum(stats.ops.values()),
        "errors": sum(stats.errors.values()),
        "rss_mb": st.get("VmRSS"),
        "hwm_mb": st.get("VmHWM"),
        "fds": open_fds(pid),
        **{f"up_{k}": v for k, v in up.items()},
    }


def print_row(r: dict[str, Any], header: bool = False) -> None:
    cols = ("t", "clients", "ops", "errors", "rss_mb", "hwm_mb", "fds", "up_pg", "up_redis", "up_mongodb")
    if header:
        print(" ".join(f"{c:>10}" for c in cols))
    print(" ".join(f"{r.get(c, ''):>10}" for c in cols), flush=True)


async def drive(
    args, tenants, ports_gw: dict[str, int], pid: int, upstream: dict[str, int], gw_metric
) -> dict[str, Any]:
    stats = Stats()
    stop = asyncio.Event()
    makers = [("postgres", pg_client), ("redis", redis_client), ("mongodb", mongo_client)]
    tasks = []
    for i in range(args.clients):
        protocol, make = makers[i % 3]
        slug, password = tenants[(i // 3) % len(tenants)]
        tasks.append(asyncio.create_task(make(ports_gw[protocol], slug, password, args, stats, stop)))
        if i % 50 == 49:
            await asyncio.sleep(0.2)  # ramp up: no login storm
    rows = []
    started = time.monotonic()
    first = True
    while (elapsed := time.monotonic() - started) < args.seconds:
        await asyncio.sleep(min(args.sample, args.seconds - elapsed))
        r = row(time.monotonic() - started, pid, upstream, stats, args.clients)
        rows.append(r)
        print_row(r, header=first)
        first = False
    stop.set()
    await asyncio.wait(tasks, timeout=60)
    await asyncio.sleep(args.settle)
    end = row(time.monotonic() - started, pid, upstream, stats, 0)
    print_row(end)
    metrics = {}
    for backend in ("pg", "r", "mongo"):
        for state in ("active", "idle", "shared", "dedicated"):
            try:
                metrics[f"{backend}:{state}"] = gw_metric(
                    "ogelkit_upstream_connections", backend=backend, state=state
                )
            except AssertionError:
                pass
    return {
        "rows": rows,
        "end": end,
        "ops": stats.ops,
        "errors": stats.errors,
        "last_error": stats.last_error,
        "upstream_metric": metrics,
    }


def verdict(result: dict[str, Any], args) -> None:
    rows = result["rows"]
    if not rows:
        return
    warm = rows[min(1, len(rows) - 1)]  # the first sample after the ramp-up
    last = rows[-1]
    print(f"\noperations {result['ops']}, errors {result['errors']}")
    for protocol, text in result["last_error"].items():
        print(f"  last {protocol} error: {text}")
    print(
        f"RSS {warm['rss_mb']} -> {last['rss_mb']} MB (peak {last['hwm_mb']} MB), "
        f"fds {warm['fds']} -> {last['fds']} (t={warm['t']}s -> {last['t']}s)"
    )
    end = result["end"]
    print(
        f"after every client left (+{args.settle}s): fds {end['fds']}, upstream sockets "
        f"pg {end['up_pg']}, redis {end['up_redis']}, mongodb {end['up_mongodb']}; "
        f"gateway's gauge {result['upstream_metric']}"
    )
    active = {k: v for k, v in result["upstream_metric"].items() if k.endswith(":active") and v}
    print("leaked (active upstream connections with no client):", active or "none")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--quick", action="store_true", help="100 clients for 30 s")
    ap.add_argument("--tenants", type=int, default=10)
    ap.add_argument("--think", type=float, default=0.5, help="mean seconds between operations")
    ap.add_argument("--reconnect", type=int, default=50, help="operations per connection")
    ap.add_argument("--sample", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--pool-size", type=int, default=4, help="Postgres pool_size per database")
    ap.add_argument("--json", help="write the samples and the verdict's figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.seconds = 100, 30.0

    from ogelkit.testing import GatewayProcess
    from ogelkit.testing.gateway import metric_value

    workdir = Path(tempfile.mkdtemp(prefix="ogelkit-soak-"))
    tenants = [(f"soak{i}-{secrets.token_hex(2)}", "pw-" + secrets.token_hex(8)) for i in range(args.tenants)]
    text, upstream = config(tenants, f"sqlite:///{workdir}/control.db", args.pool_size)
    env = {"OGELKIT_LOAD_PLUGINS": "postgres,redis,mongodb,session,gatekeeper,ratelimit,usage"}
    proc = GatewayProcess(text, env=env, workdir=str(workdir))
    proc.start(wait_ready=120)
    try:
        ports = proc.ports()
        pid = proc.proc.pid
        print(
            f"gateway pid {pid}, {args.clients} clients, {args.seconds:.0f}s, "
            f"{args.tenants} tenants; log {proc.log_path}",
            flush=True,
        )

        def gw_metric(name: str, **labels: str) -> float:
            return metric_value(f"http://127.0.0.1:{ports['http']}/metrics", name, **labels)

        result = asyncio.run(drive(args, tenants, ports, pid, upstream, gw_metric))
        verdict(result, args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        proc.signal()
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
        cleanup(workdir, tenants, env)
    return 0


def cleanup(workdir: Path, tenants: list[tuple[str, str]], env: dict[str, str]) -> None:
    """Drop the tenants' upstream databases (``ogelkit tenants delete``)."""
    import subprocess

    full = {**os.environ, **env, "OGELKIT_CONFIG": str(workdir / "config.toml")}
    for slug, _ in tenants:
        subprocess.run(
            [sys.executable, "-m", "ogelkit", "tenants", "delete", slug, "--yes"],
            env=full,
            capture_output=True,
            timeout=120,
        )


if __name__ == "__main__":
    sys.exit(main())
