"""What N registered, sleeping Neon-local databases cost a running gateway.

    python bench/neon_sleeping_bench.py [--databases 1000] [--per-tenant 10] [--data-dir DIR]

Provisions N Neon-local databases (``--per-tenant`` per tenant, each a root branch copied
from the template) into a SQLite control plane, stopping each compute right after, and
marks them ``asleep``. Then runs ``ogelkit run`` on that control plane and reports:

- running computes (live postmasters under the data directory): the goal is 0;
- the gateway's RSS (VmRSS of the process) with N sleeping databases registered, against
  the same gateway with none;
- disk per branch (allocated size of ``<tenant>/<database>``, WAL included);
- one cold start through the gateway with N registered: psql's first result on a sleeping
  database (startup packet to ReadyForQuery plus a SELECT).

Not a timed test: numbers for the closing note and docs/plugins/neon.md. Needs the test
PostgreSQL 15 binaries (scripts/services.sh up) and about 45 MiB of disk per database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ogelkit_neon import NeonBackend, NeonOptions
from ogelkit_neon.local import _disk_bytes
from ogelkit_neon.testing import live_postmasters, remove_data_dir

from ogelkit import DatabaseRecord
from ogelkit.testing import GatewayProcess, test_context, test_secret_key
from ogelkit.testing.contracts import _config

PASSWORD = "bench-password-1"


def config(data_dir: str, control: str) -> str:
    return f"""
[listen]
host = "127.0.0.1"
http = 0
postgres = 0

[control]
url = "sqlite:///{control}"
secret_key = "{test_secret_key()}"

[backends.neon]
type = "neon"

[backends.neon.local]
data_dir = "{data_dir}"
max_running_computes = 8

[tenants.probe]
tier = "free"
password = "{PASSWORD}"
"""


async def provision_all(data_dir: str, control: str, n: int, per_tenant: int) -> float:
    """N sleeping databases in the control plane and on disk; returns seconds taken."""
    async with test_context(config(data_dir, control)) as ctx:
        cfg = _config(NeonOptions, {"local": {"data_dir": data_dir,
                                              "max_running_computes": 8}})
        backend = NeonBackend(cfg, name="neon", context=ctx)
        await backend.open()
        started = time.perf_counter()
        try:
            for t in range((n + per_tenant - 1) // per_tenant):
                tenant = await ctx.store.create_tenant(f"t{t:04d}", "free")
                for d in range(min(per_tenant, n - t * per_tenant)):
                    up = await backend.provision(tenant, f"db{d}", ctx.tiers["free"])
                    db = await ctx.store.put_database(
                        DatabaseRecord(tenant.slug, f"db{d}", "neon", "neon", up))
                    await backend.sleep(db)
                    await ctx.store.transition(tenant.slug, db.name, "asleep")
                done = (t + 1) * per_tenant
                if done % 100 == 0:
                    print(f"  {done} provisioned ({time.perf_counter() - started:.0f} s)",
                          flush=True)
        finally:
            await backend.close()
        return time.perf_counter() - started


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gateway_rss(text: str, workdir: str, data_dir: str,
                probe_db: str | None) -> tuple[float, int, float | None]:
    """RSS of a started gateway (after its first seconds), the computes running then, and
    the first-query time of ``probe_db`` through it when given."""
    run_dir = tempfile.mkdtemp(dir=workdir)  # a log of its own: "ready" is this run's
    proc = GatewayProcess(text, workdir=run_dir).start(wait_ready=120)
    try:
        time.sleep(5)  # the lifecycle has loaded every state, the directory has polled
        rss = rss_mib(proc.proc.pid)
        running = live_postmasters(data_dir)
        took = None
        if probe_db is not None:
            port = proc.ports()["postgres"]
            t0 = time.perf_counter()
            out = subprocess.run(
                ["psql", f"host=127.0.0.1 port={port} user={probe_db.split('/')[0]} "
                         f"dbname={probe_db.split('/')[1]} sslmode=disable", "-XAtc", "select 1"],
                capture_output=True, text=True, timeout=60,
                env={**os.environ, "PGPASSWORD": PASSWORD})
            took = time.perf_counter() - t0
            assert out.returncode == 0, out.stderr
        return rss, running, took
    finally:
        proc.signal(signal.SIGTERM)
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--databases", type=int, default=1000)
    parser.add_argument("--per-tenant", type=int, default=10)
    parser.add_argument("--data-dir", help="default: a temporary directory in /var/tmp")
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="ogelkit-neon-sleeping-", dir="/var/tmp")
    os.chmod(data_dir, 0o755)
    work = tempfile.mkdtemp(prefix="ogelkit-neon-sleeping-gw-")
    control = os.path.join(work, "control.db")
    try:
        base_text = config(data_dir, os.path.join(work, "empty.db"))
        empty_rss, _, _ = gateway_rss(base_text, work, data_dir, None)
        seconds = asyncio.run(provision_all(data_dir, control, args.databases, args.per_tenant))
        print(f"provisioned {args.databases} databases in {seconds:.0f} s "
              f"({seconds / args.databases * 1000:.0f} ms each), all stopped")
        sizes = [_disk_bytes(p) for p in Path(data_dir).glob("t*/db*")]
        # The probe tenant's database is provisioned by a first gateway run (which stops its
        # compute at shutdown); the measured run finds every compute stopped, marks the
        # probe's database asleep (Backend.running) and wakes it for the probe's psql.
        text = config(data_dir, control) + '\n[tenants.probe.databases.main]\nbackend = "neon"\n'
        gateway_rss(text, work, data_dir, None)
        rss, running, cold = gateway_rss(text, work, data_dir, "probe/main")
        print(f"{args.databases} registered sleeping databases:")
        print(f"  running computes after the gateway started: {running}")
        print(f"  gateway RSS: {rss:.0f} MiB (with {args.databases} registered; "
              f"{empty_rss:.0f} MiB with none) -> "
              f"{(rss - empty_rss) * 1024 / args.databases:.1f} KiB per database")
        print(f"  disk per branch: {sum(sizes) / len(sizes) / 2**20:.1f} MiB "
              f"(total {sum(sizes) / 2**30:.1f} GiB)")
        assert cold is not None
        print(f"  cold start through the gateway (psql connect + select 1 on a sleeping "
              f"database): {cold * 1000:.0f} ms")
    finally:
        if not args.data_dir:
            remove_data_dir(data_dir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
