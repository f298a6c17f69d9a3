#!/usr/bin/env python
"""Where the MongoDB gateway spends its time per command, with and without the O7s layers.

    python bench/profile_mongo_path.py micro [--layers] [--profile]   # µs per op, no socket I/O
    python bench/profile_mongo_path.py load  [--layers] [-c 8] [--seconds 5] [--profile]

Both modes run the gateway in this process (uvloop) in front of the test FerretDB
(``scripts/services.sh``; ``OGELKIT_TEST_FERRETDB_URL`` overrides it), with a fresh
enterprise tenant (SQLite control plane in a temp dir) whose database ``main`` is on it, and
the session layer always on (as in ``bench/mongo_bench.py``: every find carries the tier's
maxTimeMS, one more spliced field); ``--layers``: every installed canonical O7s layer with its
defaults (``bench/layers_bench.py``'s tables), the tenant on that script's ``bench`` tier (a
cost ceiling, so the cost layer looks up every find's estimate; rate limits far above the
loop's rate).

* ``micro``: a real pymongo client logs in over the wire and runs each command once for real
  (which fills the cost layer's cache and records the exact bytes pymongo sends and FerretDB
  answers). Then the client's transport and the upstream pool's connection are swapped for
  in-memory fakes, and the front door's whole per-command path (``data_received`` -> OP_MSG
  parse -> index -> plan (``$db`` and maxTimeMS spliced) -> [layers admit] -> upstream send;
  upstream ``data_received`` -> reply mapping -> client write -> [layers complete]) is timed
  in a loop for ``find_one`` (by ``_id``), ``insert_one`` and ``update_one``. No syscalls are
  timed, and the clock is this thread's CPU time (preemption by other processes is not
counted): this is the Python share of the gateway's CPU per operation.
* ``load``: ``-c`` pymongo threads in a child process (so their CPU and GIL are not the
  gateway's) run ``find_one`` by ``_id`` against the in-process gateway for ``--seconds``;
  prints ops/s and this process's CPU per op (``--profile``: under cProfile, with its top
  functions; cProfile inflates small functions, so read it for *where*, and the plain run
  for *how much*). FerretDB shares the machine: its CPU is not in the figure.

Not a timed test; numbers from a shared machine are noisy (min of several repeats shown).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import layers_bench as lb
from benchkit import FakeTransport, print_profile

from ogelkit.plugins import load_plugins
from ogelkit.testing import running_gateway, services, test_secret_key

OPS = ("find_one", "insert_one", "update_one")
DOCS = 100


class Bench:
    """A fresh tenant, its config and the upstream database it maps to."""

    def __init__(self, layers: bool, upstream: str):
        self.dir = Path(tempfile.mkdtemp(prefix="ogelkit-mongo-profile-"))
        self.tenant = f"bench-{secrets.token_hex(3)}"
        self.password = secrets.token_urlsafe(12)
        self.upstream = upstream
        self.upstream_db = f"t_{self.tenant}__main"
        tables = ""
        if layers:
            plugins = load_plugins()
            tables, missing = lb.layer_tables(plugins, False, "unused:")
            if missing:
                raise SystemExit(f"layer plugins missing: {', '.join(missing)}")
            if 'type = "session"' not in tables:
                tables += '\n[[layers]]\ntype = "session"\n'
        else:
            tables = '[[layers]]\ntype = "session"\n'
        self.config = f"""
[listen]
host = "127.0.0.1"
http = 0
mongodb = 0

[gateway]
drain_timeout = "2s"
log_level = "warning"

[control]
url = "sqlite:///{self.dir}/control.db"
secret_key = "{test_secret_key()}"

[backends.mongo]
type = "mongodb"
url = "{upstream}"
pool_size = 32

[tenants.{self.tenant}]
tier = "{"bench" if layers else "enterprise"}"
password = "{self.password}"

[tenants.{self.tenant}.databases.main]
backend = "mongo"

