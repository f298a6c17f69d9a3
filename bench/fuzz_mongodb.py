"""Socket-level fuzzer of the MongoDB front door, with a canary client of another tenant.

    python bench/fuzz_mongodb.py [--frames 100000] [--seed 1] [--canary-every 25]

Starts a gateway in this process (FerretDB from ``scripts/services.sh up`` behind it, two
tenants), then throws mutated frames at it (``ogelkit_mongodb.testing.mutate`` of a corpus
of valid frames: hello, speculative authentication, SASL, find/insert/update/delete,
getMore, killCursors, explain, aggregate, listDatabases, OP_QUERY), half of them on
connections authenticated as the attacking tenant. A pymongo client of the other tenant
writes and reads its own documents every ``--canary-every`` frames. Prints frames tried,
gateway exceptions (asyncio's exception handler and error log records with a traceback),
hangs (a complete message neither answered nor closed within 5 s) and canary failures;
exits 1 if any of the three is not zero. Bounded: it stops after ``--frames``. A CI-sized
run is a normal test (``tests/test_fuzz.py`` of the plugin).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
import uuid
from typing import Any

import pymongo
from ogelkit_mongodb.testing import fuzz

from ogelkit.testing import gateway_thread, minimal_config, services

PASSWORD = "fuzz-password-1"


def config(upstream: str, attacker: str, canary: str, marker: str) -> str:
    text = minimal_config().replace("http = 0\n", "http = 0\nmongodb = 0\n", 1)
    text += (f'[backends.mongo]\ntype = "mongodb"\nurl = "{upstream}"\n'
             f'database_format = "t_{marker}_{{tenant}}__{{db}}"\n\n'
             '[[layers]]\ntype = "session"\n\n')
    for slug in (attacker, canary):
        text += (f'[tenants.{slug}]\ntier = "pro"\npassword = "{PASSWORD}"\n'
                 f'[tenants.{slug}.databases.main]\nbackend = "mongo"\n')
    return text


class Watch(logging.Handler):
    """Counts what the gateway logs with a traceback or at ERROR, and asyncio's handler."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.seen.append(f"{record.name}: {record.getMessage()}"[:300])

    def loop_handler(self, _loop: Any, context: dict[str, Any]) -> None:
        self.seen.append(f"asyncio: {context.get('message')} {context.get('exception')!r}"[:300])


def make_canary(client: pymongo.MongoClient, counter: list[int],
                latencies_ms: list[float] | None = None) -> Any:
    coll = client.main.canary

    def canary() -> None:
        t0 = time.monotonic()
        check()
        if latencies_ms is not None:
            latencies_ms.append((time.monotonic() - t0) * 1000)

    def check() -> None:
        counter[0] += 1
        value = counter[0]
        coll.insert_one({"n": value, "canary": True})
        doc = coll.find_one({"n": value})
        if doc is None or doc.get("canary") is not True:
            raise AssertionError(f"canary read back {doc!r}")
        if coll.count_documents({"canary": {"$ne": True}}):
            raise AssertionError("a document the canary never wrote is in its collection")
        # Deleted once checked: FerretDB filters $ne by scanning, so a collection growing by
        # one document per check made a long run quadratic (a 1M-frame run stalled at its
        # canary's count). A foreign document would stay, and be counted.
        coll.delete_one({"n": value})

    return canary


def run(frames: int, seed: int = 1, canary_every: int = 25,
        upstream: str | None = None) -> tuple[Any, list[Any]]:
    """One fuzz run against a fresh gateway; returns (report, problems)."""
    upstream = upstream or services.ferretdb_url()
    marker = f"fz{uuid.uuid4().hex[:6]}"
    attacker, canary_slug = f"{marker}-a", f"{marker}-canary"
    watch = Watch()
    root = logging.getLogger("ogelkit")
    root.addHandler(watch)
    try:
        with gateway_thread(config(upstream, attacker, canary_slug, marker)) as gw:
            gw.loop.call_soon_threadsafe(gw.loop.set_exception_handler, watch.loop_handler)
            port = gw.port("mongodb")
            client = pymongo.MongoClient(host="127.0.0.1", port=port, username=canary_slug,
                                         password=PASSWORD, authSource="main",
                                         serverSelectionTimeoutMS=5000)
            try:
                latencies: list[float] = []
                report = fuzz(port, attacker, PASSWORD, frames=frames, seed=seed,
                              canary=make_canary(client, [0], latencies),
                              canary_every=canary_every)
                report.canary_latencies_ms = latencies
            finally:
                client.close()
    finally:
        root.removeHandler(watch)
        with pymongo.MongoClient(upstream, serverSelectionTimeoutMS=5000) as direct:
            for name in direct.list_database_names():
                if marker in name:
                    direct.drop_database(name)
    report.exceptions = watch.seen
    return report, watch.seen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--canary-every", type=int, default=25)
    args = parser.parse_args(argv)
    report, problems = run(args.frames, args.seed, args.canary_every)
    print(report.summary())
    latencies = sorted(getattr(report, "canary_latencies_ms", []) or [0.0])
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  canary p99 {p99:.1f} ms (insert + find + count), worst {latencies[-1]:.0f} ms; "
          f"peak RSS of the process (gateway and fuzzer) {peak:.0f} MB")
    for item in problems[:20]:
        print("  exception:", item)
    for item in report.hangs[:20]:
        print("  hang on frame:", item)
    for item in report.canary_failures[:20]:
        print("  canary:", item)
    return 1 if problems or report.hangs or report.canary_failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
