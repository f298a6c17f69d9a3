"""The CI-sized run of ``bench/fuzz_redis.py``: a few thousand generated and mutated RESP
frames at the Redis door, with another tenant's canary client (issue 16); and regressions
of what the fuzzer found."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[4] / "bench" / "fuzz_redis.py"


def _fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_redis", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_redis"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_fuzzed_frames_give_no_crash_no_hang_and_the_canary_is_served():
    figures = _fuzzer().run(frames=4000, seconds=25, seed=16)
    print(figures.line())
    assert figures.frames >= 1500, figures.line()
    assert figures.answered > 100 and figures.closed_by_gateway > 100, figures.line()
    assert figures.crashes == 0, figures.crash_samples
    assert figures.hangs == 0, figures.hang_samples
    assert figures.canary_failures == 0, figures.canary_samples
    assert figures.canary_ops > 0
    assert figures.leaks == 0 and figures.upstream_leaked == 0, figures.upstream_at_end


def test_the_fuzzer_counts_crashes(monkeypatch):
    """The fuzzer must be able to fail: an inline parser that raises is counted (it is an
    exception out of data_received, reported by the loop's exception handler)."""
    from ogelkit_redis import wire

    original = wire.split_args

    def broken(line: bytes) -> list[bytes]:
        if b"k1" in line:
            raise RuntimeError("planted bug")
        return original(line)

    monkeypatch.setattr(wire, "split_args", broken)
    figures = _fuzzer().run(frames=1500, seconds=20, seed=5)
    assert figures.crashes > 0, figures.line()


def test_the_fuzzer_counts_hangs(monkeypatch):
    """... and hangs: a door that loses the replies naming the batch's nonce."""
    from ogelkit_redis.connection import RedisConnection

    original = RedisConnection.reply

    def lossy(self, data: bytes) -> None:
        if b"fuzzend" not in data:
            original(self, data)

    monkeypatch.setattr(RedisConnection, "reply", lossy)
    figures = _fuzzer().run(frames=120, seconds=20, seed=5, hang=1.0)
    assert figures.hangs > 0, figures.line()


def test_a_psubscribe_pattern_the_acl_cannot_hold_is_refused_to_the_client(gw):
    """Found by the fuzzer: PSUBSCRIBE 'a b' made ACL SETUSER fail in the gateway (a
    traceback per try); the client gets an error and the connection goes on."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        f = sock.makefile("rb")
        fz = _fuzzer()
        sock.sendall(fz.enc("AUTH", gw.a.slug, gw.a.password))
        assert f.readline() == b"+OK\r\n"
        sock.sendall(fz.enc("PSUBSCRIBE", "a b*") + fz.enc("PING"))
        line = f.readline()
        assert line.startswith(b"-ERR this pattern cannot be subscribed"), line
        assert f.readline() == b"+PONG\r\n"
