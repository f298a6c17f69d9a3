"""Per-operation cost of the compiled layer chain (no I/O): how much the O7s pipeline itself
adds to every request, before any layer does real work.

    python bench/layer_chain.py [--layers 7] [--ops 500000]

Prints ns per operation for: an empty chain, N no-op layers that implement every
operation phase (admit + complete), and the same plus building the Operation object, which
every front door does per request. Not a timed test: numbers for closing notes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ogelkit
from ogelkit.chain import Chain
from ogelkit.model import Operation
from ogelkit.testing import make_session


class NoOp(ogelkit.Layer):
    type_name = "noop"

    def on_operation(self, op):
        return None

    def on_complete(self, op):
        pass


def _run(chain: Chain, ops: int, build: bool) -> float:
    session = make_session()
    op = Operation(session, "query", "SELECT", "SELECT 1", 16)
    admit, complete = chain.admit, chain.complete
    t0 = time.perf_counter_ns()
    if build:
        for _ in range(ops):
            o = Operation(session, "query", "SELECT", "SELECT 1", 16)
            admit(o)
            complete(o)
    else:
        for _ in range(ops):
            admit(op)
            complete(op)
    return (time.perf_counter_ns() - t0) / ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--ops", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    chains = {
        "empty chain": (Chain([]), False),
        f"{args.layers} no-op layers": (
            Chain([NoOp(None, name=f"noop{i}", context=None) for i in range(args.layers)]), False),
        f"{args.layers} no-op layers + new Operation": (
            Chain([NoOp(None, name=f"noop{i}", context=None) for i in range(args.layers)]), True),
    }
    print(f"{'case':40} {'ns/op (median of ' + str(args.repeat) + ')':>24}")
    for name, (chain, build) in chains.items():
        samples = [_run(chain, args.ops, build) for _ in range(args.repeat)]
        print(f"{name:40} {statistics.median(samples):24.0f}")


if __name__ == "__main__":
    main()
