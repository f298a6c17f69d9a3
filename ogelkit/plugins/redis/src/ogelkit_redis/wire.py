"""RESP2/RESP3 framing: client requests in, reply boundaries and values out.

The hot path works on ``bytes`` with ``find``/slices: a request is parsed into its argument
list (needed to find and prefix keys), a reply is only *scanned* for its end so it can be
forwarded as the raw bytes it arrived as. Full decoding (``decode``) is used only for the few
replies the gateway rewrites (key names in ``KEYS``/``SCAN``/``BLPOP`` replies, channel names
in pub/sub messages).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

CRLF = b"\r\n"
MAX_INLINE = 64 * 1024  # Redis refuses inline requests longer than this too
MAX_ARGS = 1024 * 1024  # Redis's own multibulk limit


class ProtocolError(Exception):
    """A malformed request: answered with ``-ERR Protocol error: ...`` and the client closed."""


#: An array header of 6 or more digits (100000+ elements, or leading zeros) somewhere in a
#: chunk. hiredis allocates the whole list when it reads an array header, before any
#: element arrived and with no limit of its own, so such a chunk never goes to it: the
#: Python parser checks the count against MAX_ARGS first. (A match inside a payload only
#: costs that chunk the slower parser.)
BIG_ARRAY = re.compile(rb"\*[0-9]{6}")
#: Where a request's element may be something other than a bulk string: a reply type byte
#: after a line end. A payload starting with one of these bytes matches too (a false alarm:
#: that chunk takes the Python parser, which decides exactly).
NOT_BULK = re.compile(rb"\r\n[+=(:,#_\-~>|%]")


class Partial:
    """Where ``parse_command`` stopped in an incomplete request, to go on from there.

    ``argv``: the arguments read so far (``None``: nothing of the request was consumed,
    retry it from its start); ``left``: how many are still to come; ``need``: how many bytes
    from the position ``parse_command`` returned are worth waiting for before parsing again
    (the whole value of a large argument, so a 10 MB value is not rescanned on every chunk);
    ``line``: a line (inline request, array header) lacks its end, so parsing is worth
    trying again only once a ``\n`` arrives (or ``need`` bytes, which are too many).
    """

    __slots__ = ("argv", "left", "line", "need")

    def __init__(self) -> None:
        self.argv: list[bytes] | None = None
        self.left = 0
        self.need = 0
        self.line = False


def parse_command(buf: bytes, pos: int, max_bulk: int, max_args: int, partial: Partial
                  ) -> tuple[list[bytes] | None, int]:
    """Parse one request at ``pos`` (or go on with the one ``partial`` holds).

    Returns ``(argv, end)`` for a complete request, ``([], end)`` for an empty one to skip,
    or ``(None, resume)`` when more bytes are needed: the bytes from ``resume`` on must be
    kept, and ``partial`` says how many are worth waiting for and what was read already.
    Each byte is parsed once however the request is cut into chunks.

    Lengths are ASCII digits without leading zeros (``-`` first for an empty request) and
    nothing else, as Redis's ``string2ll`` reads them: Python's
    ``int`` would also take ``+``, ``_`` and spaces (``$4_0`` as 40), which Redis refuses.
    They are checked against ``max_args``/``max_bulk`` before anything is allocated.
    """
    argv = partial.argv
    if argv is not None:  # arguments of a request cut short by the previous chunk
        partial.argv = None
        return _bulks(buf, pos, max_bulk, partial, argv, partial.left)
    n = len(buf)
    if buf[pos] != 42:  # not '*': inline command
        return _parse_inline(buf, pos, n, partial)
    eol = buf.find(CRLF, pos)
    if eol < 0:
        if n - pos > MAX_INLINE:
            raise ProtocolError("too big mbulk count string")
        partial.need = MAX_INLINE + 1
        partial.line = True
        return None, pos
    head = buf[pos + 1:eol]
    if len(head) > 18 or not head.isdigit() or (head[0] == 48 and len(head) > 1):
        if len(head) > 18 or head[:1] != b"-" or not head[1:].isdigit():
            raise ProtocolError("invalid multibulk length")
        return [], eol + 2  # negative: an empty request, like Redis
    count = int(head)
    if count > max_args:
        raise ProtocolError("invalid multibulk length")
    if count == 0:
        return [], eol + 2
    return _bulks(buf, eol + 2, max_bulk, partial, [], count)


_py_parse_command = parse_command


def _bulks(buf: bytes, p: int, max_bulk: int, partial: Partial, argv: list[bytes], left: int
           ) -> tuple[list[bytes] | None, int]:
    """Read ``left`` more bulk strings of a request into ``argv``, from ``p``."""
    n = len(buf)
    find = buf.find
    append = argv.append
    while left:
        if p >= n:
            need = 1
            break
        if buf[p] != 36:  # '$'
            raise ProtocolError(f"expected '$', got '{chr(buf[p])}'")
        eol = find(CRLF, p)
        if eol < 0:
            if n - p > 32:
                raise ProtocolError("invalid bulk length")
            need = n - p + 1
            break
        head = buf[p + 1:eol]
        if len(head) > 18 or not head.isdigit() or (head[0] == 48 and len(head) > 1):
            raise ProtocolError("invalid bulk length")  # leading zeros too, as string2ll
        size = int(head)
        if size > max_bulk:
            raise ProtocolError("invalid bulk length")
        start = eol + 2
        end = start + size + 2
        if end > n:
            need = end - p  # this whole argument
            break
        append(buf[start:start + size])
        p = end
        left -= 1
    else:
        return argv, p
    partial.argv = argv
    partial.left = left
    partial.need = need
    partial.line = False
    return None, p


def _parse_inline(buf: bytes, pos: int, n: int, partial: Partial
                  ) -> tuple[list[bytes] | None, int]:
    eol = buf.find(b"\n", pos)
    if eol < 0:
        if n - pos > MAX_INLINE:
            raise ProtocolError("too big inline request")
        partial.need = MAX_INLINE + 1
        partial.line = True
        return None, pos
    if eol - pos > MAX_INLINE:
        raise ProtocolError("too big inline request")
    line = buf[pos:eol]
    if line.endswith(b"\r"):
        line = line[:-1]
    return split_args(line), eol + 1


def split_args(line: bytes) -> list[bytes]:
    """Split an inline request the way Redis's ``sdssplitargs`` does (quotes, escapes)."""
    out: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\r\n\v\f":
            i += 1
        if i >= n:
            return out
        cur = bytearray()
        if line[i] == 34:  # double quotes, with \n \xHH ... escapes
            i += 1
            while True:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if c == 92 and i + 1 < n:  # backslash
                    nxt = line[i + 1]
                    if nxt == 120 and i + 3 < n and _ishex(line[i + 2:i + 4]):
                        cur.append(int(line[i + 2:i + 4], 16))
                        i += 4
                        continue
                    cur.append({110: 10, 114: 13, 116: 9, 98: 8, 97: 7}.get(nxt, nxt))
                    i += 2
                    continue
                if c == 34:
                    i += 1
                    if i < n and line[i] not in b" \t\r\n\v\f":
                        raise ProtocolError("unbalanced quotes in request")
                    break
                cur.append(c)
                i += 1
        elif line[i] == 39:  # single quotes, only \' escapes
            i += 1
            while True:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                c = line[i]
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    cur.append(39)
                    i += 2
                    continue
                if c == 39:
                    i += 1
                    if i < n and line[i] not in b" \t\r\n\v\f":
                        raise ProtocolError("unbalanced quotes in request")
                    break
                cur.append(c)
                i += 1
        else:
            while i < n and line[i] not in b" \t\r\n\v\f":
                cur.append(line[i])
                i += 1
        out.append(bytes(cur))


