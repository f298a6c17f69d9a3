#!/usr/bin/env python
"""Redis gateway benchmark: redis-benchmark through the gateway vs direct vs twemproxy.

    python bench/redis_bench.py [--quick] [--tests get,set,lpush,lpop] [--runs 3] [--workers 2]

Provisions its own tenant (SQLite control plane in a temp dir), starts the gateway as a real
``ogelkit run`` subprocess (uvloop), and runs ``redis-benchmark -t get,set,lpush,lpop`` at
``-c 1``, ``-c 50`` and ``-c 50 -P 16`` against:

* ``direct``     the test Redis (database 15, reserved for this benchmark, flushed after)
* ``twemproxy``  nutcracker at 127.0.0.1:52121 fronting the test Redis (``scripts/services.sh``)
* ``gateway``    the gateway, namespacing on, no layers (``--user tenant -a password``)
* ``gateway+layers``  the same with every O7s layer installed (skipped with a note if the
  layer plugins are missing)
* ``gw+layers xN``  (``--workers N``) the same with ``[gateway] workers = N`` and ``[state]``
  on the test Redis; its CPU is the sum over the worker processes

Prints requests/s per cell, the proxy's own CPU per request (utime+stime of the gateway or
nutcracker process / requests: steadier than throughput on a shared machine) and ratios
against twemproxy and direct (median of ``--runs``).
Everything runs on the same machine: the gateway's CPU is taken from redis-benchmark and
Redis, so ratios are pessimistic compared with a gateway on its own cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("OGELKIT_REDIS_PORT", "56379"))
TWEM_PORT = int(os.environ.get("OGELKIT_TWEMPROXY_PORT", "52121"))
DIRECT_DB = 15  # reserved for the redis plugin's tests and benchmarks
LAYERS = ["gatekeeper", "ratelimit", "cost", "session", "timeout", "usage", "intelligence"]
SECRET_KEY = "dGVzdC1rZXktZm9yLW9nZWxraXQtdGVzdHMtb25seSE="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def installed_layers() -> list[str]:
    from ogelkit.plugins import load_plugins
    plugins = load_plugins()
    return [name for name in LAYERS if name in plugins.layers]


class Gateway:
    """``ogelkit run`` in a subprocess with a freshly provisioned bench tenant."""

    def __init__(self, layers: list[str], workers: int = 1):
        self.dir = Path(tempfile.mkdtemp(prefix="ogelkit-redis-bench-"))
        # workers > 1 share limits through [state] (the test Redis; the tenant is new).
        extra = "" if workers == 1 else (
            f'workers = {workers}\n\n[state]\nurl = "redis://{REDIS_HOST}:{REDIS_PORT}/0"\n')
        self.port = free_port()
        self.tenant = f"bench-{secrets.token_hex(3)}"
        self.password = secrets.token_urlsafe(12)
        layer_tables = "".join(f'\n[[layers]]\ntype = "{name}"\n' for name in layers)
        self.config = f"""
[listen]
host = "127.0.0.1"
http = {free_port()}
redis = {self.port}

[gateway]
drain_timeout = "2s"
log_level = "warning"
{extra}
[control]
url = "sqlite:///{self.dir}/control.db"
secret_key = "{SECRET_KEY}"

[backends.bench]
type = "redis"
url = "redis://{REDIS_HOST}:{REDIS_PORT}/0"
quota_enforce = false
quota_sample_interval = "1h"

