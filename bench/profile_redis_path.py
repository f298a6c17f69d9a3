#!/usr/bin/env python
"""Where the Redis gateway spends its time per command, with and without the O7s layers.

    python bench/profile_redis_path.py micro [--layers]     # µs per command, no socket I/O
    python bench/profile_redis_path.py load  [--layers] [-c 50] [-P 1] [--profile]
    python bench/profile_redis_path.py chain                # µs per layer phase, Redis ops

All modes run the gateway in this process (uvloop) with the configuration of
``bench/redis_bench.py`` (a fresh bench tenant, namespacing on; ``--layers``: every O7s
layer with its defaults on the enterprise tier):

* ``micro``: real clients log in over the wire; then their transports and their shared
  upstream connection are swapped for in-memory fakes, and the front door's whole per-command
  path (``data_received`` -> parse -> key rewrite -> [layers] -> upstream queue; upstream
  ``data_received`` -> reply routing -> client write) is timed in a loop: ``-c`` clients
  each send one command per read (like redis-benchmark unpipelined) or ``-P`` commands per
  read, and the upstream answers a batch of replies per read. No syscalls are timed: this is
  the Python share of the gateway's CPU per command.
* ``load``: ``redis-benchmark`` against the in-process gateway; prints requests/s and the
  process CPU per request (``--profile``: under cProfile, with its top functions; cProfile
  inflates small functions, so read it for *where*, and the plain run for *how much*).
* ``chain``: one Operation per command through ``chain.admit``/``chain.complete`` and each
  layer phase alone, with a Redis session logged in through the gateway.

Not a timed test; numbers from a shared machine are noisy (min of several repeats shown).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis_bench as rb
from benchkit import FakeTransport, print_profile

from ogelkit.testing import running_gateway

COMMANDS = {
    "get": (b"*2\r\n$3\r\nGET\r\n$16\r\nkey:__rand_int__\r\n", b"$3\r\nxxx\r\n"),
    "set": (b"*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n$3\r\nxxx\r\n", b"+OK\r\n"),
    "lpush": (b"*3\r\n$5\r\nLPUSH\r\n$6\r\nmylist\r\n$3\r\nxxx\r\n", b":1\r\n"),
    "lpop": (b"*2\r\n$4\r\nLPOP\r\n$6\r\nmylist\r\n", b"$3\r\nxxx\r\n"),
}


def _start(layers: bool) -> tuple[rb.Gateway, str]:
    names = rb.installed_layers() if layers else []
    if layers and len(names) != len(rb.LAYERS):
        raise SystemExit(f"layer plugins missing: {sorted(set(rb.LAYERS) - set(names))}")
    gw = rb.Gateway(names)
    return gw, gw.config


def _door(running):
    for fd in running.gateway.frontdoors:
        if fd.protocol == "redis":
            return fd
    raise RuntimeError("no redis front door")


async def _login(port: int, gw: rb.Gateway, n: int) -> list[tuple]:
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"AUTH %s %s\r\n" % (gw.tenant.encode(), gw.password.encode()))
        await w.drain()
        line = await r.readline()
        if line != b"+OK\r\n":
            raise RuntimeError(f"AUTH failed: {line!r}")
        conns.append((r, w))
    return conns


def _time_micro(clients, up, request: bytes, reply: bytes, pipeline: int, rounds: int) -> float:
    """µs per command: every client sends ``pipeline`` commands in one read, then the upstream
    answers all of them in one read."""
    chunk = request * pipeline
    replies = reply * (pipeline * len(clients))
    total = rounds * pipeline * len(clients)
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        for c in clients:
            c.data_received(chunk)
        up._flush()
        up.data_received(replies)
    return (time.perf_counter_ns() - t0) / total / 1000


async def micro_mode(args) -> None:
    from ogelkit_redis.upstream import Upstream
    gw, config = _start(args.layers)
    try:
        async with running_gateway(config) as running:
            door = _door(running)
            conns = await _login(running.port("redis"), gw, args.clients)
            clients = sorted(door.clients, key=lambda c: c.session.id)
            tdb = clients[0].tdb
            up = Upstream(tdb.pools, 2)
            up.connection_made(FakeTransport())
            up.index = 0
            up.attached = [len(clients)]  # batch like a shared connection with many clients
            saved = []
            for c in clients:
                saved.append((c.transport, c._shared))
                c.transport = FakeTransport()
                c._shared = up
                c.upstream = up
            layers = f"{len(running.context.chain)} layers" if args.layers else "no layers"
            print(f"# {layers}, observe={door.observe}; {len(clients)} clients, "
                  f"{args.pipeline} command(s) per client read, one upstream read per round")
            print(f"{'command':10} {'µs/command':>11}")
            for name in args.tests.split(","):
                request, reply = COMMANDS[name]
                _time_micro(clients, up, request, reply, args.pipeline, 50)  # warm-up
                best = min(_time_micro(clients, up, request, reply, args.pipeline, args.rounds)
                           for _ in range(args.repeat))
                print(f"{name:10} {best:11.2f}")
                await asyncio.sleep(0)  # let the scheduled (empty) flushes run
            if args.profile:
                request, reply = COMMANDS[args.tests.split(",")[0]]
                prof = cProfile.Profile()
                prof.enable()
                _time_micro(clients, up, request, reply, args.pipeline, args.rounds)
                prof.disable()
                print_profile(prof, args.sort, args.top)
            for c, (transport, shared) in zip(clients, saved, strict=True):
                c.transport, c._shared, c.upstream = transport, shared, None
                c.sent = c.recv = 0
            for _, w in conns:
                w.close()
            await asyncio.sleep(0.1)
    finally:
        gw.stop()


async def load_mode(args) -> None:
    gw, config = _start(args.layers)
    try:
        async with running_gateway(config) as running:
            port = running.port("redis")
            cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "--user", gw.tenant,
                   "-a", gw.password, "-t", args.tests, "-c", str(args.clients),
                   "-P", str(args.pipeline), "-q"]
            warm = await asyncio.create_subprocess_exec(
                *cmd, "-n", "2000", stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            await warm.wait()
            prof = cProfile.Profile() if args.profile else None
            t0 = os.times()
            if prof is not None:
                prof.enable()
            proc = await asyncio.create_subprocess_exec(
                *cmd, "-n", str(args.n), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            if prof is not None:
                prof.disable()
            t1 = os.times()
            user, system = t1.user - t0.user, t1.system - t0.system
            requests = args.n * len(args.tests.split(","))
            layers = f"{len(running.context.chain)} layers" if args.layers else "no layers"
            print(f"# {layers}: redis-benchmark -c {args.clients} -P {args.pipeline} "
                  f"-n {args.n} -t {args.tests}" + (" (under cProfile)" if prof else ""))
            for line in out.decode().replace("\r", "\n").splitlines():
                if "requests per second" in line:
                    print(line.strip())
            print(f"gateway process CPU: {(user + system) / requests * 1e6:.2f} µs/request "
                  f"(user {user / requests * 1e6:.2f}, system {system / requests * 1e6:.2f})")
            if prof is not None:
                print_profile(prof, args.sort, args.top)
    finally:
        gw.stop()


def _time_ops(session, chain, cmd, n: int, canceller) -> float:
    from ogelkit_redis.connection import RedisOperation
    monotonic = time.monotonic
    admit, complete = chain.admit, chain.complete
    argv = [b"GET", b"t:x:main:key:000000001"]
    t0 = time.perf_counter_ns()
    for _ in range(n):
        op = RedisOperation(session, "command", cmd.op_name, None, 40)
        op.argv = argv
        op.command = cmd
        op.canceller = canceller
        admit(op)
        op.ended = monotonic()
        op.bytes_out = 9
        complete(op)
    return (time.perf_counter_ns() - t0) / n / 1000


async def chain_mode(args) -> None:
    from ogelkit_redis.connection import RedisOperation

    from ogelkit.chain import Chain
    gw, config = _start(True)
    try:
        async with running_gateway(config) as running:
            door = _door(running)
            conns = await _login(running.port("redis"), gw, 1)
            r, w = conns[0]
            w.write(b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n")  # fills the cost cache for GET
            await w.drain()
            await r.readline()
            client = next(iter(door.clients))
            session = client.session
            chain = running.context.chain
            cmd = client.table.lookup(b"get")
            n = args.ops
            canceller = lambda reject: None  # noqa: E731
            print(f"# layers: {', '.join(layer.name for layer in chain.layers)}")
            print(f"\n{'per-command work in the chain (no I/O)':50} {'µs/op':>8}")
            for label, ch in (("RedisOperation only (empty chain)", Chain([])),
                              (f"{len(chain)} layers", chain)):
                best = min(_time_ops(session, ch, cmd, n, canceller) for _ in range(args.repeat))
                print(f"{label:50} {best:8.2f}")
            print(f"\n{'layer phase alone':50} {'µs/op':>8}")
            for layer in chain.layers:
                for phase in ("on_operation", "on_complete"):
                    if phase not in layer.phases:
                        continue
                    fn = getattr(layer, phase)
                    best = float("inf")
                    for _ in range(args.repeat):
                        ops = []
                        for _ in range(n):
                            op = RedisOperation(session, "command", "GET", None, 40)
                            op.argv = [b"GET", b"t:x:main:key"]
                            op.command = cmd
                            op.canceller = canceller
                            if phase == "on_complete":
                                op.ended = op.started + 1e-4
                                op.bytes_out = 9
                                op.cost = 1.0
                            ops.append(op)
                        t0 = time.perf_counter_ns()
                        for op in ops:
                            fn(op)
                        best = min(best, (time.perf_counter_ns() - t0) / n / 1000)
                        if phase == "on_operation" and "on_complete" in layer.phases:
                            for op in ops:  # leave no state behind (timeout's queue)
                                layer.on_complete(op)
                    print(f"{layer.name + '.' + phase:50} {best:8.2f}")
            w.close()
            await asyncio.sleep(0.1)
    finally:
        gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("micro", "load"):
        p = sub.add_parser(name)
        p.add_argument("--layers", action="store_true", help="every O7s layer installed")
        p.add_argument("-c", "--clients", type=int, default=50)
        p.add_argument("-P", "--pipeline", type=int, default=1)
        p.add_argument("-t", "--tests", default="get,set,lpush,lpop")
        p.add_argument("--profile", action="store_true", help="cProfile and print top functions")
        p.add_argument("--sort", default="tottime")
        p.add_argument("--top", type=int, default=30)
    sub.choices["micro"].add_argument("--rounds", type=int, default=400)
    sub.choices["micro"].add_argument("--repeat", type=int, default=5)
    sub.choices["load"].add_argument("-n", type=int, default=100_000)
    ch = sub.add_parser("chain")
    ch.add_argument("--ops", type=int, default=20_000)
    ch.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import uvloop
    uvloop.run({"micro": micro_mode, "load": load_mode, "chain": chain_mode}[args.what](args))


if __name__ == "__main__":
    main()
