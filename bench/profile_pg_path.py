"""Where the Postgres request path spends its time, with and without the seven O7s layers.

    python bench/profile_pg_path.py relay     # µs per transaction in the relay, no sockets
    python bench/profile_pg_path.py chain     # µs per operation in the chain, per layer phase
    python bench/profile_pg_path.py profile   # cProfile of the event loop under pgbench
    python bench/profile_pg_path.py profile --no-layers --seconds 5 --clients 16
    python bench/profile_pg_path.py profile --writes --clients 8   # TPC-B-like writes

All run the gateway in this process (uvloop) with the configuration of
``bench/layers_bench.py`` (the bench tenant ``benchco`` on tier ``bench``, every installed
canonical layer, in-process state, session pooling), so the layers run with a real Postgres
backend and a real session logged in over the wire (one asyncpg client):

* ``relay``: that client's ``ClientConnection`` is fed pgbench -S transactions (a Query with
  a new literal each time, then PostgreSQL's reply) with both sockets replaced by no-op
  transports: the relay's own Python work per transaction, with the layers, with operations
  built but an empty chain, and on the front door's no-observer path. The steadiest figure
  for changes to the per-operation code; a real run costs about twice as much (cold caches,
  uvloop and the kernel in between), see ``layers_bench.py``'s CPU µs/tx.
* ``chain``: the front door's per-Query work (``Operation`` built, ``chain.admit``, result
  fields, ``chain.complete``) in a loop, then each layer's phases alone.
* ``profile``: ``pgbench -S`` against the gateway while ``cProfile`` watches the event loop
  thread; prints the functions with the most own time. cProfile inflates small Python
  functions, and uvloop's ``transport.write`` (the send syscall) is counted in its caller's
  own time: read it for *where*, not *how much*.

Not a timed test; numbers from a shared machine are noisy (min of several repeats shown).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import layers_bench as lb

from ogelkit.plugins import load_plugins
from ogelkit.testing import running_gateway


def _config(plugins, layers: bool) -> str:
    tables, _ = lb.layer_tables(plugins, False, "unused:") if layers else ("", [])
    return lb.gateway_config(0, tables, None)  # port 0: any free port


async def _session_of(gw):
    """The gateway's Session of the one client we connected."""
    for _ in range(200):
        sessions = gw.context.sessions.of(lb.TENANT)
        if sessions:
            return sessions[0]
        await asyncio.sleep(0.01)
    raise RuntimeError("the bench client's session did not appear")


def _time_ops(session, chain, texts, canceller) -> float:
    """µs per operation: what the Postgres front door does per Query, minus the I/O."""
    from ogelkit_postgres.sql import verb_of

    from ogelkit.model import Operation
    monotonic = time.monotonic
    admit, complete = chain.admit, chain.complete
    t0 = time.perf_counter_ns()
    for text in texts:
        op = Operation(session, "query", verb_of(text), text, len(text) + 6)
        op.canceller = canceller
        admit(op)
        op.bytes_out = 120
        op.rows = 1
        op.ended = monotonic()
        complete(op)
    return (time.perf_counter_ns() - t0) / len(texts) / 1000


def _time_phase(fn, ops) -> float:
    t0 = time.perf_counter_ns()
    for op in ops:
        fn(op)
    return (time.perf_counter_ns() - t0) / len(ops) / 1000


async def chain_mode(args) -> None:
    import asyncpg

    from ogelkit.chain import Chain
    from ogelkit.model import Operation
    plugins = load_plugins()
    async with running_gateway(_config(plugins, True), plugins=plugins) as gw:
        port = gw.port("postgres")
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=lb.TENANT,
                                     password=lb.PASSWORD, database="main", ssl=False)
        try:
            await conn.fetchval("SELECT 1")
            session = await _session_of(gw)
            chain = gw.context.chain
            print(f"# layers: {', '.join(layer.name for layer in chain.layers)}")
            print(f"# session: {session!r}, tier {session.tier.name}, "
                  f"backend {session.backend.name}")
            n = args.ops
            for text in ("SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
                         "SELECT abalance FROM pgbench_accounts WHERE aid = $1"):
                op = Operation(session, "query", "SELECT", text, 60)
                pending = chain.admit(op)  # fills the cost cache: every timed call is a hit
                if pending is not None:
                    await pending
                op.ended = time.monotonic()
                chain.complete(op)
            canceller = lambda reject: None  # noqa: E731  (the front door's is a bound method)
            rows = []
            for label, ch in (("empty chain (Operation + verb_of only)", Chain([])),
                              (f"{len(chain)} layers, new literal every statement", chain)):
                best = min(_time_ops(session, ch, [
                    f"SELECT abalance FROM pgbench_accounts WHERE aid = {i + r * n};"
                    for i in range(n)], canceller) for r in range(args.repeat))
                rows.append((label, best))
            same = ["SELECT abalance FROM pgbench_accounts WHERE aid = $1"] * n
            rows.append((f"{len(chain)} layers, statement repeated verbatim",
                         min(_time_ops(session, chain, same, canceller)
                             for _ in range(args.repeat))))
            print(f"\n{'front door work per operation (no I/O)':60} {'µs/op':>8}")
            for label, value in rows:
                print(f"{label:60} {value:8.2f}")

            print(f"\n{'layer phase alone':60} {'µs/op':>8}")
            for layer in chain.layers:
                for phase in ("on_operation", "on_complete"):
                    if phase not in layer.phases:
                        continue
                    fn = getattr(layer, phase)
                    best = float("inf")
                    for r in range(args.repeat):
                        ops = [Operation(session, "query", "SELECT",
                                         f"SELECT abalance FROM pgbench_accounts WHERE aid = "
                                         f"{i + r * n};", 60) for i in range(n)]
                        if phase == "on_complete":
                            for op in ops:
                                op.ended = op.started + 1e-4
                                op.rows = 1
                                op.cost = 4.3
                        best = min(best, _time_phase(fn, ops))
                        if phase == "on_operation" and "on_complete" in layer.phases:
                            for op in ops:  # leave no state behind (timeout's queue)
                                layer.on_complete(op)
                    print(f"{layer.name + '.' + phase:60} {best:8.2f}")
        finally:
            await conn.close()