[tenants.{self.tenant}]
tier = "enterprise"
password = "{self.password}"
databases.main.backend = "bench"
{layer_tables}"""
        (self.dir / "config.toml").write_text(self.config)
        self.proc: subprocess.Popen | None = None

    def check(self) -> str | None:
        out = subprocess.run([sys.executable, "-m", "ogelkit", "check", str(self.dir / "config.toml")],
                             capture_output=True, text=True)
        return None if out.returncode == 0 else (out.stdout + out.stderr).strip()

    def start(self) -> None:
        log = open(self.dir / "gateway.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen([sys.executable, "-m", "ogelkit", "run",
                                      str(self.dir / "config.toml")],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "gateway.log").read_text())
            if port_open(self.port):
                return
            time.sleep(0.1)
        raise TimeoutError("gateway did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        # Remove what provisioning created upstream: the ACL user and the bench keys.
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ACL", "DELUSER",
                        f"o7s:{self.tenant}:main"], capture_output=True)
        keys = subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "--scan", "--pattern",
                               f"t:{self.tenant}:main:*"], capture_output=True, text=True).stdout.split()
        for i in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "UNLINK", *keys[i:i + 500]],
                           capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a process (and its threads) and of its worker processes (children,
    ``[gateway] workers``), from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(c) for c in task.read_text().split()]
        except OSError:
            pass
    return own + sum(cpu_seconds(c) or 0.0 for c in children)


def twemproxy_pid() -> int | None:
    root = Path(__file__).resolve().parent.parent
    pidfile = Path(os.environ.get("OGELKIT_SERVICES_DIR", root / ".services")) / "nutcracker" / \
        "nutcracker.pid"
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def redis_benchmark(port: int, tests: str, n: int, clients: int, pipeline: int,
                    auth: tuple[str, str] | None = None, dbnum: int | None = None) -> dict[str, float]:
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", tests, "-n", str(n),
           "-c", str(clients), "-P", str(pipeline), "--csv"]
    if auth is not None:
        cmd += ["--user", auth[0], "-a", auth[1]]
    if dbnum is not None:
        cmd += ["--dbnum", str(dbnum)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    rows = {}
    for row in csv.reader(io.StringIO(out.stdout)):
        if len(row) >= 2 and row[0] != "test":
            try:
                rows[row[0].split()[0]] = float(row[1])
            except ValueError:
                pass
    if not rows:
        raise RuntimeError(f"redis-benchmark printed nothing usable: {out.stdout}{out.stderr}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few requests, one run per cell")
    ap.add_argument("--tests", default="get,set,lpush,lpop")
    ap.add_argument("--runs", type=int, default=3, help="runs per cell (median); --quick: 1")
    ap.add_argument("--workers", type=int, default=1,
                    help="also run gateway+layers with [gateway] workers = N (N > 1)")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    n_plain = 20_000 if args.quick else 200_000
    n_pipe = 100_000 if args.quick else 2_000_000
    cells = [("c1", 1, 1, n_plain // 4 if args.quick else n_plain), ("c50", 50, 1, n_plain),
             ("c50 P16", 50, 16, n_pipe)]

    for tool in ("redis-benchmark", "redis-cli"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: run scripts/services.sh up")
            return 2

    targets: list[tuple[str, int, tuple[str, str] | None, int | None]] = [
        ("direct", REDIS_PORT, None, DIRECT_DB)]
    pids: dict[str, int | None] = {"direct": None}
    if port_open(TWEM_PORT):
        targets.append(("twemproxy", TWEM_PORT, None, None))
        pids["twemproxy"] = twemproxy_pid()
    else:
        print(f"note: twemproxy is not listening on {TWEM_PORT}; ratios vs twemproxy skipped")

    gateways: list[tuple[str, Gateway]] = [("gateway", Gateway([]))]
    layers = installed_layers()
    if len(layers) == len(LAYERS):
        gw = Gateway(layers)
        problem = gw.check()
        if problem is None:
            gateways.append(("gateway+layers", gw))
            if args.workers > 1:
                gateways.append((f"gw+layers x{args.workers}", Gateway(layers, args.workers)))
        else:
            print(f"note: gateway+layers skipped, its config does not validate:\n{problem}")
    else:
        missing = sorted(set(LAYERS) - set(layers))
        print(f"note: gateway+layers skipped: layer plugins not installed: {', '.join(missing)}")

    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    cpu_us: dict[tuple[str, str], list[float]] = {}
    try:
        for name, gw in gateways:
            gw.start()
            targets.append((name, gw.port, (gw.tenant, gw.password), None))
            pids[name] = gw.proc.pid if gw.proc is not None else None
        for _ in range(runs):
            for cell, c, p, n in cells:
                for name, port, auth, db in targets:  # alternate targets within a repetition
                    before = cpu_seconds(pids.get(name))
                    rps = redis_benchmark(port, args.tests, n, c, p, auth, db)
                    after = cpu_seconds(pids.get(name))
                    for test, value in rps.items():
                        results.setdefault((name, cell), {}).setdefault(test, []).append(value)
                    if before is not None and after is not None:
                        total = n * len(rps)
                        cpu_us.setdefault((name, cell), []).append((after - before) / total * 1e6)
                    time.sleep(0.3)
    finally:
        for _, gw in gateways:
            gw.stop()
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "-n", str(DIRECT_DB), "FLUSHDB"],
                       capture_output=True)

    tests = [t.upper() for t in args.tests.split(",")]
    names = [t[0] for t in targets]
    print()
    print(f"redis-benchmark requests/s, median of {runs} run(s); -n {n_plain} (c1: "
          f"{cells[0][3]}), pipelined -n {n_pipe}. Shared 2-core machine: noisy.")
    for cell, *_ in cells:
        print(f"\n[{cell}]")
        header = (f"{'target':<16}" + "".join(f"{t:>12}" for t in tests) + f"{'proxy CPU':>11}"
                  + "   ratio vs twemproxy / direct")
        print(header)
        for name in names:
            row = results.get((name, cell), {})
            med = {t: statistics.median(row[t]) for t in tests if t in row}
            line = f"{name:<16}" + "".join(f"{med.get(t, 0):>12,.0f}" for t in tests)
            cpu = cpu_us.get((name, cell))
            line += f"{statistics.median(cpu):>8.1f} us" if cpu else f"{'-':>11}"
            ratios = []
            for ref in ("twemproxy", "direct"):
                base = results.get((ref, cell))
                if base is None or ref == name:
                    continue
                rs = [med[t] / statistics.median(base[t]) for t in tests if t in med and t in base]
                if rs:
                    ratios.append(f"{ref} {statistics.mean(rs):.2f}x (" + " ".join(
                        f"{r:.2f}" for r in rs) + ")")
            print(line + "   " + "; ".join(ratios))
    print_targets(results, tests)
    return 0


#: Issue 15's Redis targets: (cell, gateway target, minimum ratio vs twemproxy).
TARGETS = [("c50", "gateway", 1.0), ("c50", "gateway+layers", 0.9),
           ("c50 P16", "gateway+layers", 1.0)]


def print_targets(results: dict[tuple[str, str], dict[str, list[float]]],
                  tests: list[str]) -> None:
    """The targets next to this run's ratios (mean over the commands) and a verdict."""
    print("\ntargets (ratio vs twemproxy, this run)")
    print(f"{'cell':<10}{'path':<18}{'target':>8}{'now':>8}  verdict")
    for cell, name, goal in TARGETS:
        mine, base = results.get((name, cell)), results.get(("twemproxy", cell))
        if not mine or not base:
            print(f"{cell:<10}{name:<18}{goal:>7.2f}x{'-':>8}  not measured")
            continue
        rs = [statistics.median(mine[t]) / statistics.median(base[t])
              for t in tests if t in mine and t in base]
        now = statistics.mean(rs)
        print(f"{cell:<10}{name:<18}{goal:>7.2f}x{now:>7.2f}x  "
              f"{'met' if now >= goal else 'not met'}")


if __name__ == "__main__":
    sys.exit(main())
