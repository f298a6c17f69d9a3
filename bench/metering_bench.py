"""Per-operation cost of the session, usage and intelligence layers (no I/O): what metering
and watching every request adds on top of the chain itself.

    python bench/metering_bench.py [--ops 300000] [--repeat 5]

Prints ns per operation (admit + complete through a compiled Chain, a new Operation each
time, as a front door does) for: no layer; the usage layer; the intelligence layer (no
blocks, costed operations feeding calibration); both; and the same with 1,000 tenants'
sessions round-robin (dictionary sizes as in production). Also the per-connection cost of
the session layer's on_connect. Not a timed test; on a shared machine numbers are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
from ogelkit_layer_intelligence import plugin as intelligence_plugin
from ogelkit_layer_session import plugin as session_plugin
from ogelkit_layer_usage import plugin as usage_plugin

import ogelkit
from ogelkit.chain import Chain
from ogelkit.model import Operation
from ogelkit.testing import isolated_plugins, make_session, minimal_config, test_context

CONFIG = minimal_config('[[layers]]\ntype = "session"\n\n[[layers]]\ntype = "usage"\n\n'
                        '[[layers]]\ntype = "intelligence"\n')


class PgLike(ogelkit.Backend):
    type_name = "pglike"
    protocol = "pglike"

    def session_settings(self, session):
        tier = session.tier
        return {"work_mem": f"{tier.work_mem // 1024}kB",
                "application_name": f"o7s:{tier.name}:{session.tenant_slug}"}


def run(chain: Chain, sessions: list, ops: int) -> float:
    admit, complete = chain.admit, chain.complete
    n = len(sessions)
    t0 = time.perf_counter_ns()
    for i in range(ops):
        op = Operation(sessions[i % n], "query", "SELECT", "SELECT 1", 16)
        op.cost = 8.27 + (i & 1023)
        admit(op)
        op.ended = op.started + 0.0002
        op.rows = 1
        complete(op)
    return (time.perf_counter_ns() - t0) / ops


async def main(ops: int, repeat: int) -> None:
    plugins = isolated_plugins(("session", session_plugin), ("usage", usage_plugin),
                               ("intelligence", intelligence_plugin))
    async with test_context(CONFIG, plugins=plugins) as ctx:
        layers = {spec.name: spec.cls(spec.options, name=spec.name, context=ctx)
                  for spec in ctx.config.layers}
        for layer in layers.values():
            await layer.open()
        backend = PgLike(None, name="pg", context=ctx)
        cases = {
            "no layer": [],
            "usage": [layers["usage"]],
            "intelligence": [layers["intelligence"]],
            "usage + intelligence": [layers["usage"], layers["intelligence"]],
        }
        print(f"{'case':44} {'ns/op (median of ' + str(repeat) + ')':>24}")
        for tenants in (1, 1000):
            sessions = []
            for i in range(tenants):
                s = make_session(ctx, tenant=f"t{i}", tier="free")
                s.backend = backend
                sessions.append(s)
            for name, chosen in cases.items():
                chain = Chain(chosen)
                for s in sessions:
                    await chain.connect(s)
                samples = [run(chain, sessions, ops) for _ in range(repeat)]
                print(f"{name + f' ({tenants} tenants)':44} {statistics.median(samples):24.0f}")
                await layers["usage"].flush()
        session_layer = layers["session"]
        s = make_session(ctx, tier="pro")
        s.backend = backend
        t0 = time.perf_counter_ns()
        for _ in range(ops // 10):
            await session_layer.on_connect(s)
        print(f"{'session on_connect (per connection)':44} "
              f"{(time.perf_counter_ns() - t0) / (ops // 10):24.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    anyio.run(main, args.ops, args.repeat)