{lb.BENCH_TIER if layers else ""}
{tables}"""

    def url(self, port: int) -> str:
        return f"mongodb://{self.tenant}:{self.password}@127.0.0.1:{port}/?authSource=main"

    def drop(self) -> None:
        import pymongo

        with pymongo.MongoClient(self.upstream, serverSelectionTimeoutMS=5000) as c:
            c.drop_database(self.upstream_db)


def _door(running: Any) -> Any:
    for fd in running.gateway.frontdoors:
        if fd.protocol == "mongodb":
            return fd
    raise RuntimeError("no mongodb front door")


def _pool(running: Any) -> Any:
    return running.context.backends["mongo"].pool


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process (Linux /proc; empty elsewhere)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
        except (OSError, ValueError):
            continue
        out[f"{name}[{tid}]"] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _run(client: Any, name: str) -> None:
    coll = client.main.bench
    if name == "find_one":
        coll.find_one({"_id": 7})
    elif name == "insert_one":
        client.main.bench_ins.insert_one({"v": 1, "s": "payload-" * 4})
    elif name == "update_one":
        coll.update_one({"_id": 7}, {"$inc": {"v": 1}})
    else:
        raise ValueError(name)


def _record(conn: Any) -> tuple[list[bytes], list[bytes], Any]:
    """Record what the client connection receives and what the upstream answers it."""
    requests: list[bytes] = []
    replies: list[bytes] = []
    client_in, on_reply = conn._message, conn._on_reply

    def recv(data: bytes) -> None:
        requests.append(bytes(data))
        client_in(data)

    def reply_in(reply: bytes | None, err: str | None) -> None:
        if reply is not None:
            replies.append(bytes(reply))
        on_reply(reply, err)

    conn._message, conn._on_reply = recv, reply_in  # uvloop holds data_received

    def undo() -> None:
        del conn._message, conn._on_reply

    return requests, replies, undo


def _time_micro(conn: Any, up: Any, request: bytes, reply: bytes, rounds: int) -> float:
    """CPU µs per op: the client sends one command, the upstream answers it. Thread CPU time,
    not wall time: on a shared machine, time this thread spent preempted is not counted."""
    clock = time.thread_time_ns
    t0 = clock()
    for _ in range(rounds):
        conn.data_received(request)
        up.data_received(reply)
    return (clock() - t0) / rounds / 1000


async def micro_mode(args: argparse.Namespace) -> None:
    import pymongo
    from ogelkit_mongodb.upstream import UpstreamConnection

    bench = Bench(args.layers, args.upstream)
    try:
        async with running_gateway(bench.config) as running:
            door = _door(running)
            pool = _pool(running)
            client = pymongo.MongoClient(
                bench.url(running.port("mongodb")), maxPoolSize=1, serverSelectionTimeoutMS=5000
            )

            def setup() -> None:
                client.main.bench.insert_many([{"_id": i, "v": i, "s": "x" * 64} for i in range(DOCS)])
                for name in OPS:  # fills the cost cache, opens the upstream connection
                    _run(client, name)

            await asyncio.to_thread(setup)
            mine = [c for c in door.clients if c.authenticated]
            if len(mine) != 1:  # pymongo's monitor connections never authenticate
                raise RuntimeError(f"expected one authenticated connection, got {len(mine)}")
            conn = mine[0]
            samples: dict[str, tuple[bytes, bytes]] = {}
            for name in OPS:
                requests, replies, undo = _record(conn)
                await asyncio.to_thread(_run, client, name)
                undo()
                if len(requests) != 1 or len(replies) != 1:
                    raise RuntimeError(
                        f"{name}: expected one message each way, got {len(requests)} and {len(replies)}"
                    )
                samples[name] = (requests[0], replies[0])
            up = UpstreamConnection(pool)
            up.connection_made(FakeTransport())
            up.ready = True
            saved_idle, pool.idle = pool.idle, [up]
            saved_transport, conn.transport = conn.transport, FakeTransport()
            chain = running.context.chain
            layers = ", ".join(layer.name for layer in chain.layers) or "none"
            print(f"# layers: {layers}; pymongo {pymongo.version}, upstream {args.upstream}")
            print(f"{'command':12} {'µs/op':>8}")
            try:
                for name in OPS:
                    request, reply = samples[name]
                    before = conn.transport.writes
                    _time_micro(conn, up, request, reply, 100)  # warm-up
                    if conn.transport.writes != before + 100 or conn.busy:
                        raise RuntimeError(f"{name}: not every command was answered")
                    best = min(_time_micro(conn, up, request, reply, args.rounds) for _ in range(args.repeat))
                    print(f"{name:12} {best:8.2f}")
                    await asyncio.sleep(0)
                if args.profile:
                    request, reply = samples[args.profile_op]
                    prof = cProfile.Profile()
                    prof.enable()
                    _time_micro(conn, up, request, reply, args.rounds)
                    prof.disable()
                    print_profile(prof, args.sort, args.top)
            finally:
                conn.transport = saved_transport
                pool.idle = saved_idle
            await asyncio.to_thread(client.close)
            await asyncio.sleep(0.1)
    finally:
        bench.drop()


def clients_mode(args: argparse.Namespace) -> None:
    """The child process of ``load``: ``-c`` threads of find_one; prints the op count."""
    import random
    import threading

    import pymongo

    conns = [
        pymongo.MongoClient(args.url, maxPoolSize=1, serverSelectionTimeoutMS=5000)
        for _ in range(args.clients)
    ]
    for c in conns:
        c.main.bench.find_one({"_id": 0})
    counts = [0] * args.clients
    stop = threading.Event()

    def work(i: int) -> None:
        coll = conns[i].main.bench
        rnd = random.Random(i)
        while not stop.is_set():
            coll.find_one({"_id": rnd.randrange(DOCS)})
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(args.clients)]
    print("ready", flush=True)
    sys.stdin.readline()  # the parent starts its clock, then says go
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps({"ops": sum(counts), "seconds": time.perf_counter() - t0}), flush=True)
    for c in conns:
        c.close()


async def load_mode(args: argparse.Namespace) -> None:
    import pymongo

    bench = Bench(args.layers, args.upstream)
    try:
        async with running_gateway(bench.config) as running:
            url = bench.url(running.port("mongodb"))

            def setup() -> None:
                with pymongo.MongoClient(url, serverSelectionTimeoutMS=5000) as c:
                    c.main.bench.insert_many([{"_id": i, "v": i, "s": "x" * 64} for i in range(DOCS)])
                    for i in range(200):
                        c.main.bench.find_one({"_id": i % DOCS})

            await asyncio.to_thread(setup)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "_clients",
                "--url",
                url,
                "-c",
                str(args.clients),
                "--seconds",
                str(args.seconds),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert proc.stdin is not None and proc.stdout is not None
            line = await proc.stdout.readline()
            if line.strip() != b"ready":
                raise RuntimeError(f"client process: {line!r}")
            # What the gateway burns with its clients connected but idle (timers, pymongo's
            # monitor heartbeats): spread over few ops at a slow upstream, it is part of the
            # per-op figure.
            i0 = os.times()
            await asyncio.sleep(args.idle)
            i1 = os.times()
            idle_cpu = (i1.user + i1.system - i0.user - i0.system) / args.idle
            prof = cProfile.Profile() if args.profile else None
            threads0 = _thread_cpu()
            t0 = os.times()
            if prof is not None:
                prof.enable()
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            out = await proc.stdout.readline()
            if prof is not None:
                prof.disable()
            t1 = os.times()
            threads1 = _thread_cpu()
            await proc.wait()
            result = json.loads(out)
            ops = result["ops"]
            user, system = t1.user - t0.user, t1.system - t0.system
            layers = ", ".join(layer.name for layer in running.context.chain.layers)
            print(
                f"# layers: {layers}; find_one by _id, {args.clients} pymongo threads in a "
                f"child process, {args.seconds:g} s" + (" (under cProfile)" if prof else "")
            )
            print(f"{ops / result['seconds']:.0f} ops/s")
            print(
                f"gateway process CPU: {(user + system) / ops * 1e6:.1f} µs/op "
                f"(user {user / ops * 1e6:.1f}, system {system / ops * 1e6:.1f})"
            )
            busy = sorted(((threads1[k] - threads0.get(k, 0.0), k) for k in threads1), reverse=True)
            print(
                "per thread: " + ", ".join(f"{k} {cpu / ops * 1e6:.1f} µs/op" for cpu, k in busy[:4] if cpu)
            )
            per_op = idle_cpu * result["seconds"] / ops * 1e6
            print(f"idle gateway CPU: {idle_cpu * 1000:.1f} ms/s ({per_op:.1f} µs/op of the above)")
            if prof is not None:
                print_profile(prof, args.sort, args.top)
    finally:
        bench.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("micro", "load"):
        p = sub.add_parser(name)
        p.add_argument("--layers", action="store_true", help="every O7s layer installed")
        p.add_argument("--upstream", default=services.ferretdb_url())
        p.add_argument("--profile", action="store_true", help="cProfile and print top functions")
        p.add_argument("--sort", default="tottime")
        p.add_argument("--top", type=int, default=30)
    micro = sub.choices["micro"]
    micro.add_argument("--rounds", type=int, default=2000)
    micro.add_argument("--repeat", type=int, default=5)
    micro.add_argument("--profile-op", default="find_one", choices=OPS)
    load = sub.choices["load"]
    load.add_argument("-c", "--clients", type=int, default=8)
    load.add_argument("--seconds", type=float, default=5.0)
    load.add_argument("--idle", type=float, default=2.0, help="seconds of idle CPU measured first")
    child = sub.add_parser("_clients")  # the load mode's client process
    child.add_argument("--url", required=True)
    child.add_argument("-c", "--clients", type=int, default=8)
    child.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.what == "_clients":
        clients_mode(args)
        return
    import uvloop

    uvloop.run({"micro": micro_mode, "load": load_mode}[args.what](args))


if __name__ == "__main__":
    main()
