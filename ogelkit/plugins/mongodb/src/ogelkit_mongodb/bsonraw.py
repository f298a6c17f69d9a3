"""Just enough BSON on raw bytes: walk a document's top-level elements and splice values.

The front door reads and rewrites a few top-level fields of commands and replies (``$db``,
``maxTimeMS``, ``cursor.ns`` ...). Walking the element headers and splicing bytes leaves the
user's documents untouched and uncopied, whatever their size; ``bson.decode`` is used only for
the small parts that must be understood (pipelines, filters).
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Iterator

_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_U8 = struct.Struct("<B")
i32 = _I32.unpack_from
i64 = _I64.unpack_from

STRING = 0x02
DOCUMENT = 0x03
ARRAY = 0x04
BINARY = 0x05
BOOL = 0x08
NULL = 0x0A
INT32 = 0x10
INT64 = 0x12
DOUBLE = 0x01

_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16,
          0x06: 0, 0x0A: 0, 0x7F: 0, 0xFF: 0}


#: Element names seen by ``index``, decoded once: commands and replies repeat the same few
#: names (``find``, ``filter``, ``$db``, ``cursor`` ...). Bounded in entries and name length.
_NAMES: dict[bytes, str] = {}
_NAME_CACHE_SIZE = 4096
_NAME_CACHE_LEN = 64


class BsonError(ValueError):
    """Malformed BSON."""


def value_end(buf: bytes | memoryview, t: int, p: int, end: int) -> int:
    """Offset just past the value of type ``t`` starting at ``p``."""
    size = _FIXED.get(t)
    if size is not None:
        q = p + size
    elif t in (0x02, 0x0D, 0x0E):  # string, code, symbol: int32 length incl. NUL
        q = p + 4 + i32(buf, p)[0]
    elif t in (0x03, 0x04, 0x0F):  # document, array, code with scope: int32 total length
        q = p + i32(buf, p)[0]
    elif t == 0x05:  # binary: length, subtype, bytes
        q = p + 5 + i32(buf, p)[0]
    elif t == 0x0B:  # regex: two cstrings
        q = bytes(buf[p:end]).index(b"\0") + p + 1
        q = bytes(buf[q:end]).index(b"\0") + q + 1
    elif t == 0x0C:  # DBPointer: string + 12-byte id
        q = p + 4 + i32(buf, p)[0] + 12
    else:
        raise BsonError(f"unknown BSON type 0x{t:02x}")
    if q > end or q < p:
        raise BsonError("BSON value runs past its document")
    return q


def elements(buf: bytes | memoryview, start: int = 0) -> Iterator[tuple[int, str, int, int, int]]:
    """``(type, name, element_start, value_start, value_end)`` of the document at ``start``."""
    if len(buf) - start < 5:
        raise BsonError("truncated BSON document")
    size = i32(buf, start)[0]
    end = start + size - 1  # offset of the trailing NUL
    if size < 5 or end >= len(buf) or buf[end] != 0:
        raise BsonError("bad BSON document length")
    p = start + 4
    while p < end:
        t = buf[p]
        try:
            z = buf.index(0, p + 1, end) if isinstance(buf, bytes) else bytes(buf[p + 1:end]).index(0) + p + 1
        except ValueError:
            raise BsonError("unterminated BSON element name") from None
        name = bytes(buf[p + 1:z]).decode("utf-8", "surrogateescape")
        try:
            q = value_end(buf, t, z + 1, end)
        except (struct.error, ValueError) as exc:
            if isinstance(exc, BsonError):
                raise
            raise BsonError(f"malformed BSON: {exc}") from None
        yield t, name, p, z + 1, q
        p = q
    if p != end:
        raise BsonError("BSON elements overrun their document")


def index(buf: bytes, start: int = 0) -> dict[str, tuple[int, int, int, int]]:
    """Top-level elements by name: ``name -> (type, element_start, value_start, value_end)``.

    The per-command hot path: a plain loop over ``bytes`` (no generator, no copies).
    """
    if not isinstance(buf, bytes):
        return {name: (t, e, v, q) for t, name, e, v, q in elements(buf, start)}
    n = len(buf)
    if n - start < 5:
        raise BsonError("truncated BSON document")
    size = i32(buf, start)[0]
    end = start + size - 1
    if size < 5 or end >= n or buf[end] != 0:
        raise BsonError("bad BSON document length")
    out: dict[str, tuple[int, int, int, int]] = {}
    p = start + 4
    find = buf.index
    fixed = _FIXED
    names = _NAMES
    try:
        while p < end:
            t = buf[p]
            z = find(0, p + 1, end)  # ValueError: an unterminated element name
            v = z + 1
            if t == 0x02 or t == 0x03 or t == 0x04:  # string, document, array: length-prefixed
                q = v + i32(buf, v)[0] + (4 if t == 0x02 else 0)
                if q > end or q <= v:
                    raise BsonError("BSON value runs past its document")
            else:
                width = fixed.get(t)
                if width is not None:
                    q = v + width
                    if q > end:
                        raise BsonError("BSON value runs past its document")
                else:
                    q = value_end(buf, t, v, end)
            raw = buf[p + 1:z]
            name = names.get(raw)
            if name is None:
                name = raw.decode("utf-8", "surrogateescape")
                if len(raw) <= _NAME_CACHE_LEN and len(names) < _NAME_CACHE_SIZE:
                    names[raw] = name
            out[name] = (t, p, v, q)
            p = q
    except (struct.error, IndexError, ValueError) as exc:  # every parser is total
        if isinstance(exc, BsonError):
            raise
        raise BsonError(f"malformed BSON: {exc}") from None
    if p != end:
        raise BsonError("BSON elements overrun their document")
    return out


def shape(buf: bytes, t: int, v: int, q: int) -> Hashable:
    """The structure of the value of type ``t`` at ``buf[v:q]`` with its literals left out:
    a document is ``((name, shape), ...)``, an array ``("[]", shape, ...)`` of its first 8
    items, anything else its BSON type byte. Read from the raw bytes (nothing decoded but the
    names): the cost layer keys its cache by the shape of each find's filter.
    """
    if t == DOCUMENT:
        return tuple([(name, shape(buf, el[0], el[2], el[3]))
                      for name, el in index(buf, v).items()])
    if t == ARRAY:
        out: list[Hashable] = ["[]"]
        for i, (tt, _name, _e, vv, qq) in enumerate(elements(buf, v)):
            if i == 8:
                break
            out.append(shape(buf, tt, vv, qq))
        return tuple(out)
    return t


def first_key(buf: bytes, start: int = 0) -> str:
    for _t, name, *_ in elements(buf, start):
        return name
    raise BsonError("empty command document")


def count(buf: bytes, start: int) -> int:
    """Number of elements of the document/array at ``start`` (a batch's document count)."""
    size = i32(buf, start)[0]
    end = start + size - 1
    p = start + 4
    n = 0
    find = buf.index
    while p < end:
        t = buf[p]
        z = find(0, p + 1, end)
        # Batches are arrays of documents: the fast case skips by the length prefix.
        p = z + 1 + i32(buf, z + 1)[0] if t == 0x03 else value_end(buf, t, z + 1, end)
        n += 1
    return n


def read_string(buf: bytes, v: int) -> str:
    n = i32(buf, v)[0]
    return bytes(buf[v + 4:v + 3 + n]).decode("utf-8", "surrogateescape")


def read_number(buf: bytes, t: int, v: int) -> float | int | None:
    if t == INT32:
        return i32(buf, v)[0]
    if t == INT64:
        return i64(buf, v)[0]
    if t == DOUBLE:
        return struct.unpack_from("<d", buf, v)[0]
    if t == BOOL:
        return buf[v]
    return None


def cstring(name: str) -> bytes:
    raw = name.encode()
    if b"\0" in raw:
        raise BsonError("NUL in element name")
    return raw + b"\0"


def string_element(name: str, value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    return b"\x02" + cstring(name) + _I32.pack(len(raw) + 1) + raw + b"\0"


def int64_element(name: str, value: int) -> bytes:
    return b"\x12" + cstring(name) + _I64.pack(value)


def int32_element(name: str, value: int) -> bytes:
    return b"\x10" + cstring(name) + _I32.pack(value)


def raw_element(t: int, name: str, value: bytes) -> bytes:
    return bytes((t,)) + cstring(name) + value


Edit = tuple[int, int, bytes]


def splice(buf: bytes | memoryview, start: int, end: int, edits: list[Edit],
           containers: tuple[int, ...] = ()) -> tuple[list[bytes | memoryview], int]:
    """Replace byte ranges of the document ``buf[start:end]``; fix its length and the lengths of
    nested ``containers`` (offsets of enclosing sub-documents' length prefixes).

    Returns the parts to write (slices of ``buf`` are memoryviews, not copies) and their total
    length. Edits must not overlap one another or the container length prefixes. Nothing is
    re-encoded: only the length prefixes of the document and of the ``containers`` that hold
    an edit are rewritten (a per-command hot path: plain loops, one sort of a few edits).
    """
    view = buf if isinstance(buf, memoryview) else memoryview(buf)
    if len(edits) > 1:
        edits = sorted(edits)
    pack = _I32.pack
    if not containers:  # the common case (a command's $db, maxTimeMS): no merge, no sort
        size = i32(view, start)[0]
        c_end = start + size
        delta = 0
        for s, e, r in edits:
            if start < s and e <= c_end:
                delta += len(r) - (e - s)
        parts: list[bytes | memoryview] = [pack(size + delta)]
        append = parts.append
        total = 4
        pos = start + 4
        for s, e, r in edits:
            if s > pos:
                append(view[pos:s])
                total += s - pos
            if r:
                append(r)
                total += len(r)
            if e > pos:
                pos = e
        if pos < end:
            append(view[pos:end])
            total += end - pos
        return parts, total
    all_edits = list(edits)
    for c in (start, *containers):
        size = i32(view, c)[0]
        c_end = c + size
        delta = 0
        for s, e, r in edits:
            if c < s and e <= c_end:
                delta += len(r) - (e - s)
        all_edits.append((c, c + 4, pack(size + delta)))
    all_edits.sort()
    parts = []
    append = parts.append
    total = 0
    pos = start
    for s, e, r in all_edits:
        if s > pos:
            append(view[pos:s])
            total += s - pos
        if r:
            append(r)
            total += len(r)
        if e > pos:
            pos = e
    if pos < end:
        append(view[pos:end])
        total += end - pos
    return parts, total
