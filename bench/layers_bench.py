"""What the O7s layers cost: pgbench through the gateway with every layer on, with none, and
through PgBouncer, in one run; then again with Redis-shared state; plus micro-benchmarks of
single layer decisions.

    python bench/layers_bench.py            # 3 alternating 15 s pgbench runs per path
    python bench/layers_bench.py --quick    # 1 run of 5 s per path (noisy, shared machines)
    python bench/layers_bench.py --micro-only

Paths (pgbench -n -S -M simple -c 16 -j 2, the same pgbench-initialised data, scale 10):

- ``pgbouncer``: PgBouncer session mode, database ``bench`` (``services.sh``), the anchor;
- ``gateway, no layers``: ``ogelkit run`` with the postgres backend and no ``[[layers]]``;
- ``gateway, all layers``: the same with every installed O7s layer in the canonical order,
  on a bench tier whose limits are active but never reached (so every layer does its real
  per-operation work: the rate limiter decides, the cost layer looks its cache up, the
  timeout layer arms and cancels a timer ...). Layer types that are not installed are
  listed as missing.

The bench tenant (``benchco``, tier ``bench``) and its pgbench tables (scale 10, loaded
through the gateway) are created on the first run and kept: control plane in
``.services/layers-bench/control.db``, upstream database ``o7sbench_benchco__main``. Besides
tps, each gateway row shows the gateway process's own CPU per transaction (utime + stime
from /proc), which is steadier than tps on a shared machine.

Targets (issue 15): no layers >= 1.0x PgBouncer, all layers >= 0.9x. Everything shares
the machine's cores: throughput ratios are pessimistic, and on a shared machine noisy.
Not a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import ogelkit
from ogelkit.config.schema import options_table
from ogelkit.plugins import load_plugins
from ogelkit.testing import make_operation, make_session, minimal_config, services, test_context

ROOT = Path(__file__).resolve().parent.parent
CANONICAL = ("gatekeeper", "ratelimit", "cost", "session", "timeout", "usage", "intelligence")
PGBOUNCER = ("127.0.0.1", 56432, "bench")

# Limits that are enforced (every layer takes its real code path) but never reached.
BENCH_TIER = """
[tiers.bench]
base = "pro"
rank = 10
connections = 1000
ops_per_second = 10000000
burst = 10000000
cost_ceiling = 1000000000
statement_timeout = "60s"
"""


# -- micro-benchmarks: one layer, called directly ------------------------------------------------

class _MicroBackend(ogelkit.Backend):
    """Just enough backend for the cost layer: the statement text is its own cost key."""

    type_name = "micro"
    protocol = "micro"

    def cost_key(self, op):
        return op.text

    async def estimate_cost(self, op):
        return 8.27


def _layer(plugins, type_name: str, ctx, **values):
    from ogelkit.config.errors import ErrorCollector
    from ogelkit.config.schema import structure
    cls = plugins.layers[type_name]
    errors = ErrorCollector("bench")
    options = structure(cls.Config, values, "layers", errors)
    if errors.errors:
        raise SystemExit("; ".join(str(e) for e in errors.errors))
    return cls(options, name=type_name, context=ctx)


def _ns_per_call(fn, n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n


async def micro(plugins, n: int, redis_ops: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    tiers = BENCH_TIER
    async with test_context(minimal_config(tiers), plugins=plugins) as ctx:
        session = make_session(ctx, tier="bench")
        op = make_operation(session)
        if "ratelimit" in plugins.layers:
            rl = _layer(plugins, "ratelimit", ctx)
            await rl.open()
            on_op = rl.on_operation
            rows.append(("ratelimit decision, in-process",
                         f"{_ns_per_call(lambda: on_op(op), n) / 1000:.2f} µs"))
            free = make_session(ctx, tier="free")
            free_op = make_operation(free)

            def limited() -> None:
                try:
                    on_op(free_op)
                except ogelkit.Reject:
                    pass
            rows.append(("ratelimit decision, in-process, over the limit (refusal built)",
                         f"{_ns_per_call(limited, n // 4) / 1000:.2f} µs"))
        if "cost" in plugins.layers:
            cost = _layer(plugins, "cost", ctx)
            await cost.open()
            session.backend = _MicroBackend(None, name="micro", context=ctx)
            text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
            cop = make_operation(session, text=text)
            pending = cost.on_operation(cop)
            if pending is not None:
                await pending  # the one miss: fills the cache
            on_cost = cost.on_operation
            rows.append(("cost decision, cache hit, statement repeated verbatim",
                         f"{_ns_per_call(lambda: on_cost(cop), n) / 1000:.2f} µs"))
            if "postgres" in plugins.backends:
                # Literals differ on every call (pgbench -M simple): the Postgres backend's
                # cost_key normalises each statement before the cache lookup.
                pg = plugins.backends["postgres"]
                from ogelkit.config.errors import ErrorCollector
                from ogelkit.config.schema import structure
                pg_options = structure(pg.Config, {"dsn": services.pg_dsn()}, "b",
                                       ErrorCollector("bench"))
                backend = pg(pg_options, name="pg", context=ctx)
                backend.estimate_cost = _MicroBackend.estimate_cost.__get__(backend)
                session.backend = backend
                texts = [f"SELECT abalance FROM pgbench_accounts WHERE aid = {i};"
                         for i in range(n // 4)]
                ops = [make_operation(session, text=t) for t in texts]
                pending = cost.on_operation(ops[0])
                if pending is not None:
                    await pending
                t0 = time.perf_counter_ns()
                for o in ops:
                    on_cost(o)
                rows.append(("cost decision, cache hit, literals differ (Postgres cost_key)",
                             f"{(time.perf_counter_ns() - t0) / len(ops) / 1000:.2f} µs"))
            session.backend = None
        if "timeout" in plugins.layers:
            to = _layer(plugins, "timeout", ctx)
            await to.open()
            arm, disarm = to.on_operation, to.on_complete

            def timer() -> None:
                arm(op)
                disarm(op)
            rows.append(("timeout arm + cancel per operation",
                         f"{_ns_per_call(timer, n) / 1000:.2f} µs"))
        if "gatekeeper" in plugins.layers:
            gk = _layer(plugins, "gatekeeper", ctx)
            await gk.open()
            t0 = time.perf_counter_ns()
            for _ in range(n // 10):
                s = make_session(ctx, tier="bench")
                await gk.on_connect(s)
                gk.on_disconnect(s)
            rows.append(("gatekeeper connect + disconnect, in-process (incl. a Session)",
                         f"{(time.perf_counter_ns() - t0) / (n // 10) / 1000:.2f} µs"))

    if "ratelimit" in plugins.layers:
        prefix = f"o7s-bench-{uuid.uuid4().hex[:8]}:"
        state = f'[state]\nurl = "{services.redis_url()}"\n'
        async with test_context(minimal_config(state + tiers), plugins=plugins) as ctx:
            for label, values in (("every decision in Redis", {"prefetch": 0}),
                                  ("default prefetch, bench tier", {})):
                rl = _layer(plugins, "ratelimit", ctx, key_prefix=prefix, **values)
                await rl.open()
                session = make_session(ctx, tier="bench")
                seq = max(200, redis_ops // 10)
                t0 = time.perf_counter()
                for _ in range(seq):
                    pending = rl.on_operation(make_operation(session))
                    if pending is not None:
                        await pending
                rows.append((f"ratelimit decision, Redis ({label}), one at a time",
                             f"{(time.perf_counter() - t0) / seq * 1e6:.1f} µs"))
                done = 0
                calls0 = rl.describe()["redis_calls"]
                cpu0, t0 = time.process_time(), time.perf_counter()

                async def worker(rl=rl, session=session) -> None:
                    nonlocal done
                    while done < redis_ops:
                        done += 1
                        pending = rl.on_operation(make_operation(session))
                        if pending is not None:
                            await pending
                        else:
                            await asyncio.sleep(0)
                await asyncio.gather(*(worker() for _ in range(16)))
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                rows.append((f"ratelimit decision, Redis ({label}), 16 concurrent",
                             f"{done / wall:,.0f} decisions/s, {cpu / done * 1e6:.1f} µs CPU "
                             f"each, {rl.describe()['redis_calls'] - calls0} round trips"))
                await rl.close()
            client = ctx.state()
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
    return rows


# -- pgbench through the gateway ------------------------------------------------------------------

def _tps(output: str) -> float:
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    if not m:
        raise RuntimeError(f"no tps in pgbench output:\n{output}")
    return float(m.group(1))


def pgbench(host: str, port: int, user: str, password: str, db: str, seconds: int, *,
            select_only: bool = True, clients: int = 16) -> float:
    """pgbench's tps: ``-S`` (one SELECT per transaction) or, with ``select_only=False``,
    its TPC-B-like script (BEGIN, three UPDATEs, a SELECT, an INSERT, END: writes)."""
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    script = ["-S"] if select_only else []
    out = subprocess.run(
        ["pgbench", "-h", host, "-p", str(port), "-U", user, "-n", *script, "-M", "simple",
         "-c", str(clients), "-j", "2", "-T", str(seconds), db],
        env=env, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed ({out.returncode}):\n{out.stderr}\n{out.stdout}")
    return _tps(out.stdout)


def layer_tables(plugins, shared: bool, prefix: str) -> tuple[str, list[str]]:
    """``[[layers]]`` tables for every installed canonical layer, and the missing names."""
    tables, missing = [], []
    for name in CANONICAL:
        cls = plugins.layers.get(name)
        if cls is None:
            missing.append(name)
            continue
        table = f'[[layers]]\ntype = "{name}"\n'
        if shared and any(row[0] == "key_prefix" for row in options_table(cls.Config)):
            table += f'key_prefix = "{prefix}"\n'
        tables.append(table)
    return "\n".join(tables), missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one 5 s pgbench run per path and short micro-benchmarks")
    parser.add_argument("--micro-only", action="store_true", help="skip the pgbench part")
    parser.add_argument("--seconds", type=int, help="pgbench -T per run")
    parser.add_argument("--repeat", type=int, help="alternating runs per path (median)")
    args = parser.parse_args()
    seconds = args.seconds or (5 if args.quick else 15)
    repeat = args.repeat or (1 if args.quick else 3)
    plugins = load_plugins()

    print("# O7s layers benchmark" + (" (--quick: single short runs, NOISY)" if args.quick else ""))
    print(f"# {os.cpu_count()} CPUs, shared by load generator, gateway and servers; "
          "numbers from a shared machine are noisy")
    present = [n for n in CANONICAL if n in plugins.layers]
    missing = [n for n in CANONICAL if n not in plugins.layers]
    print(f"# layers installed: {', '.join(present) or 'none'}")
    print(f"# layers missing:   {', '.join(missing) or 'none'}")
    if plugins.errors:
        for err in plugins.errors:
            print(f"# plugin problem: {err.splitlines()[0]}")

    import uvloop
    n = 50_000 if args.quick else 300_000
    rows = uvloop.run(micro(plugins, n, 2_000 if args.quick else 20_000))
    print("\n## layer decisions (the layer called directly, one pass each)")
    for name, value in rows:
        print(f"{name:70} {value}")

    if args.micro_only:
        return
    run_pgbench_paths(plugins, seconds, repeat)


STATE_DIR = ROOT / ".services" / "layers-bench"
TENANT, PASSWORD = "benchco", "bench-password"


def gateway_config(port: int, layers: str, state_url: str | None) -> str:
    from ogelkit.testing import test_secret_key
    state = f'[state]\nurl = "{state_url}"\n' if state_url else ""
    return f"""[listen]
