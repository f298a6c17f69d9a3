"""A CI-sized run of the socket-level fuzzer (``bench/fuzz_mongodb.py`` runs it long): mutated
frames before and after authentication, a canary pymongo client of another tenant, and the
gateway watched for exceptions. 0 exceptions, 0 hangs, 0 canary failures."""

from __future__ import annotations

import logging
from typing import Any

from mongo_support import PASSWORD
from ogelkit_mongodb.testing import fuzz


def test_fuzzed_frames_leave_the_gateway_and_the_canary_unharmed(make_gateway):
    gw = make_gateway({"attacker": {"tier": "pro"}, "canary": {"tier": "pro"}})
    problems: list[Any] = []
    gw.running.loop.call_soon_threadsafe(
        gw.running.loop.set_exception_handler, lambda _loop, ctx: problems.append(ctx))

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info or record.levelno >= logging.ERROR:
                problems.append(record.getMessage())

    handler = Catch()
    logging.getLogger("ogelkit").addHandler(handler)
    coll = gw.client(gw.tenants["canary"]).main.canary
    written = [0]

    def canary() -> None:
        written[0] += 1
        coll.insert_one({"n": written[0]})
        assert coll.find_one({"n": written[0]})["n"] == written[0]
        assert coll.count_documents({}) == written[0]

    try:
        report = fuzz(gw.port, gw.tenants["attacker"], PASSWORD, frames=8000, seed=16,
                      canary=canary, canary_every=50)
    finally:
        logging.getLogger("ogelkit").removeHandler(handler)
    print(report.summary())
    assert report.frames == 8000 and report.logins > 0 and report.replies > 0
    assert not problems, problems[:5]
    assert not report.hangs, report.hangs[:5]
    assert not report.canary_failures, report.canary_failures[:5]
    assert report.canary_ops == 160