class _NullTransport:
    """Stands in for both sockets while the relay is timed: no syscalls measured."""

    def write(self, data) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _backend_reply() -> bytes:
    """What PostgreSQL answers to pgbench -S: RowDescription, DataRow, CommandComplete,
    ReadyForQuery (one int4 column)."""
    from ogelkit_postgres import wire as pg
    field = b"abalance\0" + pg._i.pack(0) + pg._h.pack(0) + pg._i.pack(23) + pg._h.pack(4) \
        + pg._i.pack(-1) + pg._h.pack(0)
    return (pg.message(b"T", pg._h.pack(1) + field)
            + pg.message(b"D", pg._h.pack(1) + pg._i.pack(4) + b"-123")
            + pg.message(b"C", b"SELECT 1\0") + pg.ready_for_query(b"I"))


def _prepared_messages():
    """pgbench -M prepared: Parse once, then Bind + Execute + Sync per transaction; and
    PostgreSQL's replies to both."""
    from ogelkit_postgres import wire as pg
    i, h = pg._i.pack, pg._h.pack
    text = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    parse = pg.message(b"P", b"P0_1\0" + text + b"\0" + h(1) + i(23)) + pg.SYNC
    parse_reply = pg.message(b"1") + pg.ready_for_query(b"I")

    def tx(value: int) -> bytes:
        v = str(value).encode()
        return (pg.message(b"B", b"\0P0_1\0" + h(0) + h(1) + i(len(v)) + v + h(0))
                + pg.message(b"E", b"\0" + i(0)) + pg.SYNC)

    reply = (pg.message(b"2") + pg.message(b"D", h(1) + i(4) + b"-123")
             + pg.message(b"C", b"SELECT 1\0") + pg.ready_for_query(b"I"))
    return parse, parse_reply, tx, reply


def _time_relay(conn, requests: list[bytes], reply: bytes) -> float:
    """µs per transaction: the client's request in, the server's reply out, all in Python."""
    data_received, server_data = conn.data_received, conn.server_data
    t0 = time.perf_counter_ns()
    for q in requests:
        data_received(q)
        server_data(reply)
    return (time.perf_counter_ns() - t0) / len(requests) / 1000