host = "127.0.0.1"
http = 0
postgres = {port}

[gateway]
drain_timeout = "2s"

[control]
url = "sqlite:///{STATE_DIR}/control.db"
secret_key = "{test_secret_key()}"

{state}
[backends.pg]
type = "postgres"
dsn = "{services.pg_dsn()}"
pool_mode = "session"          # as PgBouncer's `bench` database
pool_size = 20
name_prefix = "o7sbench_"
{BENCH_TIER}
[tenants.{TENANT}]
tier = "bench"
password = "{PASSWORD}"
[tenants.{TENANT}.databases.main]
backend = "pg"

{layers}
"""


class Gateway:
    """``ogelkit run`` in its own process (uvloop, as in production) on a fixed port."""

    def __init__(self, label: str, layers: str, state_url: str | None, env: dict[str, str]):
        from ogelkit.testing import GatewayProcess
        from ogelkit.testing.redis_server import free_port
        self.label = label
        self.port = free_port()
        workdir = tempfile.mkdtemp(prefix="ogelkit-bench-")
        self.proc = GatewayProcess(gateway_config(self.port, layers, state_url), env=env,
                                   workdir=workdir)
        self.workdir = workdir

    def start(self) -> Gateway:
        self.proc.start(wait_ready=120)
        return self

    def cpu_seconds(self) -> float:
        """utime + stime of the gateway process (for CPU per transaction)."""
        fields = Path(f"/proc/{self.proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def ensure_data(gw: Gateway) -> None:
    """The tenant's database holds pgbench tables at PgBouncer's scale (10); created once."""
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PGSSLMODE": "disable"}
    target = ["-h", "127.0.0.1", "-p", str(gw.port), "-U", TENANT]
    check = subprocess.run(["psql", "-X", "-At", *target, "-d", "main", "-c",
                            "SELECT count(*) FROM pgbench_accounts"],
                           env=env, capture_output=True, text=True, timeout=60)
    if check.returncode == 0 and check.stdout.strip() == "1000000":
        return
    print("# initialising pgbench tables (scale 10) in the bench tenant's database, once")
    init = subprocess.run(["pgbench", *target, "-i", "-s", "10", "-q", "main"], env=env,
                          capture_output=True, text=True, timeout=900)
    if init.returncode != 0:
        raise SystemExit(f"pgbench -i through the gateway failed:\n{init.stderr}")


def run_phase(title: str, gateways: list[Gateway], seconds: int, repeat: int) -> None:
    paths: list[tuple[str, Gateway | None]] = [("pgbouncer (session mode)", None)]
    paths += [(gw.label, gw) for gw in gateways]
    tps: dict[str, list[float]] = {name: [] for name, _ in paths}
    cpu: dict[str, list[float]] = {name: [] for name, _ in paths}
    for rep in range(repeat):
        order = paths[rep % len(paths):] + paths[:rep % len(paths)]  # alternate the order
        for name, gw in order:
            if gw is None:
                host, port, db = PGBOUNCER
                tps[name].append(pgbench(host, port, "postgres", "postgres", db, seconds))
            else:
                before = gw.cpu_seconds()
                value = pgbench("127.0.0.1", gw.port, TENANT, PASSWORD, "main", seconds)
                tps[name].append(value)
                cpu[name].append((gw.cpu_seconds() - before) / (value * seconds) * 1e6)
            time.sleep(1)
    anchor = statistics.median(tps[paths[0][0]])
    print(f"\n## {title}: pgbench -S -M simple -c 16 -j 2 -T {seconds}, "
          f"median of {repeat} alternating run(s)")
    print(f"{'path':44} {'tps':>9} {'x PgBouncer':>12} {'gateway CPU µs/tx':>18}  runs")
    for name, _ in paths:
        med = statistics.median(tps[name])
        cpu_tx = f"{statistics.median(cpu[name]):.1f}" if cpu[name] else "-"
        runs = ", ".join(f"{v:,.0f}" for v in tps[name])
        print(f"{name:44} {med:9,.0f} {med / anchor:11.2f}x {cpu_tx:>18}  {runs}")
    # Issue 15's targets: >= 1.0x PgBouncer without layers, >= 0.9x with all seven.
    for name, gw in paths:
        if gw is None:
            continue
        goal = 1.0 if "no layers" in name else 0.9
        ratio = statistics.median(tps[name]) / anchor
        verdict = "met" if ratio >= goal else "NOT met"
        print(f"target >= {goal:.2f}x PgBouncer for '{name}': {ratio:.2f}x, {verdict}")


def upstream_database(gw: Gateway) -> str:
    """The bench tenant's upstream database name (what ``current_database()`` says)."""
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PGSSLMODE": "disable"}
    out = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(gw.port), "-U",
                          TENANT, "-d", "main", "-c", "SELECT current_database()"],
                         env=env, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"psql through the gateway failed:\n{out.stderr}")
    return out.stdout.strip()


