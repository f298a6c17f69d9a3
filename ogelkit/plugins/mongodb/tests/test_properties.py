"""Property-based tests (hypothesis) of the wire parsers: OP_MSG and OP_QUERY framing and the
raw BSON indexer are total (a result or their own error, nothing else) and agree with
pymongo's ``bson`` on every document it can encode."""

from __future__ import annotations

import struct

import bson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ogelkit_mongodb import bsonraw, wire
from ogelkit_mongodb.testing import mutate, op_msg, op_query, seeds

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

names = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                max_size=12)
scalars = (st.none() | st.booleans() | st.integers(-(2**31), 2**31 - 1)
           | st.integers(-(2**63), 2**63 - 1).map(bson.Int64)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(names, inner, max_size=4), max_leaves=12)
documents = st.dictionaries(names, values, max_size=6)


@SETTINGS
@given(st.binary(max_size=200))
def test_op_msg_parser_is_total_on_any_bytes(data):
    frame = struct.pack("<iiii", 16 + len(data), 1, 0, wire.OP_MSG) + data
    try:
        m = wire.parse_op_msg(frame)
    except wire.ProtocolError:
        return
    assert 21 <= m.body_end <= len(frame)


@SETTINGS
@given(st.binary(max_size=200))
def test_op_query_parser_is_total_on_any_bytes(data):
    frame = struct.pack("<iiii", 16 + len(data), 1, 0, wire.OP_QUERY) + data
    try:
        q = wire.parse_op_query(frame)
    except wire.ProtocolError:
        return
    assert isinstance(q.query, dict)


@SETTINGS
@given(documents, st.lists(st.tuples(names.filter(bool), st.lists(documents, max_size=3)),
                           max_size=2))
def test_op_msg_round_trip(doc, sequences):
    frame = op_msg(doc, request_id=7, sequences=sequences)
    m = wire.parse_op_msg(frame)
    assert m.request_id == 7
    assert bson.decode(frame[m.body_start:m.body_end]) == bson.decode(bson.encode(doc))
    assert [ident for ident, *_ in m.sequences] == [ident for ident, _ in sequences]
    for ident, _docs in sequences:
        got = [bson.decode(d) for d in m.sequence_documents(ident)]
        want = [bson.decode(bson.encode(d)) for seq_id, ds in sequences if seq_id == ident
                for d in ds]
        assert got == want


@SETTINGS
@given(documents)
def test_op_query_round_trip(doc):
    q = wire.parse_op_query(op_query(doc, "main.$cmd"))
    assert q.collection == "main.$cmd"
    expected = bson.decode(bson.encode(doc))
    if isinstance(expected.get("$query"), dict):
        expected = expected["$query"]
    assert q.query == expected


@SETTINGS
@given(documents)
def test_index_agrees_with_bson(doc):
    raw = bson.encode(doc)
    index = bsonraw.index(raw)
    decoded = bson.decode(raw)
    assert list(index) == list(decoded)
    for name, (t, element_start, v, q) in index.items():
        assert raw[element_start] == t
        # the element alone, wrapped in a document, decodes to the same value
        element = raw[element_start:q]
        single = struct.pack("<i", len(element) + 5) + element + b"\x00"
        assert bson.decode(single)[name] == decoded[name]
        if t == bsonraw.STRING:
            assert bsonraw.read_string(raw, v) == decoded[name]


@SETTINGS
@given(st.binary(max_size=120))
def test_index_is_total_on_any_bytes(data):
    try:
        index = bsonraw.index(data)
    except bsonraw.BsonError:
        return
    for _t, e, v, q in index.values():
        assert 4 <= e < v <= q < len(data)


@SETTINGS
@given(documents, st.randoms(use_true_random=False))
def test_index_is_total_on_mutated_documents(doc, rng):
    raw = bytearray(bson.encode(doc))
    for _ in range(rng.randint(1, 4)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    try:
        bsonraw.index(bytes(raw))
    except bsonraw.BsonError:
        pass


@SETTINGS
@given(st.sampled_from(seeds()), st.randoms(use_true_random=False))
def test_parsers_are_total_on_mutated_seed_frames(frame, rng):
    for _ in range(3):
        frame = mutate(frame, rng)
    try:
        if len(frame) >= 16 and struct.unpack_from("<i", frame, 12)[0] == wire.OP_QUERY:
            wire.parse_op_query(frame)
        else:
            m = wire.parse_op_msg(frame)
            bsonraw.index(frame, m.body_start)
    except (wire.ProtocolError, bsonraw.BsonError):
        pass
