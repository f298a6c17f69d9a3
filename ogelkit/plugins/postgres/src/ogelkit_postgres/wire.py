"""PostgreSQL v3 wire protocol: constants, message builders and small parsers.

The relay never decodes rows: it reads a message's type byte and length (``HEADER``) and
looks inside only the few messages it acts on (Query, Parse, Bind, Execute, CommandComplete,
ErrorResponse, ReadyForQuery, ParameterStatus). Builders return ready-to-write ``bytes``.
"""

from __future__ import annotations

import struct

# Untyped startup-phase request codes (the int32 after the length).
PROTOCOL_3 = 196608  # 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# Largest startup packet PostgreSQL itself accepts.
MAX_STARTUP_PACKET = 10_000

_I = struct.Struct("!I")
_i = struct.Struct("!i")
_h = struct.Struct("!h")
_ii = struct.Struct("!ii")
_iii = struct.Struct("!iii")

#: ``unpack_len(buf, pos)[0]``: the int32 length that follows a type byte at ``pos - 1``.
unpack_len = _I.unpack_from
unpack_i32 = _i.unpack_from
#: ``pack_i32(value)``: a signed int32, network order (the struct method itself: no call).
pack_i32 = _i.pack


def message(kind: bytes, body: bytes = b"") -> bytes:
    """A typed message: kind byte, int32 length (itself included), body."""
    return kind + _i.pack(len(body) + 4) + body


def cstr(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return data + b"\0"


def read_cstr(data: bytes, pos: int, end: int | None = None) -> tuple[bytes, int]:
    """The NUL-terminated string at ``pos`` and the position after its NUL.

    Raises ``ValueError`` when no NUL occurs before ``end``.
    """
    nul = data.index(0, pos, end if end is not None else len(data))
    return data[pos:nul], nul + 1


# -- backend (server -> client) messages ---------------------------------------------------

AUTH_OK = message(b"R", _i.pack(0))


def auth_sasl(mechanisms: list[str]) -> bytes:
    return message(b"R", _i.pack(10) + b"".join(cstr(m) for m in mechanisms) + b"\0")


def auth_sasl_continue(data: str) -> bytes:
    return message(b"R", _i.pack(11) + data.encode())


def auth_sasl_final(data: str) -> bytes:
    return message(b"R", _i.pack(12) + data.encode())


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", _ii.pack(pid, secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


PARSE_COMPLETE = message(b"1")
CLOSE_COMPLETE = message(b"3")


def negotiate_protocol_version(minor: int, unrecognized: list[str]) -> bytes:
    body = _ii.pack(minor, len(unrecognized)) + b"".join(cstr(o) for o in unrecognized)
    return message(b"v", body)


def error_response(sqlstate: str, text: str, *, severity: str = "ERROR",
                   detail: str | None = None, hint: str | None = None,
                   notice: bool = False) -> bytes:
    """ErrorResponse (or NoticeResponse) with the fields clients display."""
    parts = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate),
             b"M" + cstr(text)]
    if detail:
        parts.append(b"D" + cstr(detail))
    if hint:
        parts.append(b"H" + cstr(hint))
    return message(b"N" if notice else b"E", b"".join(parts) + b"\0")


def error_fields(body: bytes | memoryview) -> dict[str, str]:
    """Fields of an ErrorResponse/NoticeResponse body (without type and length)."""
    out: dict[str, str] = {}
    raw = bytes(body)
    pos = 0
    while pos < len(raw) and raw[pos] != 0:
        code = chr(raw[pos])
        end = raw.find(b"\0", pos + 1)
        if end < 0:
            break
        out[code] = raw[pos + 1:end].decode("utf-8", "replace")
        pos = end + 1
    return out


def error_sqlstate(data: bytes, pos: int, end: int) -> str | None:
    """SQLSTATE of the ErrorResponse occupying ``data[pos:end]`` (type byte at ``pos``)."""
    i = pos + 5
    while i < end and data[i] != 0:
        j = data.find(b"\0", i + 1, end)
        if j < 0:
            return None
        if data[i] == 67:  # 'C'
            return data[i + 1:j].decode("ascii", "replace")
        i = j + 1
    return None


def error_is_fatal(data: bytes, pos: int, end: int) -> bool:
    i = pos + 5
    while i < end and data[i] != 0:
        j = data.find(b"\0", i + 1, end)
        if j < 0:
            return False
        if data[i] == 86 or data[i] == 83:  # 'V' (non-localised) or 'S'
            return data[i + 1:j] in (b"FATAL", b"PANIC")
        i = j + 1
    return False


# -- frontend (client -> server) messages --------------------------------------------------


def startup_message(params: dict[str, str]) -> bytes:
    body = _i.pack(PROTOCOL_3) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _i.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    """SSLRequest: asks the server to switch the connection to TLS (it answers S or N)."""
    return _ii.pack(8, SSL_REQUEST)


