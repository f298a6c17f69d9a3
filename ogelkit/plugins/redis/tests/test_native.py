"""The native framing core (``ogelkit_native``) against the pure-Python code it replaces in
``ogelkit_redis.wire``: identical results, errors (type and message) and ``Partial`` state on
random, split-at-every-byte and malformed input (the fuzzer's generator), whichever path is
active; and a broken build is a failure, not a silent fallback to Python."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ogelkit_redis import wire

BENCH = Path(__file__).resolve().parents[4] / "bench" / "fuzz_redis.py"


def _built() -> bool:
    try:
        importlib.metadata.distribution("ogelkit-native")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_the_native_module_imports_when_it_was_built_and_is_selected_unless_disabled():
    if not _built():
        pytest.skip("ogelkit-native is not installed in this environment (pure-Python only)")
    import ogelkit_native  # a broken build fails here, not silently as the Python path

    assert callable(ogelkit_native.parse_command)
    assert set(wire.NATIVE_FUNCS) == set(wire.PYTHON)
    disabled = os.environ.get("OGELKIT_NATIVE", "") == "0"
    assert wire.NATIVE is (not disabled)
    active = wire.NATIVE_FUNCS if wire.NATIVE else wire.PYTHON
    for name, func in active.items():
        assert getattr(wire, name) is func, name


native = pytest.mark.skipif(not wire.NATIVE_FUNCS, reason="ogelkit-native is not built")
PY = wire.PYTHON
NAT = wire.NATIVE_FUNCS


def outcome(func: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", func(*args)
    except wire.ProtocolError as exc:
        return "ProtocolError", str(exc)
    except Exception as exc:  # the same exception type either way (IndexError ...)
        return type(exc).__name__, None


def state(p: wire.Partial) -> tuple:
    return (None if p.argv is None else list(p.argv), p.left, p.need, p.line)


def trace(parse: Callable[..., Any], chunks: list[bytes], max_bulk: int, max_args: int) -> list:
    """What a connection does with ``parse``: parse requests from each chunk, keep the rest
    of an incomplete one and go on once the next chunk arrived."""
    partial = wire.Partial()
    out: list = []
    rest = b""
    for chunk in chunks:
        buf, pos = rest + chunk, 0
        rest = b""
        while pos < len(buf):
            result = outcome(parse, buf, pos, max_bulk, max_args, partial)
            out.append((result, state(partial)))
            if result[0] != "ok":
                return out
            argv, end = result[1]
            if argv is None:
                rest = buf[end:]
                break
            pos = end
    return out


def same_parse(
    stream: bytes, cuts: list[int], max_bulk: int = 512 * 1024 * 1024, max_args: int = wire.MAX_ARGS
) -> None:
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    chunks = [c for c in chunks if c]
    assert trace(NAT["parse_command"], chunks, max_bulk, max_args) == trace(
        PY["parse_command"], chunks, max_bulk, max_args
    ), (stream, cuts)
    for pos in range(len(stream)):
        assert outcome(NAT["parse_chunk"], stream, pos, max_bulk, max_args) == outcome(
            PY["parse_chunk"], stream, pos, max_bulk, max_args
        ), (stream, pos)


def enc(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


#: Bytes that matter to the parsers, so random input often looks like RESP.
RESPISH = st.lists(
    st.sampled_from(
        [
            b"*",
            b"$",
            b"\r\n",
            b"\r",
            b"\n",
            b"0",
            b"1",
            b"2",
            b"3",
            b"9",
            b"-",
            b"+",
            b":",
            b" ",
            b'"',
            b"'",
            b"\\",
            b"x",
            b"a",
            b"GET",
            b"\x00",
            b"\xe9",
            b"*2\r\n",
            b"$3\r\n",
            b"00",
            b"1234567890123456789",
        ]
    ),
    max_size=40,
).map(b"".join)
ARG = st.binary(max_size=12) | st.sampled_from([b"", b"\r\n", b"$3", b"*1", b"\x00\xff"])
VALID = st.lists(st.lists(ARG, min_size=1, max_size=4).map(lambda a: enc(*a)), min_size=1, max_size=4).map(
    b"".join
)


@native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(RESPISH, VALID, st.binary(max_size=60)), st.data())
def test_requests_random_input_same_results_errors_and_partial_state(stream, data):
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(stream))), max_size=4))))
    same_parse(stream, cuts)
    same_parse(stream, cuts, max_bulk=4, max_args=3)  # the limits, small


@native
@pytest.mark.parametrize(
    "stream",
    [
        enc(b"SET", b"k", b"v" * 40) + enc(b"GET", b"k") + b"PING\r\n" + enc(b"MGET", b"a", b"b"),
        b"SET \"a\\x41\\n\" 'b\\'c' d\r\n*0\r\n*-1\r\n" + enc(b"ECHO", b"\r\n$5\r\n"),
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n0123456789\r\n*1\r\n$4\r\nPING\r\n",
    ],
)
def test_requests_split_at_every_byte_and_every_pair_of_bytes(stream):
    for i in range(1, len(stream)):
        same_parse(stream, [i])
    for i in range(1, len(stream), 3):
        for j in range(i + 1, len(stream), 5):
            same_parse(stream, [i, j])


@native
@pytest.mark.parametrize(
    "stream",
    [
        b"*1\r\n+PING\r\n",
        b"*1\r\n:1\r\n",
        b"*01\r\n$4\r\nPING\r\n",
        b"*1\r\n$04\r\nPING\r\n",
        b"*+1\r\n",
        b"*1_0\r\n",
        b"* 1\r\n",
        b"*-\r\n",
        b"*-0\r\n",
        b"*\r\n",
        b"*1\r\n$-1\r\n",
        b"*1\r\n$\r\n",
        b"*1\r\n$4_0\r\n",
        b"*1\r\n$" + b"9" * 19 + b"\r\n",
        b"*" + b"9" * 19 + b"\r\n",
        b"*2000000\r\n",
        b"*1\r\n$" + b"1" * 40,
        b"*1" + b"1" * 70000,
        b"x" * 70000,
        b'"unbalanced\r\n',
        b"'x'y\r\n",
        b'"a"b\r\n',
        b"*1\r\n\xe9",
        b"*1\r\n$4\r\nPINGxx",
        b"\r\n\r\n",
        b" \t\v\f\r\n",
        b"*1\r\n$600\r\n" + b"v" * 600 + b"\r\n",  # over max_bulk=512 in the limited pass
    ],
)
def test_requests_malformed_same_errors(stream):
    for cuts in ([], [1], [len(stream) // 2]):
        same_parse(stream, cuts)
        same_parse(stream, cuts, max_bulk=512, max_args=8)


def _fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_redis", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_redis"] = module
    spec.loader.exec_module(module)
    return module


@native
def test_requests_the_fuzzers_frames_same_results():
    fz = _fuzzer()
    rng = random.Random(15)
    gen = fz.Generator(rng, ("u", "p"), ("c", "q"), "c:")
    for i in range(3000):
        stream = b"".join(gen.frame() for _ in range(rng.randrange(1, 4))) or b"\r\n"
        cuts = sorted(set(rng.randrange(1, len(stream) + 1) for _ in range(i % 3)))
        same_parse(stream, cuts)
        if i % 10 == 0:
            same_parse(stream, cuts, max_bulk=16 * 1024, max_args=16)  # the pre-AUTH limits


@native
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | RESPISH)
def test_inline_split_args_same_results(line):
    assert outcome(NAT["split_args"], line) == outcome(PY["split_args"], line)


# -- replies ------------------------------------------------------------------------------------
def _reply(draw: Any, depth: int = 0) -> bytes:
    kinds = ["+", "-", ":", "$", "_", ",", "#", "(", "=", "!"]
    if depth < 3:
        kinds += ["*", "~", ">", "%", "|"]
    k = draw(st.sampled_from(kinds))
    if k in "$=!":
        if draw(st.booleans()) and k == "$":
            return b"$-1\r\n"
        v = draw(st.binary(max_size=10))
        return b"%s%d\r\n%s\r\n" % (k.encode(), len(v), v)
    if k in "*~>%|":
        n = draw(st.integers(-1, 3))
        if n < 0:
            return k.encode() + b"-1\r\n"
        items = n * (2 if k in "%|" else 1) + (1 if k == "|" else 0)
        return b"%s%d\r\n" % (k.encode(), n) + b"".join(_reply(draw, depth + 1) for _ in range(items))
    return k.encode() + draw(st.sampled_from([b"OK", b"1", b"-2", b"", b"ERR x", b"1.5"])) + b"\r\n"


replies = st.composite(lambda draw: b"".join(_reply(draw) for _ in range(draw(st.integers(1, 3)))))


def same_scan(data: bytes) -> None:
    for buf in (data, bytearray(data)):
        for pos in range(len(data) + 1):
            assert outcome(NAT["reply_end"], buf, pos) == outcome(PY["reply_end"], buf, pos)
            for remaining in (1, 2, 5, -1, 0):
                assert outcome(NAT["reply_scan"], buf, pos, remaining) == outcome(
                    PY["reply_scan"], buf, pos, remaining
                ), (data, pos, remaining)


@native
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies() | RESPISH)
def test_replies_every_prefix_and_start_same_scan(data):
    for cut in range(len(data) + 1):
        prefix = data[:cut]
        assert outcome(NAT["reply_end"], prefix, 0) == outcome(PY["reply_end"], prefix, 0)
    same_scan(data)


@native
def test_replies_resumed_scan_is_the_python_one_at_every_split():
    data = b"*3\r\n$5\r\nhello\r\n%1\r\n+a\r\n:1\r\n|1\r\n+k\r\n+v\r\n*2\r\n$-1\r\n_\r\n" * 3
    for cut in range(1, len(data)):
        for scan in (NAT["reply_scan"], PY["reply_scan"]):
            acc = bytearray(data[:cut])
            at, left, need = scan(acc, 0, 1)
            while left:
                acc += data[len(acc) : max(need, len(acc) + 1)]
                at, left, need = scan(acc, at, left)
            assert at == PY["reply_end"](data, 0), (cut, scan)


@native
@pytest.mark.parametrize(
    "data",
    [
        b"$+3\r\nabc\r\n",
        b"$ 3\r\nabc\r\n",
        b"*1_0\r\n",
        b"$x\r\n",
        b"*\r\n",
        b"$-\r\n",
        b"*" + b"9" * 40 + b"\r\n",
        b"$" + b"9" * 30 + b"\r\n",
        b"%" + b"9" * 18 + b"\r\n" * 5,
        b"*" + b"9" * 18 + b"\r\n*" + b"9" * 18 + b"\r\n" * 9,
        b"$03\r\nabc\r\n",
        b"*-05\r\n",
        b"|-3\r\n+x\r\n",
        b"$\xe9\r\n",
    ],
)
def test_replies_malformed_and_unusual_lengths_same_results(data):
    same_scan(data)