def run_writes(gw: Gateway, seconds: int, repeat: int) -> None:
    """pgbench's TPC-B-like writes at -c 8: direct (superuser, the tenant's upstream
    database) against the gateway with every layer; issue 15's target is >= 0.8x direct."""
    from urllib.parse import urlsplit
    dsn = urlsplit(services.pg_dsn())
    dbname = upstream_database(gw)
    tps: dict[str, list[float]] = {"direct": [], gw.label: []}
    for rep in range(repeat):
        for name in (("direct", gw.label) if rep % 2 == 0 else (gw.label, "direct")):
            if name == "direct":
                tps[name].append(pgbench(dsn.hostname or "127.0.0.1", dsn.port or 5432,
                                         dsn.username or "postgres", dsn.password or "",
                                         dbname, seconds, select_only=False, clients=8))
            else:
                tps[name].append(pgbench("127.0.0.1", gw.port, TENANT, PASSWORD, "main",
                                         seconds, select_only=False, clients=8))
            time.sleep(1)
    anchor = statistics.median(tps["direct"])
    print(f"\n## writes: pgbench TPC-B-like -M simple -c 8 -j 2 -T {seconds}, "
          f"median of {repeat} alternating run(s)")
    print(f"{'path':44} {'tps':>9} {'x direct':>12}  runs")
    for name, values in tps.items():
        med = statistics.median(values)
        print(f"{name:44} {med:9,.0f} {med / anchor:11.2f}x  "
              + ", ".join(f"{v:,.0f}" for v in values))
    ratio = statistics.median(tps[gw.label]) / anchor
    print(f"target >= 0.80x direct for '{gw.label}' (writes): {ratio:.2f}x, "
          f"{'met' if ratio >= 0.8 else 'NOT met'}")


