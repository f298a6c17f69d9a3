"""MongoDB wire protocol framing: message headers, OP_MSG sections, OP_QUERY/OP_REPLY for the
legacy handshake. Works on the bytes of one message; BSON stays raw."""

from __future__ import annotations

import struct
from typing import Any

import bson

from ogelkit_mongodb import bsonraw

HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
HEADER_SIZE = 16
OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

CHECKSUM_PRESENT = 1
MORE_TO_COME = 1 << 1
EXHAUST_ALLOWED = 1 << 16
# Bits 0-15 are "required": a receiver must fail on one it does not know (OP_MSG spec).
_UNKNOWN_REQUIRED = 0xFFFF & ~(CHECKSUM_PRESENT | MORE_TO_COME)

_U32 = struct.Struct("<I")
_MSG_PREFIX = struct.Struct("<iiiiI")  # header + flagBits


class ProtocolError(Exception):
    """A malformed message: the client that sent it is closed."""


def crc32c(data: bytes | memoryview) -> int:
    import crc32c as _crc  # imported lazily: checksums are rare (no mainstream driver sends them)
    return _crc.crc32c(data)


class OpMsg:
    """One parsed OP_MSG: the command body (offsets into ``data``) and raw document sequences."""

    __slots__ = ("body_end", "body_start", "data", "flags", "request_id", "sequences")

    def __init__(self, data: bytes, request_id: int, flags: int, body_start: int, body_end: int,
                 sequences: list[tuple[str, int, int]]):
        self.data = data
        self.request_id = request_id
        self.flags = flags
        self.body_start = body_start
        self.body_end = body_end
        # (identifier, section start incl. the kind byte, section end)
        self.sequences = sequences

    @property
    def more_to_come(self) -> bool:
        return bool(self.flags & MORE_TO_COME)

    def sequence_documents(self, identifier: str) -> list[bytes]:
        """The raw documents of one document sequence (for the few places that look inside)."""
        out = []
        for ident, s, e in self.sequences:
            if ident != identifier:
                continue
            p = self.data.index(0, s + 5, e) + 1
            while p < e:
                n = bsonraw.i32(self.data, p)[0]
                out.append(self.data[p:p + n])
                p += n
        return out


def parse_op_msg(data: bytes) -> OpMsg:
    """Parse one whole OP_MSG (``data`` is exactly the message). Total: anything malformed
    raises ``ProtocolError``, nothing else."""
    if len(data) < 21:
        raise ProtocolError(f"OP_MSG of {len(data)} bytes is shorter than its header, flags "
                            "and one section")
    length, request_id, _resp, _op, flags = _MSG_PREFIX.unpack_from(data)
    if length != len(data):
        raise ProtocolError(f"OP_MSG length {length} does not match its {len(data)} bytes")
    if flags & _UNKNOWN_REQUIRED:
        raise ProtocolError(f"OP_MSG has unknown required flag bits 0x{flags & 0xFFFF:04x}")
    end = length
    if flags & CHECKSUM_PRESENT:
        end -= 4
        if end < 21:
            raise ProtocolError("OP_MSG too short for its checksum")
        expected = _U32.unpack_from(data, end)[0]
        if crc32c(memoryview(data)[:end]) != expected:
            raise ProtocolError("OP_MSG checksum mismatch")
    p = 20
    body: tuple[int, int] | None = None
    sequences: list[tuple[str, int, int]] = []
    try:
        while p < end:
            kind = data[p]
            if kind == 0:
                if body is not None:
                    raise ProtocolError("OP_MSG has more than one body section")
                size = bsonraw.i32(data, p + 1)[0]
                if size < 5 or p + 1 + size > end:
                    raise ProtocolError("OP_MSG body runs past the message")
                body = (p + 1, p + 1 + size)
                p += 1 + size
            elif kind == 1:
                size = bsonraw.i32(data, p + 1)[0]
                s_end = p + 1 + size
                if size < 5 or s_end > end:
                    raise ProtocolError("OP_MSG document sequence runs past the message")
                z = data.index(0, p + 5, s_end)
                ident = data[p + 5:z].decode()
                q = z + 1
                while q < s_end:  # validate the framing of each document
                    n = bsonraw.i32(data, q)[0]
                    if n < 5 or q + n > s_end:
                        raise ProtocolError("bad document in OP_MSG document sequence")
                    q += n
                sequences.append((ident, p, s_end))
                p = s_end
            else:
                raise ProtocolError(f"unknown OP_MSG section kind {kind}")
    except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"malformed OP_MSG: {exc}") from None
    if body is None:
        raise ProtocolError("OP_MSG without a body section")
    return OpMsg(data, request_id, flags, body[0], body[1], sequences)


def op_msg_parts(request_id: int, response_to: int, flags: int,
                 parts: list[bytes | memoryview], size: int) -> list[bytes | memoryview]:
    """Header, flags and a kind-0 section marker in front of body (and sequence) ``parts``."""
    total = 21 + size
    return [_MSG_PREFIX.pack(total, request_id, response_to, OP_MSG, flags) + b"\x00", *parts]


def op_msg(request_id: int, response_to: int, body: bytes, flags: int = 0) -> bytes:
    return (_MSG_PREFIX.pack(21 + len(body), request_id, response_to, OP_MSG, flags)
            + b"\x00" + body)


def encode(doc: dict[str, Any]) -> bytes:
    return bson.encode(doc)


# -- legacy OP_QUERY (the handshake of older drivers and pymongo's first hello) -----------------

class OpQuery:
    __slots__ = ("collection", "query", "request_id")

    def __init__(self, request_id: int, collection: str, query: dict[str, Any]):
        self.request_id = request_id
        self.collection = collection
        self.query = query


def parse_op_query(data: bytes) -> OpQuery:
    """Parse one whole OP_QUERY; anything malformed raises ``ProtocolError`` (total)."""
    if len(data) < HEADER_SIZE:
        raise ProtocolError("OP_QUERY shorter than a message header")
    length, request_id, _resp, _op = HEADER.unpack_from(data)
    if length != len(data):
        raise ProtocolError(f"OP_QUERY length {length} does not match its {len(data)} bytes")
    try:
        z = data.index(0, 20, length)
        collection = data[20:z].decode()
        p = z + 1 + 8  # numberToSkip, numberToReturn
        size = bsonraw.i32(data, p)[0]
        if size < 5 or p + size > length:
            raise ProtocolError("OP_QUERY document runs past the message")
        query = bson.decode(data[p:p + size])
        if "$query" in query and isinstance(query["$query"], dict):
            query = query["$query"]
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(f"malformed OP_QUERY: {exc}") from None
    return OpQuery(request_id, collection, query)


def op_reply(request_id: int, response_to: int, doc: dict[str, Any], *, failure: bool = False) -> bytes:
    body = bson.encode(doc)
    flags = 2 if failure else 8  # QueryFailure / AwaitCapable
    return (HEADER.pack(36 + len(body), request_id, response_to, OP_REPLY)
            + struct.pack("<iqii", flags, 0, 0, 1) + body)


def reply_body(data: bytes) -> tuple[int, int]:
    """``(start, end)`` of the body document of an upstream OP_MSG reply."""
    length, _req, _resp, opcode, _flags = _MSG_PREFIX.unpack_from(data)
    if opcode != OP_MSG:
        raise ProtocolError(f"upstream answered with opcode {opcode}")
    if data[20] != 0:
        raise ProtocolError("upstream reply does not start with a body section")
    size = bsonraw.i32(data, 21)[0]
    if 21 + size > length:
        raise ProtocolError("upstream reply body runs past the message")
    return 21, 21 + size
