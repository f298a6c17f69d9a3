#!/usr/bin/env python
"""PostgreSQL gateway benchmark: pgbench -S through the gateway vs direct vs PgBouncer.

    python bench/pg_bench.py --quick     # 1 round of 3 s runs: a smoke test on a busy box
    python bench/pg_bench.py             # 3 alternating rounds of 15 s runs, medians

Provisions what it needs itself: a SQLite control plane in a temp dir with one tenant
(tier enterprise) whose databases ``bench_s`` (session pooling) and ``bench_t`` (transaction
pooling) are the existing pgbench database ``bench`` (scale 10, created by
``scripts/services.sh up``), reached with the same role PgBouncer uses. The gateway runs as a
real ``ogelkit run`` subprocess (uvloop), without layers.

For every cell (``-c 1`` / ``-c 16``, ``-M simple`` / ``-M prepared``) it runs, alternating
the order each round:

* ``direct``          PostgreSQL itself
* ``pgbouncer-sess``  PgBouncer, database ``bench`` (session mode)
* ``pgbouncer-tx``    PgBouncer, database ``bench_tx`` (transaction mode; not with
  ``-M prepared``: PgBouncer < 1.21 has no prepared statements in transaction mode)
* ``gateway-sess`` / ``gateway-tx``  the gateway, session / transaction pooling

and prints tps, mean latency, the proxy's own CPU seconds (utime+stime from
``/proc/<pid>/stat``) and per transaction, and ratios to direct and to PgBouncer in the same
pool mode. Then memory per idle client: the gateway's RSS before and after opening
``--idle`` (1,000) idle client connections (transaction pooling).

Everything shares the same cores (pgbench, PostgreSQL, the proxies), so the gateway's CPU is
taken from the others: ratios are pessimistic against a gateway on its own cores, and on a
machine shared with other work they are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("OGELKIT_TEST_PG_DSN",
                        "postgresql://postgres:postgres@127.0.0.1:55432/postgres")
PGB_PORT = int(os.environ.get("OGELKIT_PGBOUNCER_PORT", "56432"))
SERVICES = Path(os.environ.get("OGELKIT_SERVICES_DIR", ROOT / ".services"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGETS = ["direct", "pgbouncer-sess", "pgbouncer-tx", "gateway-sess", "gateway-tx"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pgbouncer_pid() -> int | None:
    try:
        return int((SERVICES / "pgbouncer" / "pgbouncer.pid").read_text().split()[0])
    except (OSError, ValueError):
        return None


class Gateway:
    """A tenant adopting the ``bench`` database, and ``ogelkit run`` serving it."""

    def __init__(self, workdir: str):
        from ogelkit_postgres.backend import parse_dsn

        from ogelkit.testing import test_secret_key
        self.dir = workdir
        self.port = free_port()
        self.tenant = "pgbench-" + secrets.token_hex(3)
        self.password = secrets.token_urlsafe(16)
        self.admin = parse_dsn(PG_DSN)
        control = f"sqlite:///{workdir}/control.db"
        self.control = control
        self.key = test_secret_key()
        backend = (f'dsn = "{PG_DSN}"\npool_size = 20\n')
        self.config = (
            f'[listen]\nhost = "127.0.0.1"\nhttp = {free_port()}\npostgres = {self.port}\n\n'
            f'[gateway]\nlog_level = "info"\ndrain_timeout = "2s"\n\n'
            f'[control]\nurl = "{control}"\nsecret_key = "{self.key}"\n\n'
            f'[backends.pgs]\ntype = "postgres"\npool_mode = "session"\n{backend}\n'
            f'[backends.pgt]\ntype = "postgres"\npool_mode = "transaction"\n{backend}\n')
        self.proc = None

    async def _provision(self) -> None:
        from ogelkit.control.records import DatabaseRecord
        from ogelkit.control.store import open_store
        from ogelkit.scram import make_verifier
        store = open_store(self.control, self.key)
        await store.open()
        await store.migrate()
        try:
            await store.create_tenant(self.tenant, "enterprise")
            await store.set_verifier(self.tenant, str(make_verifier(self.password)))
            upstream = {"role": self.admin["user"], "password": self.admin["password"],
                        "dbname": "bench"}
            for name, backend in (("bench_s", "pgs"), ("bench_t", "pgt")):
                await store.put_database(DatabaseRecord(self.tenant, name, "postgres", backend,
                                                        upstream))
        finally:
            await store.close()

    def start(self) -> Gateway:
        from ogelkit.testing import GatewayProcess
        asyncio.run(self._provision())
        self.proc = GatewayProcess(self.config, workdir=self.dir).start()
        return self

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.signal()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def pgbench(port: int, user: str, password: str, db: str, protocol: str, clients: int,
            seconds: int) -> tuple[float, float]:
    cmd = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-n", "-S",
           "-M", protocol, "-c", str(clients), "-j", "2" if clients > 1 else "1",
           "-T", str(seconds), db]
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    tps = float(re.search(r"tps = ([\d.]+) \(without initial", out.stdout).group(1))
    lat = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))
    return tps, lat


def target_args(gw: Gateway, target: str) -> tuple[int, str, str, str, int | None]:
    admin = gw.admin
    if target == "direct":
        return admin["port"], admin["user"], admin["password"], "bench", None
    if target == "pgbouncer-sess":
        return PGB_PORT, admin["user"], admin["password"], "bench", pgbouncer_pid()
    if target == "pgbouncer-tx":
        return PGB_PORT, admin["user"], admin["password"], "bench_tx", pgbouncer_pid()
    db = "bench_s" if target == "gateway-sess" else "bench_t"
    return gw.port, gw.tenant, gw.password, db, gw.pid


def runs(gw: Gateway, args: argparse.Namespace) -> dict:
    cells = [(c, p) for c in args.clients for p in args.protocols]
    results: dict = {}
    for cell in cells:
        for target in TARGETS:
            if cell[1] == "prepared" and target == "pgbouncer-tx":
                continue
            results[(cell, target)] = []
    # Warm the pools (and PostgreSQL's cache) once, outside the measurements.
    for target in ("gateway-sess", "gateway-tx"):
        port, user, password, db, _ = target_args(gw, target)
        pgbench(port, user, password, db, "simple", max(args.clients), 1)
    for rnd in range(args.rounds):
        for cell in cells:
            order = [t for t in TARGETS if (cell, t) in results]
            shift = rnd % len(order)
            for target in order[shift:] + order[:shift]:
                port, user, password, db, pid = target_args(gw, target)
                cpu0 = cpu_seconds(pid)
                tps, lat = pgbench(port, user, password, db, cell[1], cell[0], args.seconds)
                cpu = cpu_seconds(pid) - cpu0 if pid else None
                results[(cell, target)].append((tps, lat, cpu))
                print(f"  round {rnd + 1} c{cell[0]:<2} {cell[1]:<8} {target:<15} "
                      f"{tps:>9.0f} tps {lat:.3f} ms", file=sys.stderr, flush=True)
                time.sleep(0.5)
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: dict, args: argparse.Namespace) -> list[str]:
    lines = []
    head = (f"{'clients':>7} {'protocol':<9} {'target':<15} {'tps':>9} {'lat ms':>7} "
            f"{'proxy CPU s':>11} {'CPU us/tx':>9} {'x direct':>8} {'x pgbouncer':>11}")
    lines += [head, "-" * len(head)]
    verdicts = []
    for c in args.clients:
        for p in args.protocols:
            cell = (c, p)
            med = {t: (median([r[0] for r in rs]), median([r[1] for r in rs]),
                       median([r[2] for r in rs if r[2] is not None]) if rs and rs[0][2]
                       is not None else None)
                   for (cl, t), rs in results.items() if cl == cell}
            direct = med["direct"]
            for target, (tps, lat, cpu) in med.items():
                ref = None
                if target.startswith("gateway"):
                    ref = "pgbouncer-sess" if target == "gateway-sess" or p == "prepared" \
                        else "pgbouncer-tx"
                vs_pgb = f"{tps / med[ref][0]:.2f}" if ref in med else "-"
                if ref == "pgbouncer-sess" and target == "gateway-tx":
                    vs_pgb += "*"
                cpu_s = f"{cpu:.2f}" if cpu is not None else "-"
                per_tx = f"{cpu * 1e6 / (tps * args.seconds):.1f}" if cpu else "-"
                lines.append(f"{c:>7} {p:<9} {target:<15} {tps:>9.0f} {lat:>7.3f} {cpu_s:>11} "
                             f"{per_tx:>9} {tps / direct[0]:>8.2f} {vs_pgb:>11}")
                if ref in med:
                    pgb = med[ref]
                    if c >= 16:
                        ratio = tps / pgb[0]
                        verdicts.append(
                            f"c{c} {p} {target}: throughput {ratio:.2f}x {ref} "
                            f"(target >= 0.90x): {'MET' if ratio >= 0.9 else 'NOT MET'}")
                    elif c == 1:
                        added, added_pgb = lat - direct[1], pgb[1] - direct[1]
                        ratio = added / added_pgb if added_pgb > 0 else float("inf")
                        verdicts.append(
                            f"c1 {p} {target}: adds {added * 1000:.0f} us vs {ref} "
                            f"{added_pgb * 1000:.0f} us = {ratio:.2f}x (target <= 1.20x): "
                            f"{'MET' if ratio <= 1.2 else 'NOT MET'}")
            lines.append("")
    lines.append("* vs PgBouncer session mode: PgBouncer 1.18 has no prepared statements in "
                 "transaction mode.")
    return lines + verdicts


async def idle_memory(gw: Gateway, count: int) -> tuple[float, int, int]:
    import psycopg
    info = (f"host=127.0.0.1 port={gw.port} user={gw.tenant} password={gw.password} "
            f"dbname=bench_t sslmode=disable")
    sem = asyncio.Semaphore(50)

    async def one():
        async with sem:
            return await psycopg.AsyncConnection.connect(info, autocommit=True)

    warm = await asyncio.gather(*(one() for _ in range(100)))  # one-time allocations
    await asyncio.gather(*(c.close() for c in warm))
    await asyncio.sleep(1.0)
    before = rss_kb(gw.pid)
    conns = await asyncio.gather(*(one() for _ in range(count)))
    try:
        await asyncio.sleep(1.0)
        for conn in conns[:: max(1, count // 20)]:  # they work
            await (await conn.execute("SELECT 1")).fetchone()
        after = rss_kb(gw.pid)
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return (after - before) / count, before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (3)")
    parser.add_argument("--seconds", type=int, default=None, help="seconds per run (15)")
    parser.add_argument("--clients", default="1,16")
    parser.add_argument("--protocols", default="simple,prepared")
    parser.add_argument("--idle", type=int, default=1000, help="idle clients for the memory "
                                                              "figure (0 skips it)")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (3 if args.quick else 15)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.protocols = args.protocols.split(",")

    with tempfile.TemporaryDirectory(prefix="pg-bench-") as tmp:
        gw = Gateway(tmp).start()
        try:
            print(f"gateway pid {gw.pid} on port {gw.port}; PgBouncer pid {pgbouncer_pid()}; "
                  f"{args.rounds} round(s) x {args.seconds} s"
                  + ("  [QUICK: short runs, noisy]" if args.quick else ""), flush=True)
            results = runs(gw, args)
            print("\n".join(report(results, args)), flush=True)
            if args.idle:
                per, before, after = asyncio.run(idle_memory(gw, args.idle))
                print(f"\nidle clients: {args.idle}, gateway RSS {before / 1024:.1f} MB -> "
                      f"{after / 1024:.1f} MB = {per:.1f} KB per idle client "
                      f"(target < 20 KB): {'MET' if per < 20 else 'NOT MET'}")
        finally:
            gw.stop()
    print("\nMeasured on one machine shared by pgbench, PostgreSQL and the proxies"
          + (" (and, here, other work: treat as noisy)." if args.quick else "."))


if __name__ == "__main__":
    main()