def run_pgbench_paths(plugins, seconds: int, repeat: int) -> None:
    if shutil.which("pgbench") is None:
        raise SystemExit("pgbench not found (scripts/services.sh up installs it)")
    if "postgres" not in plugins.backends:
        raise SystemExit("the postgres backend (ogelkit-postgres) is not installed")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    present = [n for n in CANONICAL if n in plugins.layers]
    env = {"OGELKIT_LOAD_PLUGINS": ",".join(["postgres", *present])}
    prefix = f"o7s-bench-{uuid.uuid4().hex[:8]}:"
    local_layers, _ = layer_tables(plugins, False, prefix)
    shared_layers, _ = layer_tables(plugins, True, prefix)
    n = len(present)

    bare = Gateway("gateway, no layers", "", None, env).start()
    try:
        ensure_data(bare)
        local = Gateway(f"gateway, {n} layers, in-process state", local_layers, None, env).start()
        try:
            run_phase("in-process state", [bare, local], seconds, repeat)
            run_writes(local, seconds, repeat)
        finally:
            local.stop()
        shared = Gateway(f"gateway, {n} layers, Redis-shared state", shared_layers,
                         services.redis_url(), env).start()
        try:
            run_phase("Redis-shared state ([state] url)", [bare, shared], seconds, repeat)
        finally:
            shared.stop()
    finally:
        bare.stop()
        _drop_redis_keys(prefix)


def _drop_redis_keys(prefix: str) -> None:
    import redis
    client = redis.Redis.from_url(services.redis_url())
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


if __name__ == "__main__":
    main()
