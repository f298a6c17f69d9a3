"""Wake on connect through the gateway: how long a client of a sleeping database waits.

    python bench/wake_bench.py [--n 100] [--kind postgres|neon|both]

Runs a gateway (in a thread, real sockets) with one tenant database per kind on a tier that
never sleeps by itself; every round puts the database to sleep through the control plane
(``databases sleep``'s request path: the scheduler applies it within ``check_every``), waits
until it is asleep, then times one client login with a bare protocol client: from sending
the startup packet to ReadyForQuery (SCRAM included). The same login against the awake
database is the warm baseline, so cold minus warm is what sleeping costs a client. Also
prints the gateway's own ``backend.wake`` time (``ogelkit_cold_start_seconds``).

- ``postgres``: the shared-Postgres backend; sleeping closes the database's pooled server
  connections, so a wake is a fresh upstream connection (+ the pool's prewarm).
- ``neon``: the Neon backend's local driver (a PostgreSQL cluster per branch; sleep is
  ``pg_ctl stop -m fast``, wake is start + probe), when ``ogelkit_neon`` is installed and
  PostgreSQL's server binaries are found.

Not a timed test: numbers for the closing note and docs/operations.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ogelkit_postgres.testing import RawClient, Tenant, pg_gateway, unique

TIER = '[tiers.bench]\nbase = "pro"\nrank = 9\nidle_before_sleep = "unlimited"\n'
LIFE = '[lifecycle]\ncheck_every = "50ms"\nwake_timeout = "9s"\n'


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def login_ms(gw, tenant: Tenant) -> float:
    client = RawClient(gw.port, timeout=30)
    try:
        started = time.perf_counter()
        msgs = client.login(tenant.slug, tenant.password)
        took = (time.perf_counter() - started) * 1000
        if msgs[-1][0] != b"Z":
            raise RuntimeError(f"login failed: {client.error(msgs)}")
        return took
    finally:
        client.close()


def put_to_sleep(gw, tenant: Tenant) -> None:
    store, life = gw.context.store, gw.context.lifecycle
    gw.call(store.request_database_state(tenant.slug, "main", "asleep"))
    deadline = time.monotonic() + 30
    while life.state_of(tenant.slug, "main") != "asleep":
        if time.monotonic() > deadline:
            raise RuntimeError("the database did not go to sleep")
        time.sleep(0.01)
    time.sleep(0.05)  # let closed upstream sockets settle


def run(gw, tenant: Tenant, kind: str, n: int) -> None:
    for _ in range(3):
        login_ms(gw, tenant)  # warm up both paths
    warm = [login_ms(gw, tenant) for _ in range(n)]
    cold, wake = [], []
    life = gw.context.lifecycle
    for _ in range(n):
        put_to_sleep(gw, tenant)
        cold.append(login_ms(gw, tenant))
        seconds = life.describe(tenant.slug, "main")["last_cold_start_seconds"]
        wake.append((seconds or 0.0) * 1000)
    for label, values in (("cold login (startup -> ReadyForQuery)", cold),
                          ("warm login (awake database)", warm),
                          ("backend.wake inside the gateway", wake)):
        print(f"{kind:8} {label:40} n={len(values):4} p50={statistics.median(values):7.1f} ms "
              f"p95={pct(values, 95):7.1f} ms max={max(values):7.1f} ms")
    extra = statistics.median(cold) - statistics.median(warm)
    print(f"{kind:8} {'cold minus warm (p50)':40} {extra:7.1f} ms")


PG_BIN = "/usr/lib/postgresql/15/bin"


def neon_backend_text(data_dir: str) -> str | None:
    try:
        import ogelkit_neon  # noqa: F401
    except ImportError:
        return None
    return (f'\n[backends.neon]\ntype = "neon"\n[backends.neon.local]\n'
            f'data_dir = "{data_dir}"\nport_range = "58100-58999"\n')


async def drop_neon(gw) -> None:
    store = gw.context.store
    for tenant in await store.list_tenants():
        for db in await store.list_databases(tenant.slug):
            backend = gw.context.backends.get(db.backend)
            if backend is not None and backend.type_name == "neon":
                try:
                    await backend.deprovision(tenant, db)
                except Exception as exc:
                    print(f"cleanup of {tenant.slug}/{db.name} failed: {exc}")


def stop_computes(data_dir: str) -> None:
    for pid_file in Path(data_dir).glob("*/*/pgdata/postmaster.pid"):
        cmd = [f"{PG_BIN}/pg_ctl", "stop", "-D", str(pid_file.parent), "-m", "immediate"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, capture_output=True, timeout=30, cwd="/")


def run_neon(n: int) -> None:
    data_dir = tempfile.mkdtemp(prefix="ogelkit-wake-bench-", dir="/var/tmp")
    os.chmod(data_dir, 0o755)
    backend = neon_backend_text(data_dir)
    if backend is None:
        print("neon     ogelkit_neon is not installed: skipped")
        return
    tenant = Tenant(unique("wbn"), tier="bench", backend="neon")
    try:
        with pg_gateway([tenant], extra=TIER + LIFE, backends=backend) as gw:
            try:
                run(gw, tenant, "neon", n)
            finally:
                gw.call(drop_neon(gw), timeout=120)
    finally:
        stop_computes(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="cold starts per kind")
    ap.add_argument("--kind", choices=["postgres", "neon", "both"], default="postgres")
    args = ap.parse_args(argv)
    kinds = ["postgres", "neon"] if args.kind == "both" else [args.kind]
    for kind in kinds:
        if kind == "postgres":
            tenant = Tenant(unique("wb"), tier="bench")
            with pg_gateway([tenant], extra=TIER + LIFE) as gw:
                run(gw, tenant, kind, args.n)
        else:
            run_neon(args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
