"""Property tests of the Redis wire parsers (issue 16, every parser total): the incremental
request parser (``wire.parse_command``) and the reply scanner (``wire.reply_scan``) on
arbitrary bytes, against a straightforward reference encoding, and cut into arbitrary
chunks. (test_differential.py compares whole gateways with Redis; these are the parsers
alone, at hypothesis's speed.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ogelkit_redis import wire
from ogelkit_redis.wire import Partial, ProtocolError, parse_command

MAX_BULK = 1024
MAX_ARGS = 64


def parse_all(data: bytes, max_bulk: int = MAX_BULK, max_args: int = MAX_ARGS
              ) -> tuple[list[list[bytes]], str]:
    """Every request in ``data`` parsed at once: (requests, "complete" | "partial" |
    "error"). Any exception but ProtocolError fails the test."""
    out: list[list[bytes]] = []
    pos, partial = 0, Partial()
    while pos < len(data):
        try:
            argv, end = parse_command(data, pos, max_bulk, max_args, partial)
        except ProtocolError:
            return out, "error"
        if argv is None:
            assert pos <= end <= len(data)
            return out, "partial"
        assert end > pos  # progress
        if argv:
            assert all(isinstance(a, bytes) for a in argv)
            out.append(argv)
        pos = end
    return out, "complete"


def parse_chunked(chunks: list[bytes], max_bulk: int = MAX_BULK, max_args: int = MAX_ARGS
                  ) -> tuple[list[list[bytes]], str]:
    """The same bytes arriving in ``chunks``, kept from where the parser says to resume (as
    ``RedisConnection`` does): the requests and the final state must not depend on the cut."""
    out: list[list[bytes]] = []
    partial = Partial()
    kept = b""
    for chunk in chunks:
        data = kept + chunk
        pos = 0
        while pos < len(data):
            try:
                argv, end = parse_command(data, pos, max_bulk, max_args, partial)
            except ProtocolError:
                return out, "error"
            if argv is None:
                break
            if argv:
                out.append(argv)
            pos = end
        else:
            end = len(data)
        kept = data[end:] if pos < len(data) else b""
    if kept or partial.argv is not None:
        return out, "partial"
    return out, "complete"


def reference(argv: list[bytes]) -> bytes:
    return b"".join([b"*%d\r\n" % len(argv)] + [b"$%d\r\n%s\r\n" % (len(a), a) for a in argv])


args = st.lists(st.binary(max_size=40), min_size=1, max_size=8)
requests = st.lists(args, min_size=1, max_size=6)
# Bytes that look like RESP often (headers, CRLFs, digits), as well as anything at all.
resp_alphabet = st.sampled_from([b"*", b"$", b"\r\n", b"\n", b"\r", b"1", b"2", b"0", b"-",
                                 b"_", b"+", b" ", b"a", b"GET", b"99999999999", b"\x00",
                                 b"\"", b"'", b"\\x41"])
resp_like = st.lists(resp_alphabet, max_size=40).map(b"".join)
anything = st.one_of(st.binary(max_size=200), resp_like)


def cuts(data: bytes) -> st.SearchStrategy[list[bytes]]:
    return st.lists(st.integers(0, len(data)), max_size=6).map(
        lambda points: [data[a:b] for a, b in zip([0, *sorted(points)],
                                                   [*sorted(points), len(data)], strict=True)])


@settings(max_examples=600, deadline=None)
@given(anything)
def test_the_request_parser_is_total_on_arbitrary_bytes(data):
    parse_all(data)  # a request, "need more" or a ProtocolError: nothing else
    parse_all(data, 16, 2)


@settings(max_examples=400, deadline=None)
@given(requests)
def test_the_parser_agrees_with_the_reference_encoding(reqs):
    data = b"".join(reference(r) for r in reqs)
    assert parse_all(data, 10**6, 10**6) == (reqs, "complete")
    assert b"".join(wire.encode_command(r) for r in reqs) == data
    # cut anywhere before the end: the complete requests before the cut, then "need more"
    cut = len(data) - 1
    got, state = parse_all(data[:cut], 10**6, 10**6)
    assert state == "partial" and got == reqs[:-1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.text(alphabet="abcXYZ019:{}*-_", min_size=1, max_size=8),
                         min_size=1, max_size=5).filter(lambda w: w[0][0] != "*"),
                min_size=1, max_size=4),  # ('*' first would be a multibulk request)
       st.sampled_from([b"\r\n", b"\n"]))
def test_inline_requests_split_on_spaces(lines, eol):
    data = b"".join(" ".join(words).encode() + eol for words in lines)
    assert parse_all(data) == ([[w.encode() for w in words] for words in lines], "complete")


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_chunking_of_requests_gives_the_same_requests(data):
    reqs = data.draw(requests)
    stream = b"".join(reference(r) for r in reqs)
    chunks = data.draw(cuts(stream))
    assert parse_chunked(chunks, 10**6, 10**6) == (reqs, "complete")


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_any_chunking_of_arbitrary_bytes_gives_the_same_result(data):
    stream = data.draw(anything)
    chunks = data.draw(cuts(stream))
    whole = parse_all(stream)
    assert parse_chunked(chunks) == whole


def test_lengths_are_ascii_digits_only():
    for bad in (b"*1_0\r\n", b"*+1\r\n", b"* 1\r\n", b"*1\r\n$4_0\r\n", b"*1\r\n$ 1\r\nx\r\n"):
        assert parse_all(bad)[1] == "error", bad
    assert parse_all(b"*-1\r\n*0\r\n") == ([], "complete")
    assert parse_all(b"*65\r\n")[1] == "error"  # over max_args before anything is read
    assert parse_all(b"*1\r\n$1025\r\n")[1] == "error"  # over max_bulk


# -- replies ---------------------------------------------------------------------------------

simple = st.one_of(
    st.builds(lambda v: wire.Frame(43, v), st.binary(max_size=8).filter(
        lambda b: b"\r" not in b and b"\n" not in b)),
    st.builds(lambda v: wire.Frame(58, b"%d" % v), st.integers(-10**12, 10**12)),
    st.builds(lambda v: wire.Frame(45, b"ERR " + v), st.sampled_from([b"x", b"no such key"])),
    st.builds(lambda v: wire.Frame(36, v), st.one_of(st.none(), st.binary(max_size=30))),
    st.just(wire.Frame(95, b"")),  # '_' null
    st.builds(lambda v: wire.Frame(44, v), st.sampled_from([b"1.5", b"inf", b"-0"])),
    st.builds(lambda v: wire.Frame(61, b"txt:" + v), st.binary(max_size=10)),
)
replies = st.recursive(simple, lambda inner: st.one_of(
    st.builds(lambda xs: wire.Frame(42, xs), st.lists(inner, max_size=4)),
    st.builds(lambda xs: wire.Frame(126, xs), st.lists(inner, max_size=4)),
    st.builds(lambda xs: wire.Frame(62, xs), st.lists(inner, min_size=1, max_size=4)),
    st.builds(lambda xs: wire.Frame(37, [x for pair in xs for x in pair]),
              st.lists(st.tuples(inner, inner), max_size=3)),
    st.just(wire.Frame(42, None)),
), max_leaves=12)


def scan_chunked(chunks: list[bytes]) -> int | None:
    """Scan one reply arriving in ``chunks`` the way ``Upstream`` does; its end or None."""
    acc = bytearray()
    at, left = 0, 1
    for chunk in chunks:
        acc += chunk
        at, left, _need = wire.reply_scan(acc, at, left)
        if not left:
            return at
    return None


@settings(max_examples=600, deadline=None)
@given(anything)
def test_the_reply_scanner_is_total_on_arbitrary_bytes(data):
    try:
        end, left, need = wire.reply_scan(data, 0, 1)
    except ProtocolError:
        return
    if left:
        assert need > len(data) and 0 <= end <= len(data)
    else:
        assert 0 < end <= len(data)
    wire.reply_end(data, 0) if data else None


@settings(max_examples=400, deadline=None)
@given(st.lists(replies, min_size=1, max_size=4), st.data())
def test_the_reply_scanner_finds_each_reply_end_in_any_chunking(frames, data):
    raws = [wire.encode(f) for f in frames]
    stream = b"".join(raws)
    pos = 0
    for raw in raws:  # whole: each reply's end, and reply_end agrees
        end, left, _ = wire.reply_scan(stream, pos, 1)
        assert (end, left) == (pos + len(raw), 0)
        assert wire.reply_end(stream, pos) == end
        assert wire.encode(wire.decode(stream, pos)[0]) == raw
        pos = end
    first = raws[0]
    assert scan_chunked(data.draw(cuts(first))) == len(first)
    assert scan_chunked([first[:-1]]) is None
    assert wire.reply_end(first[:-1], 0) < 0