def cancel_request(pid: int, secret: int) -> bytes:
    return _iii.pack(16, CANCEL_REQUEST, pid) + _i.pack(secret)


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return message(b"p", cstr(mechanism) + _i.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return message(b"p", data)


def password_message(password: str | bytes) -> bytes:
    return message(b"p", cstr(password))


TERMINATE = message(b"X")
SYNC = message(b"S")


def parse_message(name: bytes, tail: bytes) -> bytes:
    """Parse with statement ``name``; ``tail`` is the query text, NUL and parameter types."""
    return b"P" + _i.pack(len(name) + 1 + len(tail) + 4) + name + b"\0" + tail


def parse_startup(body: bytes) -> tuple[int, dict[str, str]]:
    """(protocol version, parameters) of a StartupMessage body (after the length).

    Total: raises ``ValueError`` (only) on a malformed body."""
    if len(body) < 4:
        raise ValueError("startup packet is too short")
    version = _i.unpack_from(body, 0)[0]
    params: dict[str, str] = {}
    parts = body[4:].split(b"\0")
    # The list ends with two empty strings: the terminator and what follows it.
    if len(parts) < 1 or parts[-1] != b"":
        raise ValueError("startup packet is not NUL-terminated")
    items = parts[:-2] if len(parts) >= 2 and parts[-2] == b"" else parts[:-1]
    if len(items) % 2:
        raise ValueError("startup packet has a parameter without a value")
    for k, v in zip(items[::2], items[1::2], strict=True):
        params[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return version, params


# -- splitting the extended-protocol messages the relay looks into -------------------------
# Total functions (None for a malformed body, never an exception): the relay's inline
# versions in connection.py follow the same rules, and the property tests hold both to them.


def split_parse(body: bytes) -> tuple[bytes, bytes, tuple[int, ...]] | None:
    """Parse: (statement name, query text, parameter type oids), or None."""
    nul = body.find(0)
    if nul < 0:
        return None
    qnul = body.find(0, nul + 1)
    if qnul < 0 or len(body) < qnul + 3:
        return None
    count = _h.unpack_from(body, qnul + 1)[0]
    if count < 0 or len(body) != qnul + 3 + 4 * count:
        return None
    oids = struct.unpack_from(f"!{count}I", body, qnul + 3) if count else ()
    return body[:nul], body[nul + 1:qnul], oids


def split_bind(body: bytes) -> tuple[bytes, bytes] | None:
    """Bind: (portal, statement name), or None (the rest is the server's to check)."""
    pnul = body.find(0)
    if pnul < 0:
        return None
    snul = body.find(0, pnul + 1)
    if snul < 0:
        return None
    return body[:pnul], body[pnul + 1:snul]


def split_execute(body: bytes) -> tuple[bytes, int] | None:
    """Execute: (portal, maximum rows), or None."""
    nul = body.find(0)
    if nul < 0 or len(body) != nul + 5:
        return None
    return body[:nul], _i.unpack_from(body, nul + 1)[0]


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# Message type bytes as ints (what indexing bytes gives), for the relay's comparisons.
class T:
    # frontend
    QUERY = 81  # Q
    PARSE = 80  # P
    BIND = 66  # B
    DESCRIBE = 68  # D (frontend) / DataRow (backend)
    EXECUTE = 69  # E (frontend) / ErrorResponse (backend)
    SYNC = 83  # S (frontend) / ParameterStatus (backend)
    FLUSH = 72  # H (frontend) / CopyOutResponse (backend)
    CLOSE = 67  # C (frontend) / CommandComplete (backend)
    TERMINATE = 88  # X
    COPY_DATA = 100  # d
    COPY_DONE = 99  # c
    COPY_FAIL = 102  # f
    FUNCTION_CALL = 70  # F
    PASSWORD = 112  # p
    # backend
    DATA_ROW = 68  # D
    ERROR = 69  # E
    COMMAND_COMPLETE = 67  # C
    READY = 90  # Z
    PARAMETER_STATUS = 83  # S
    PARSE_COMPLETE = 49  # 1
    BIND_COMPLETE = 50  # 2
    CLOSE_COMPLETE = 51  # 3
    EMPTY_QUERY = 73  # I
    PORTAL_SUSPENDED = 115  # s
    COPY_IN = 71  # G
    COPY_OUT = 72  # H
    COPY_BOTH = 87  # W
    NOTICE = 78  # N
    NOTIFICATION = 65  # A
    AUTH = 82  # R
    BACKEND_KEY = 75  # K
    NEGOTIATE = 118  # v


#: Every message type a frontend may send after startup.
FRONTEND_TYPES = frozenset(b"QPBDESHCXdcfF")
