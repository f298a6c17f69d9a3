"""MongoDB gateway vs direct FerretDB: latency and throughput of find_one by _id and
insert_one, with pymongo, at 1 and 16 concurrent clients, in one run.

    python bench/mongo_bench.py [--quick] [--seconds 10] [--rounds 3] [--docs 100]

Provisions its own tenant (enterprise tier, so no limit interferes) through a real
``ogelkit run`` subprocess (uvloop, session layer on: every find carries the tier's
maxTimeMS), loads ``--docs`` documents, then alternates direct and gateway runs and prints
the median of ``--rounds`` per cell, with gateway/direct ratios. FerretDB 1.x on SQLite
answers find by _id with a scan (its explain says SCAN), so the collection is kept small by
default: a big one measures FerretDB, not the gateway. Needs the FerretDB that
``scripts/services.sh up`` starts (``OGELKIT_TEST_FERRETDB_URL`` overrides it). Not a timed
test: figures for reports. On a shared machine the numbers are noisy; say so when quoting.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pymongo

from ogelkit.testing import GatewayProcess, services, test_secret_key

PASSWORD = "bench-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(workdir: Path, slug: str, upstream: str, port: int, http: int) -> str:
    return f"""
[listen]
host = "127.0.0.1"
http = {http}
mongodb = {port}

[gateway]
drain_timeout = "5s"

[control]
url = "sqlite:///{workdir}/control.db"
secret_key = "{test_secret_key()}"

[backends.mongo]
type = "mongodb"
url = "{upstream}"
pool_size = 32

[[layers]]
type = "session"

[tenants.{slug}]
tier = "enterprise"
password = "{PASSWORD}"

[tenants.{slug}.databases.main]
backend = "mongo"
"""


# The enterprise tier's statement timeout, which the gateway's session layer puts on every
# find as maxTimeMS: the direct path sends it too, so both ask FerretDB the same thing
# (FerretDB 1.x answers a find with maxTimeMS measurably slower).
TIER_MAX_TIME_MS = 120_000


def _worker(client: pymongo.MongoClient, db: str, kind: str, docs: int, stop: threading.Event,
            out: list[float], direct: bool) -> None:
    coll = client[db]["bench" if kind == "find_one" else "bench_ins"]
    rnd = random.Random()
    perf = time.perf_counter
    extra = {"max_time_ms": TIER_MAX_TIME_MS} if direct else {}
    while not stop.is_set():
        if kind == "find_one":
            t0 = perf()
            coll.find_one({"_id": rnd.randrange(docs)}, **extra)
        else:
            t0 = perf()
            coll.insert_one({"v": 1, "s": "payload-" * 4})
        out.append(perf() - t0)


def _cpu_seconds(pid: int | None) -> float:
    """User+system CPU time of a process (Linux /proc; 0 elsewhere)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def run_cell(url: str, db: str, kind: str, clients: int, seconds: float, docs: int,
             pid: int | None = None) -> dict:
    conns = [pymongo.MongoClient(url, maxPoolSize=1, serverSelectionTimeoutMS=5000)
             for _ in range(clients)]
    for c in conns:  # connect + authenticate outside the measurement
        c[db].command("ping")
        c[db]["bench"].find_one({"_id": 0})
    stop = threading.Event()
    samples: list[list[float]] = [[] for _ in range(clients)]
    direct = "@" not in url
    threads = [threading.Thread(target=_worker, args=(c, db, kind, docs, stop, s, direct))
               for c, s in zip(conns, samples, strict=True)]
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds(pid)
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu = _cpu_seconds(pid) - cpu0
    for c in conns:
        c.close()
    lat = sorted(x for s in samples for x in s)
    return {"ops": len(lat) / elapsed, "cpu_us": cpu / max(len(lat), 1) * 1e6,
            "mean_us": statistics.fmean(lat) * 1e6,
            "p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[int(len(lat) * 0.99)] * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per cell, 1 round")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=100,
                        help="collection size (FerretDB/SQLite scans it for find by _id)")
    parser.add_argument("--upstream", default=services.ferretdb_url())
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 1

    slug = f"bench-{uuid.uuid4().hex[:8]}"
    upstream_db = f"t_{slug}__main"
    workdir = Path(tempfile.mkdtemp(prefix="ogelkit-mongo-bench-"))
    port, http = _free_port(), _free_port()
    gw = GatewayProcess(_config(workdir, slug, args.upstream, port, http), workdir=str(workdir))
    gw.start()
    direct_url = args.upstream
    gateway_url = f"mongodb://{slug}:{PASSWORD}@127.0.0.1:{port}/?authSource=main"
    try:
        with pymongo.MongoClient(gateway_url, serverSelectionTimeoutMS=5000) as c:
            c.main.bench.insert_many([{"_id": i, "v": i, "s": "x" * 64} for i in range(args.docs)])
        results: dict[tuple[str, str, int], list[dict]] = {}
        for _round in range(args.rounds):
            for kind in ("find_one", "insert_one"):
                for clients in (1, 16):
                    for path, url, db in (("direct", direct_url, upstream_db),
                                          ("gateway", gateway_url, "main")):
                        pid = gw.proc.pid if path == "gateway" and gw.proc else None
                        cell = run_cell(url, db, kind, clients, args.seconds, args.docs, pid)
                        results.setdefault((kind, path, clients), []).append(cell)
        print(f"MongoDB gateway benchmark: FerretDB {args.upstream}, {args.docs} documents, "
              f"{args.seconds:g} s x {args.rounds} round(s), pymongo {pymongo.version}, "
              f"{os.cpu_count()} CPUs")
        print("NOTE: shared machine: the figures are noisy; compare ratios within this run.")
        print(f"Direct finds carry maxTimeMS={TIER_MAX_TIME_MS}, as the gateway's session layer "
              "adds it to gateway finds.")
        print(f"{'workload':<11}{'clients':>8}{'path':>9}{'ops/s':>10}{'mean us':>10}"
              f"{'p50 us':>10}{'p99 us':>10}{'tput ratio':>12}{'added us':>10}{'gw cpu us/op':>14}")
        for kind in ("find_one", "insert_one"):
            for clients in (1, 16):
                med = {}
                for path in ("direct", "gateway"):
                    cells = results[(kind, path, clients)]
                    med[path] = {k: statistics.median(c[k] for c in cells) for k in cells[0]}
                for path in ("direct", "gateway"):
                    m = med[path]
                    ratio = m["ops"] / med["direct"]["ops"]
                    added = m["mean_us"] - med["direct"]["mean_us"]
                    print(f"{kind:<11}{clients:>8}{path:>9}{m['ops']:>10.0f}{m['mean_us']:>10.0f}"
                          f"{m['p50_us']:>10.0f}{m['p99_us']:>10.0f}{ratio:>12.2f}"
                          f"{(added if path == 'gateway' else 0):>10.0f}"
                          f"{(m['cpu_us'] if path == 'gateway' else 0):>14.0f}")
    finally:
        try:
            with pymongo.MongoClient(direct_url, serverSelectionTimeoutMS=5000) as c:
                c.drop_database(upstream_db)
        finally:
            gw.signal()
            gw.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