def _ishex(two: bytes) -> bool:
    return all(c in b"0123456789abcdefABCDEF" for c in two)


def _encode_command(argv: list[bytes] | tuple[bytes, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(argv)]
    for a in argv:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


try:  # hiredis (C) parses requests ~8x and encodes them ~2x faster than the code here
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency; this keeps it optional
    _hiredis = None  # type: ignore[assignment]  # the pure-Python codec below is used

if _hiredis is not None:
    #: ``encode_command`` for a tuple, without a Python call in between (hot path). (cast:
    #: hiredis's stub types the argument as a 1-tuple; it takes a tuple of any length.)
    encode_tuple = cast("Callable[[tuple[bytes, ...]], bytes]", _hiredis.pack_command)

    def encode_command(argv: list[bytes] | tuple[bytes, ...]) -> bytes:
        """``*N`` multibulk encoding of an argument list."""
        return encode_tuple(tuple(argv))

    def new_reader():
        """A hiredis reader for complete multibulk requests (see ``RedisConnection._process``)."""
        if not _announced:
            _announce()
        return _hiredis.Reader()

    FastProtocolError: type[Exception] = _hiredis.ProtocolError
else:  # pragma: no cover
    encode_command = encode_tuple = _encode_command

    def new_reader():
        if not _announced:
            _announce()
        return None

    FastProtocolError = ProtocolError


_announced = False


def _announce() -> None:
    """Log which framing path runs, once per process: at the first client connection (the
    plugin modules are imported before the gateway's logging is set up)."""
    global _announced
    _announced = True
    if NATIVE:
        path = "native (ogelkit_native)"
    elif NATIVE_FUNCS:
        path = "pure Python (OGELKIT_NATIVE=0)"
    else:
        path = "pure Python (no ogelkit_native)"
    logging.getLogger("ogelkit.redis").info("RESP framing: %s", path)


# -- replies --------------------------------------------------------------------------------
_BULK = frozenset(b"$=!")
_AGG = frozenset(b"*~>")


def _length(buf: bytes | bytearray, start: int, eol: int) -> int:
    """The length or count of a reply header (``-1`` and other negatives: null)."""
    try:
        return int(buf[start:eol])
    except ValueError:
        raise ProtocolError(f"invalid length in a reply: {bytes(buf[start:eol][:32])!r}"
                            ) from None


def reply_end(buf: bytes, pos: int) -> int:
    """End offset of the reply starting at ``pos``; ``-need`` if incomplete (``need`` is the
    buffer length worth waiting for). ProtocolError on a malformed length."""
    end, remaining, need = _py_reply_scan(buf, pos, 1)
    return -need if remaining else end


def reply_scan(buf: bytes | bytearray, pos: int, remaining: int) -> tuple[int, int, int]:
    """Scan ``remaining`` more elements of a reply from ``pos`` (``reply_end`` that can go
    on where it stopped). Returns ``(end, 0, 0)`` when the reply ends at ``end``, else
    ``(at, remaining, need)``: scanning goes on at ``at`` (where an incomplete element
    starts) with ``remaining`` elements once the buffer holds ``need`` bytes. A length that
    is not a number is a ProtocolError (the upstream is Redis, but the scanner is total)."""
    n = len(buf)
    find = buf.find
    while remaining:
        if pos >= n:
            return pos, remaining, n + 1
        t = buf[pos]
        eol = find(CRLF, pos)
        if eol < 0:
            return pos, remaining, n + 1
        if t in _BULK:
            size = _length(buf, pos + 1, eol)
            end = eol + 2 if size < 0 else eol + 4 + size
            if end > n:
                return pos, remaining, end
        elif t in _AGG:
            c = _length(buf, pos + 1, eol)
            if c > 0:
                remaining += c
            end = eol + 2
        elif t == 37:  # '%' map
            c = _length(buf, pos + 1, eol)
            if c > 0:
                remaining += 2 * c
            end = eol + 2
        elif t == 124:  # '|' attribute: a map, then the reply it annotates
            c = _length(buf, pos + 1, eol)
            remaining += 2 * max(c, 0) + 1
            end = eol + 2
        else:
            end = eol + 2
        remaining -= 1
        pos = end
    return pos, 0, 0


_py_reply_scan = reply_scan


def parse_chunk(buf: bytes, pos: int, max_bulk: int, max_args: int) -> list[list[bytes]] | None:
    """Every request of ``buf[pos:]`` as argument lists (``[]`` for an empty one), if that part
    of the chunk holds only complete multibulk requests and no error; else ``None`` (nothing
    changed: parse it request by request with ``parse_command``, which words the error).

    One call per chunk: natively (``ogelkit_native``) it replaces the hiredis fast path and
    its guards (``BIG_ARRAY``, ``NOT_BULK``, the ``endswith`` check) with Redis's exact rules.
    This pure-Python version is its reference (the differential tests), not a fast path.
    """
    n = len(buf)
    if pos >= n:
        return None
    out: list[list[bytes]] = []
    partial = Partial()
    while pos < n:
        if buf[pos] != 42:
            return None
        try:
            argv, pos = _py_parse_command(buf, pos, max_bulk, max_args, partial)
        except ProtocolError:
            return None
        if argv is None:
            return None
        out.append(argv)
    return out


class Frame:
    """A decoded reply: ``kind`` is the RESP type byte (``b"*"``, ``b"$"`` ...), ``value`` the
    line (simple types), the payload (bulk types, ``None`` for nil) or a list of frames."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: int, value: Any):
        self.kind = kind
        self.value = value

    @property
    def is_error(self) -> bool:
        return self.kind == 45

    @property
    def is_aggregate(self) -> bool:
        return isinstance(self.value, list)

    def __repr__(self) -> str:
        return f"Frame({chr(self.kind)!r}, {self.value!r})"


def decode(buf: bytes, pos: int = 0) -> tuple[Frame, int]:
    """Decode one complete reply (the caller found its end with ``reply_end``)."""
    t = buf[pos]
    eol = buf.find(CRLF, pos)
    head = buf[pos + 1:eol]
    pos = eol + 2
    if t in _BULK:
        size = int(head)
        if size < 0:
            return Frame(t, None), pos
        return Frame(t, buf[pos:pos + size]), pos + size + 2
    if t in _AGG or t == 37 or t == 124:
        count = int(head)
        if count < 0:
            return Frame(t, None), pos
        if t == 37 or t == 124:
            count *= 2
        items = []
        for _ in range(count):
            item, pos = decode(buf, pos)
            items.append(item)
        frame = Frame(t, items)
        if t == 124:  # attribute: keep it with the reply it annotates
            inner, pos = decode(buf, pos)
            return Frame(t, [*items, inner]), pos
        return frame, pos
    return Frame(t, head), pos


def encode(frame: Frame) -> bytes:
    out: list[bytes] = []
    _encode(frame, out)
    return b"".join(out)


def _encode(frame: Frame, out: list[bytes]) -> None:
    t, v = frame.kind, frame.value
    k = bytes((t,))
    if t in _BULK:
        if v is None:
            out.append(k + b"-1\r\n")
        else:
            out.append(b"%s%d\r\n%s\r\n" % (k, len(v), v))
    elif t in _AGG or t == 37 or t == 124:
        if v is None:
            out.append(k + b"-1\r\n")
            return
        items = v
        if t == 124:
            items = v[:-1]
        count = len(items) // 2 if t in (37, 124) else len(items)
        out.append(b"%s%d\r\n" % (k, count))
        for item in items:
            _encode(item, out)
        if t == 124:
            _encode(v[-1], out)
    else:
        out.append(k + v + CRLF)


# -- replies the gateway writes itself ------------------------------------------------------
OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
QUEUED = b"+QUEUED\r\n"


def error(message: str) -> bytes:
    """``-<message>``; newlines are flattened (a RESP error is one line)."""
    text = " ".join(message.replace("\r", " ").split("\n"))
    return b"-" + text.encode("utf-8", "replace") + CRLF


def bulk(value: bytes | None, proto: int = 2) -> bytes:
    if value is None:
        return b"_\r\n" if proto == 3 else b"$-1\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def integer(n: int) -> bytes:
    return b":%d\r\n" % n


def array(items: list[bytes], kind: bytes = b"*") -> bytes:
    """An aggregate of already encoded items."""
    return b"%s%d\r\n%s" % (kind, len(items), b"".join(items))


def mapping(pairs: list[tuple[bytes, bytes]], proto: int) -> bytes:
    """A map of already encoded keys and values (a flat array in RESP2)."""
    flat = [x for pair in pairs for x in pair]
    if proto == 3:
        return b"%%%d\r\n%s" % (len(pairs), b"".join(flat))
    return array(flat)


def null(proto: int) -> bytes:
    return b"_\r\n" if proto == 3 else b"$-1\r\n"


def null_array(proto: int) -> bytes:
    return b"_\r\n" if proto == 3 else b"*-1\r\n"


def verbatim(text: bytes, proto: int) -> bytes:
    """INFO-style text: a verbatim string in RESP3, a bulk string in RESP2."""
    if proto == 3:
        return b"=%d\r\ntxt:%s\r\n" % (len(text) + 4, text)
    return bulk(text)


# -- the native core (ogelkit_native), when it is there -------------------------------------
#: The pure-Python framing functions, whichever path is active (the reference of the
#: differential tests, and what runs without the extension or with ``OGELKIT_NATIVE=0``).
PYTHON = {f.__name__: f for f in (parse_command, parse_chunk, reply_scan, reply_end, split_args)}
#: The native ones, when ``ogelkit_native`` imports (even with ``OGELKIT_NATIVE=0``: tests).
NATIVE_FUNCS: dict[str, Callable[..., Any]] = {}
#: True when the functions of this module are the native ones (docs/dev/native.md).
NATIVE = False

_native: ModuleType | None
try:
    import ogelkit_native
except ImportError:  # not built: the pure-Python path
    _native = None
else:
    _native = ogelkit_native

if _native is not None:
    # The module too: an inline request's line is split by whatever ``split_args`` is here.
    _native.redis_init(ProtocolError, _py_reply_scan, sys.modules[__name__])
    NATIVE_FUNCS = {name: getattr(_native, name) for name in PYTHON}
    if os.environ.get("OGELKIT_NATIVE", "") != "0":
        NATIVE = True
        parse_command = _native.parse_command  # drop-in replacements
        parse_chunk = _native.parse_chunk
        reply_scan = _native.reply_scan
        reply_end = _native.reply_end
        split_args = _native.split_args