async def relay_mode(args) -> None:
    """The relay's own Python work per pgbench -S transaction, sockets replaced by no-ops:
    with the layers (operations built and run through the chain) and without (the front
    door's no-observer path), on the same logged-in connection."""
    import gc

    import asyncpg
    from ogelkit_postgres import wire as pg

    from ogelkit.chain import Chain
    from ogelkit.model import Operation
    plugins = load_plugins()
    config = _config(plugins, True).replace('pool_mode = "session"',
                                            f'pool_mode = "{args.pool_mode}"')
    async with running_gateway(config, plugins=plugins) as gw:
        port = gw.port("postgres")
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=lb.TENANT,
                                     password=lb.PASSWORD, database="main", ssl=False,
                                     statement_cache_size=0)
        try:
            await conn.fetchval("SELECT 1")
            session = await _session_of(gw)
            fd = next(f for f in gw.gateway.frontdoors if f.protocol == "postgres")
            client = next(c for c in fd.clients if c.session is session)
            chain = gw.context.chain
            for text in ("SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
                         "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"):
                op = Operation(session, "query", "SELECT", text, 60)
                pending = chain.admit(op)  # fill the cost cache
                if pending is not None:
                    await pending
                op.ended = time.monotonic()
                chain.complete(op)
            # Session mode keeps the server attached; transaction mode gets the same one
            # back at every checkout (the client's last server, the pool's only one).
            srv = client.server or client.last_server
            assert srv is not None
            saved = client.transport, srv.transport
            n = args.ops
            observe = fd.observe
            rows = []
            try:
                client.transport = srv.transport = _NullTransport()
                if args.protocol == "prepared":
                    parse, parse_reply, tx, reply = _prepared_messages()
                    client.data_received(parse)
                    client.server_data(parse_reply)
                else:
                    reply = _backend_reply()

                    def tx(value: int) -> bytes:
                        return pg.query(f"SELECT abalance FROM pgbench_accounts "
                                        f"WHERE aid = {value};")
                for label, on, ch in (
                        (f"{len(chain)} layers (operations observed)", True, chain),
                        ("operations built, empty chain", True, Chain([])),
                        ("no layers (front door builds no operation)", False, chain)):
                    fd.observe = on
                    client.chain = ch
                    best = float("inf")
                    for r in range(args.repeat):
                        requests = [tx(i + r * n) for i in range(n)]
                        if args.no_gc:
                            gc.disable()
                        try:
                            best = min(best, _time_relay(client, requests, reply))
                        finally:
                            gc.enable()
                    rows.append((label, best))
            finally:
                fd.observe = observe
                client.chain = chain
                client.transport, srv.transport = saved
            print(f"# pool_mode {args.pool_mode}, pgbench -S -M {args.protocol}")
            print(f"{'relay Python work per transaction (sockets excluded)':60} {'µs/tx':>8}")
            for label, value in rows:
                print(f"{label:60} {value:8.2f}")
            print(f"{'difference: the layers':60} {rows[0][1] - rows[2][1]:8.2f}")
            await conn.fetchval("SELECT 1")  # the connection still works
        finally:
            await conn.close()


async def profile_mode(args) -> None:
    plugins = load_plugins()
    async with running_gateway(_config(plugins, not args.no_layers), plugins=plugins) as gw:
        port = gw.port("postgres")
        env = {**os.environ, "PGPASSWORD": lb.PASSWORD, "PGSSLMODE": "disable"}
        script = [] if args.writes else ["-S"]
        cmd = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", lb.TENANT, "-n", *script,
               "-M", args.mode, "-c", str(args.clients), "-j", str(min(2, args.clients)),
               "-T", str(args.seconds), "main"]
        # Warm-up: logins, pool, cost cache.
        warm = await asyncio.create_subprocess_exec(*cmd[:-3], "-T", "1", "main", env=env,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        await warm.wait()
        prof = cProfile.Profile()
        cpu0 = time.process_time()
        prof.enable()
        proc = await asyncio.create_subprocess_exec(*cmd, env=env,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        prof.disable()
        cpu = time.process_time() - cpu0
        text = out.decode()
        if proc.returncode != 0:
            raise SystemExit(f"pgbench failed:\n{err.decode()}\n{text}")
        tps = lb._tps(text)
        layers = "no layers" if args.no_layers else f"{len(gw.context.chain)} layers"
        script_name = "TPC-B" if args.writes else "-S"
        print(f"# {layers}: pgbench {script_name} -M {args.mode} -c {args.clients} "
              f"-T {args.seconds}: "
              f"{tps:,.0f} tps (under cProfile), process CPU {cpu / (tps * args.seconds) * 1e6:.1f}"
              f" µs/tx (profiler overhead included)")
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats(args.sort).print_stats(args.top)
        print(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ch = sub.add_parser("chain", help="µs per operation in the layer chain (no I/O)")
    ch.add_argument("--ops", type=int, default=20_000)
    ch.add_argument("--repeat", type=int, default=5)
    rl = sub.add_parser("relay", help="µs per transaction in the relay, sockets excluded")
    rl.add_argument("--ops", type=int, default=20_000)
    rl.add_argument("--repeat", type=int, default=5)
    rl.add_argument("--no-gc", action="store_true", help="disable the GC while timing")
    rl.add_argument("--pool-mode", default="session", choices=("session", "transaction"))
    rl.add_argument("--protocol", default="simple", choices=("simple", "prepared"))
    pr = sub.add_parser("profile", help="cProfile of the event loop under pgbench")
    pr.add_argument("--no-layers", action="store_true")
    pr.add_argument("--seconds", type=int, default=5)
    pr.add_argument("--clients", type=int, default=16)
    pr.add_argument("--writes", action="store_true", help="pgbench's TPC-B-like script")
    pr.add_argument("--mode", default="simple", choices=("simple", "extended", "prepared"))
    pr.add_argument("--sort", default="tottime")
    pr.add_argument("--top", type=int, default=35)
    args = parser.parse_args()
    lb.STATE_DIR.mkdir(parents=True, exist_ok=True)
    import uvloop
    modes = {"chain": chain_mode, "relay": relay_mode, "profile": profile_mode}
    uvloop.run(modes[args.what](args))


if __name__ == "__main__":
    main()
