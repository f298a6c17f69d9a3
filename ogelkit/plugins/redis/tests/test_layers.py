"""The layer chain as the Redis front door drives it: one Operation per command (name =
command name), synchronous and asynchronous admission, refusals in RESP, cancellation, and
the log phases for every outcome."""

from __future__ import annotations

import asyncio
import time
import types

import ogelkit_redis.plugin
import pytest
import redis
from redis_support import cleanup, config_text, new_tenants

import ogelkit
from ogelkit.model import Reason, Reject
from ogelkit.testing import gateway_thread, isolated_plugins

SEEN: list[tuple[str, str, str | None]] = []
SESSIONS: list[tuple[str | None, bool]] = []


class Probe(ogelkit.Layer):
    type_name = "probe"

    def on_operation(self, op):
        argv = getattr(op, "argv", [])
        key = argv[1] if len(argv) > 1 else b""
        if key.endswith(b"deny"):
            raise Reject(Reason.RATE, "rate limit exceeded", detail="11 ops/s of 10 on tier pro",
                         retry_after=0.25, layer="probe")
        if key.endswith(b"full"):
            raise Reject(Reason.QUOTA, "storage quota exceeded", detail="2GB of 1GB",
                         hint="Upgrade to enterprise for 1TB.")
        if key.endswith(b"slow"):
            return asyncio.sleep(0.05)  # admitted later: input waits, order is kept
        if op.name == "BLPOP":
            asyncio.get_running_loop().call_later(
                0.2, op.cancel, Reject(Reason.TIMEOUT, "statement timeout after 200ms"))
        return None

    def on_complete(self, op):
        SEEN.append((op.name, op.outcome, op.error))

    def on_disconnect(self, session):
        SESSIONS.append((session.tenant_slug, session.authenticated))


def test_operations_reach_the_layers():
    plugins = isolated_plugins(("redis", ogelkit_redis.plugin),
                               ("probe", types.SimpleNamespace(
                                   ogelkit_register_layers=ogelkit.hookimpl(
                                       lambda register: register.layer(Probe)))))
    tenants = new_tenants(1)
    SEEN.clear()
    SESSIONS.clear()
    try:
        with gateway_thread(config_text(tenants, layers='[[layers]]\ntype = "probe"\n'),
                            plugins=plugins) as running:
            port = running.port("redis")
            c = redis.Redis(port=port, username=tenants[0].slug, password=tenants[0].password)
            assert c.set("a", 1)
            with pytest.raises(redis.ResponseError) as info:
                c.get("deny")
            assert str(info.value) == ("rate limit exceeded (11 ops/s of 10 on tier pro). Retry "
                                       "after 250 ms.")
            with pytest.raises(redis.exceptions.OutOfMemoryError, match="Upgrade to enterprise"):
                c.set("full", 1)
            p = c.pipeline(transaction=False)
            p.set("x-slow", 1).get("x-slow").incr("n").get("deny").get("x-slow")
            out = p.execute(raise_on_error=False)
            assert out[:3] == [True, b"1", 1] and isinstance(out[3], redis.ResponseError)
            assert out[4] == b"1"
            p = c.pipeline(transaction=False)  # one Operation per command, no more, no less
            for _ in range(50):
                p.incr("many")  # INCRBY
            assert p.execute() == list(range(1, 51))
            with pytest.raises(redis.ResponseError) as info:
                c.execute_command("FLUSHALL")
            t0 = time.monotonic()
            with pytest.raises(redis.exceptions.ResponseError, match="statement timeout"):
                c.blpop(["never"], timeout=5)
            assert time.monotonic() - t0 < 2
            assert c.ping()
            c.close()
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(port=port, username=tenants[0].slug, password="bad").ping()
        names = [s[0] for s in SEEN]
        assert ("SET", "ok", None) in SEEN and ("GET", "rejected", None) in SEEN
        assert ("FLUSHALL", "rejected", None) in SEEN
        assert ("BLPOP", "rejected", None) in SEEN
        assert names.count("GET") >= 4
        assert names.count("INCRBY") == 51 and SEEN.count(("INCRBY", "ok", None)) == 51
        assert (tenants[0].slug, True) in SESSIONS
        assert any(not authed for _, authed in SESSIONS)  # the failed AUTH's session
    finally:
        cleanup(tenants)
