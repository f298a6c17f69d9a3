"""The raw BSON helpers of the per-command hot path agree with pymongo's ``bson``: ``index``
(with its name cache), ``splice`` (fields replaced and appended without re-encoding, nested
length prefixes fixed), ``shape`` (a value's structure read from the bytes) and the cost key
built from the command's index instead of a decoded document."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import bson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ogelkit_mongodb import bsonraw, wire
from ogelkit_mongodb.cost import CostEstimator, shape
from ogelkit_mongodb.request import Request

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**31), 2**31 - 1)
    | st.integers(-(2**63), 2**63 - 1).map(bson.Int64)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(names, inner, max_size=4),
    max_leaves=16,
)
documents = st.dictionaries(names, values, max_size=6)


def joined(parts: list[Any], size: int) -> bytes:
    out = b"".join(bytes(p) for p in parts)
    assert len(out) == size
    return out


def value_bytes(value: Any) -> tuple[int, bytes]:
    """The BSON type and the encoded value of ``value`` (an element without its name)."""
    element = bson.encode({"x": value})[4:-1]
    return element[0], element[3:]  # type byte, "x\0", value


# -- index -------------------------------------------------------------------------------------


@SETTINGS
@given(documents)
def test_index_is_the_same_with_a_cold_and_a_warm_name_cache(doc):
    raw = bson.encode(doc)
    bsonraw._NAMES.clear()
    cold = bsonraw.index(raw)
    warm = bsonraw.index(raw)
    assert cold == warm
    assert list(warm) == list(bson.decode(raw))


def test_index_names_that_are_not_utf8_are_surrogate_escaped_cached_or_not():
    element = b"\x10" + b"a\xffb\x00" + b"\x01\x00\x00\x00"
    raw = (len(element) + 5).to_bytes(4, "little") + element + b"\x00"
    bsonraw._NAMES.clear()
    first = bsonraw.index(raw)
    second = bsonraw.index(raw)
    assert list(first) == list(second) == ["a\udcffb"]


def test_index_name_cache_is_bounded():
    bsonraw._NAMES.clear()
    for i in range(bsonraw._NAME_CACHE_SIZE + 100):
        bsonraw.index(bson.encode({f"n{i}": 1}))
    bsonraw.index(bson.encode({"x" * (bsonraw._NAME_CACHE_LEN + 1): 1}))
    assert len(bsonraw._NAMES) == bsonraw._NAME_CACHE_SIZE
    assert all(len(k) <= bsonraw._NAME_CACHE_LEN for k in bsonraw._NAMES)


# -- splice ------------------------------------------------------------------------------------


@SETTINGS
@given(documents.filter(bool), st.data())
def test_splice_replacing_one_field_agrees_with_encode(doc, data):
    raw = bson.encode(doc)
    name = data.draw(st.sampled_from(sorted(doc)))
    new = data.draw(values)
    t, v_bytes = value_bytes(new)
    el = bsonraw.index(raw)[name]
    if raw[el[1]] == t and data.draw(st.booleans()):  # same type: the value alone
        edit = (el[2], el[3], v_bytes)
    else:  # the whole element (type, name, value)
        edit = (el[1], el[3], bytes((t,)) + bsonraw.cstring(name) + v_bytes)
    out = joined(*bsonraw.splice(raw, 0, len(raw), [edit]))
    assert out == bson.encode({**doc, name: new})
    assert bson.decode(out) == {**doc, name: new}


@SETTINGS
@given(
    documents,
    st.lists(st.tuples(names, values), min_size=1, max_size=3, unique_by=lambda kv: kv[0]),
    st.data(),
)
def test_splice_appending_and_replacing_in_any_order_agrees_with_encode(doc, appended, data):
    appended = [(k, v) for k, v in appended if k not in doc]
    raw = bson.encode(doc)
    index = bsonraw.index(raw)
    expected = dict(doc)
    edits: list[bsonraw.Edit] = []
    for name in data.draw(st.lists(st.sampled_from(sorted(doc)), unique=True)) if doc else []:
        new = data.draw(values)
        t, v_bytes = value_bytes(new)
        el = index[name]
        edits.append((el[1], el[3], bytes((t,)) + bsonraw.cstring(name) + v_bytes))
        expected[name] = new
    # appended fields all go just before the trailing NUL, in order: one edit
    tail = b""
    for name, new in appended:
        t, v_bytes = value_bytes(new)
        tail += bytes((t,)) + bsonraw.cstring(name) + v_bytes
        expected[name] = new
    if tail:
        edits.append((len(raw) - 1, len(raw) - 1, tail))
    order = data.draw(st.permutations(edits))
    out = joined(*bsonraw.splice(raw, 0, len(raw), list(order)))
    assert out == bson.encode(expected)


@SETTINGS
@given(documents, documents.filter(bool), st.data())
def test_splice_in_a_sub_document_fixes_the_container_lengths(outer, inner, data):
    doc = {**outer, "cursor": {"inner": inner, "n": 1}}
    raw = bson.encode(doc)
    top = bsonraw.index(raw)
    c = top["cursor"][2]
    i = bsonraw.index(raw, c)["inner"][2]
    name = data.draw(st.sampled_from(sorted(inner)))
    new = data.draw(values)
    t, v_bytes = value_bytes(new)
    el = bsonraw.index(raw, i)[name]
    edit = (el[1], el[3], bytes((t,)) + bsonraw.cstring(name) + v_bytes)
    out = joined(*bsonraw.splice(raw, 0, len(raw), [edit], containers=(c, i)))
    expected = {**outer, "cursor": {"inner": {**inner, name: new}, "n": 1}}
    assert out == bson.encode(expected)


def test_splice_of_a_message_body_leaves_the_rest_alone():
    body = bson.encode({"find": "c", "filter": {"_id": 1}, "$db": "main"})
    msg = wire.op_msg(1, 0, body) + b"trailing"
    start, end = 21, 21 + len(body)
    el = bsonraw.index(msg, start)["$db"]
    edits = [
        (end - 1, end - 1, bsonraw.int32_element("maxTimeMS", 5)),
        (el[2], el[3], bsonraw.string_element("x", "t_a__main")[3:]),
    ]
    parts, size = bsonraw.splice(msg, start, end, edits)
    out = joined(parts, size)
    assert bson.decode(out) == {"find": "c", "filter": {"_id": 1}, "$db": "t_a__main", "maxTimeMS": 5}
    assert all(isinstance(p, bytes | memoryview) for p in parts)


# -- shape and the cost key ----------------------------------------------------------------------

_TYPES = {type(None): 0x0A, bool: 0x08, int: 0x10, bson.Int64: 0x12, float: 0x01, str: 0x02, bytes: 0x05}


def decoded_shape(value: Any) -> Any:
    """What ``bsonraw.shape`` must give, from the decoded value."""
    if isinstance(value, dict):
        return tuple((k, decoded_shape(v)) for k, v in value.items())
    if isinstance(value, list):
        return ("[]", *(decoded_shape(v) for v in value[:8]))
    return _TYPES[type(value)]


@SETTINGS
@given(documents)
def test_shape_agrees_with_the_decoded_document(doc):
    raw = bson.encode({"v": doc, "a": list(doc.values())})
    index = bsonraw.index(raw)
    decoded = bson.decode(raw)
    for name in ("v", "a"):
        t, _e, v, q = index[name]
        assert bsonraw.shape(raw, t, v, q) == decoded_shape(decoded[name])


def _op(cmd: dict[str, Any]) -> Any:
    msg = wire.op_msg(1, 0, bson.encode(cmd))
    index = bsonraw.index(msg, 21)
    req = Request(next(iter(cmd)), 1, "main")
    req.upstream_db = "t_a__main"
    req.body = msg[21:]
    req.data, req.index = msg, index
    return SimpleNamespace(request=req)


def _decoded_key_op(cmd: dict[str, Any]) -> Any:
    op = _op(cmd)
    op.request.index = {}  # no index: the decoding fallback
    return op


estimator = CostEstimator(SimpleNamespace(name="b"))  # type: ignore[arg-type]


@SETTINGS
@given(documents, documents, st.integers(0, 5), st.integers(0, 5))
def test_cost_key_is_the_same_iff_the_decoded_key_is(f1, f2, l1, l2):
    c1 = {"find": "c", "filter": f1, "limit": l1, "lsid": {"id": 1}, "$db": "main"}
    c2 = {"find": "c", "filter": f2, "limit": l2, "$db": "main", "maxTimeMS": 9}
    raw1, raw2 = estimator.key(_op(c1)), estimator.key(_op(c2))
    dec1, dec2 = estimator.key(_decoded_key_op(c1)), estimator.key(_decoded_key_op(c2))
    assert raw1 is not None and dec1 is not None
    assert (raw1 == raw2) == (dec1 == dec2)
    assert raw1 == estimator.key(_op(c1))


def test_cost_key_ignores_literals_and_keeps_limit_and_skip():
    def key(**fields: Any) -> Any:
        return estimator.key(_op({"find": "c", **fields, "$db": "main"}))

    assert key(filter={"_id": 1}) == key(filter={"_id": 2})
    assert key(filter={"_id": 1}) != key(filter={"_id": "1"})
    assert key(filter={"a": 1}) != key(filter={"b": 1})
    assert key(filter={"a": 1}, limit=1) != key(filter={"a": 1}, limit=2)
    assert key(filter={"a": 1}, skip=3) == key(filter={"a": 7}, skip=3)
    assert key(filter={"a": {"$in": list(range(20))}}) == key(filter={"a": {"$in": list(range(30, 50))}})
    assert estimator.key(_op({"find": 5, "$db": "main"})) is None  # no collection name
    assert estimator.key(_op({"insert": "c", "$db": "main"})) is None  # not costed
    assert shape({"a": [1]}) == (("a", ("[]", "int")),)
