"""Raw-socket helpers for tests and the fuzzer: build OP_MSG/OP_QUERY frames, read replies,
log in with SCRAM-SHA-256 by hand, and mutate frames (``bench/fuzz_mongodb.py``).

Not used by the gateway itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import socket
import struct
from typing import Any

import bson

from ogelkit.scram import saslprep

OP_QUERY = 2004
OP_MSG = 2013


def op_msg(doc: dict[str, Any], request_id: int = 1, flags: int = 0,
           sequences: list[tuple[str, list[dict[str, Any]]]] | None = None) -> bytes:
    """One OP_MSG with ``doc`` as its body and optional document sequences."""
    body = b"\x00" + bson.encode(doc)
    for ident, docs in sequences or []:
        payload = ident.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
        body += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
    return struct.pack("<iiiiI", 20 + len(body), request_id, 0, OP_MSG, flags) + body


def op_query(doc: dict[str, Any], collection: str = "admin.$cmd", request_id: int = 1) -> bytes:
    raw = bson.encode(doc)
    rest = struct.pack("<i", 0) + collection.encode() + b"\x00" + struct.pack("<ii", 0, -1) + raw
    return struct.pack("<iiii", 16 + len(rest), request_id, 0, OP_QUERY) + rest


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return out


def read_reply(sock: socket.socket) -> dict[str, Any] | None:
    """The next reply document, or None when the gateway closed the connection."""
    try:
        head = recv_exact(sock, 16)
        if head is None:
            return None
        length, _req, _resp, opcode = struct.unpack("<iiii", head)
        rest = recv_exact(sock, length - 16)
    except ConnectionResetError:
        return None
    if rest is None:
        return None
    if opcode == 1:  # OP_REPLY
        return bson.decode(rest[20:])
    return bson.decode(rest[5:])


def scram_login(sock: socket.socket, user: str, password: str, db: str = "admin") -> dict[str, Any]:
    """SCRAM-SHA-256 through saslStart/saslContinue on a raw socket; the last reply."""
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={nonce}"
    sock.sendall(op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256",
                         "payload": f"n,,{first_bare}".encode(),
                         "options": {"skipEmptyExchange": True}, "$db": db}))
    reply = read_reply(sock)
    if reply is None or not reply.get("ok"):
        return reply or {"ok": 0, "errmsg": "closed"}
    server_first = bytes(reply["payload"]).decode()
    fields = dict(kv.split("=", 1) for kv in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(),
                                 base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth_msg = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(stored, auth_msg, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    sock.sendall(op_msg({"saslContinue": 1, "conversationId": 1,
                         "payload": f"{without_proof},p={proof.decode()}".encode(), "$db": db},
                        request_id=2))
    return read_reply(sock) or {"ok": 0, "errmsg": "closed"}


# -- mutation ------------------------------------------------------------------------------------

_INTERESTING = (0, 1, -1, 4, 5, 15, 16, 17, 20, 21, 0x7F, 0xFF, 0x7FFFFFFF, -0x80000000,
                65536, 65537, 48_000_000)


def seeds(db: str = "main") -> list[bytes]:
    """Valid frames covering every path the door parses (handshake, SASL, planning)."""
    spec = {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": b"n,,n=x,r=abc", "db": db}
    return [
        op_msg({"hello": 1, "helloOk": True, "$db": "admin"}),
        op_msg({"hello": 1, "speculativeAuthenticate": spec, "saslSupportedMechs": "admin.x",
                "$db": "admin"}),
        op_query({"isMaster": 1, "helloOk": True}),
        op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": b"n,,n=fz,r=0123",
                "$db": db}),
        op_msg({"saslContinue": 1, "conversationId": 1, "payload": b"c=biws,r=x,p=AAAA",
                "$db": db}),
        op_msg({"ping": 1, "$db": "admin"}),
        op_msg({"buildInfo": 1, "$db": "admin"}),
        op_msg({"connectionStatus": 1, "$db": db}),
        op_msg({"find": "c", "filter": {"a": 1}, "limit": 2, "$db": db}),
        op_msg({"insert": "c", "$db": db}, sequences=[("documents", [{"a": 1}, {"b": "x"}])]),
        op_msg({"update": "c", "updates": [{"q": {}, "u": {"$set": {"z": 1}}}], "$db": db}),
        op_msg({"delete": "c", "deletes": [{"q": {"nothing": 1}, "limit": 0}], "$db": db}),
        op_msg({"getMore": bson.Int64(12345), "collection": "c", "$db": db}),
        op_msg({"killCursors": "c", "cursors": [bson.Int64(1), bson.Int64(2)], "$db": db}),
        op_msg({"explain": {"find": "c", "filter": {}}, "verbosity": "queryPlanner", "$db": db}),
        op_msg({"explain": {"aggregate": "c", "pipeline": [{"$match": {}}], "cursor": {}},
                "$db": db}),
        op_msg({"aggregate": "c", "pipeline": [{"$match": {}}, {"$lookup": {
            "from": {"db": db, "coll": "d"}, "as": "j", "pipeline": []}}], "cursor": {},
                "$db": db}),
        op_msg({"listDatabases": 1, "filter": {"name": {"$regex": "m"}}, "$db": "admin"}),
        op_msg({"renameCollection": f"{db}.a", "to": f"{db}.b", "$db": "admin"}),
        op_msg({"dataSize": f"{db}.c", "$db": db}),
        op_msg({"count": "c", "query": {}, "maxTimeMS": 1000, "$db": db}),
        op_msg({"listCollections": 1, "$db": db}),
    ]


def mutate(frame: bytes, rng: random.Random) -> bytes:
    """One random mutation of ``frame`` (the length field is kept right most of the time, so
    the mutation reaches the parsers instead of only the framing)."""
    data = bytearray(frame)
    if len(data) < 24:
        data += bytes(24 - len(data))
    choice = rng.randrange(10)
    if choice == 0:  # flip bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif choice == 1:  # random bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 2:  # an interesting int32 anywhere past the header
        i = rng.randrange(16, len(data) - 3)
        data[i:i + 4] = struct.pack("<i", rng.choice(_INTERESTING))
    elif choice == 3:  # truncate
        data = data[:rng.randrange(16, len(data) + 1)]
    elif choice == 4:  # insert junk
        i = rng.randrange(16, len(data) + 1)
        data[i:i] = rng.randbytes(rng.randint(1, 16))
    elif choice == 5:  # a BSON type byte changed
        i = rng.randrange(21, len(data))
        data[i] = rng.choice((0x01, 0x02, 0x03, 0x04, 0x05, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C,
                             0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x7F, 0xFF, 0x00, 0x42))
    elif choice == 6:  # a lying outer length (framing)
        data[0:4] = struct.pack("<i", rng.choice(_INTERESTING))
        return bytes(data)
    elif choice == 7:  # flags
        data[16:20] = struct.pack("<I", rng.choice((0, 1, 2, 3, 1 << 5, 1 << 16, 0xFFFFFFFF)))
    elif choice == 8:  # opcode
        data[12:16] = struct.pack("<i", rng.choice((1, 2004, 2012, 2013, 2010, 0, -1)))
    else:  # wholly random frame with a right header
        body = rng.randbytes(rng.randint(0, 64))
        return struct.pack("<iiii", 16 + len(body), 1, 0, rng.choice((2013, 2004))) + body
    if rng.random() < 0.9:
        data[0:4] = struct.pack("<i", len(data))
    return bytes(data)


# -- the socket-level fuzzer (bench/fuzz_mongodb.py, and a CI-sized run in the tests) --------

MORE_TO_COME = 2
PRE_AUTH_LIMIT = 64 * 1024


class FuzzReport:
    """What a fuzz run saw. ``exceptions`` is filled by the caller, who watches the gateway
    (asyncio's exception handler, error log records)."""

    def __init__(self) -> None:
        self.frames = 0
        self.replies = 0
        self.closes = 0
        self.hangs: list[str] = []  # hex of frames a complete message got no answer for
        self.canary_ops = 0
        self.canary_failures: list[str] = []
        self.exceptions: list[Any] = []
        self.logins = 0
        self.seconds = 0.0

    def summary(self) -> str:
        rate = self.frames / self.seconds if self.seconds else 0.0
        return (f"frames tried {self.frames} ({rate:.0f}/s, {self.seconds:.1f} s), replies "
                f"{self.replies}, connections closed by the gateway {self.closes}, logins "
                f"{self.logins}; gateway exceptions {len(self.exceptions)}, hangs "
                f"{len(self.hangs)}, canary ops {self.canary_ops}, canary failures "
                f"{len(self.canary_failures)}")


def _expects_answer(frame: bytes, authenticated: bool) -> str:
    """``"answer"``: a complete message the gateway must answer or close on; ``"once"``: the
    same, but bytes follow it that desynchronise the framing (read one reply, then hang up);
    ``"wait"``: the gateway may legitimately wait (a partial message, moreToCome)."""
    if len(frame) < 16:
        return "wait"
    length, _req, _resp, opcode = struct.unpack_from("<iiii", frame)
    limit = 48_000_000 if authenticated else PRE_AUTH_LIMIT
    if length < 16 or length > limit:
        return "answer"
    if length > len(frame):
        return "wait"
    if opcode == OP_MSG and length >= 20 and struct.unpack_from("<I", frame, 16)[0] & MORE_TO_COME:
        return "wait"  # no reply by design (or an error and a close: not waited for)
    return "answer" if length == len(frame) else "once"


def fuzz(port: int, user: str, password: str, *, frames: int, seed: int = 1,
         db: str = "main", canary: Any = None, canary_every: int = 25,
         reply_timeout: float = 5.0, host: str = "127.0.0.1") -> FuzzReport:
    """Throw ``frames`` mutated frames at the gateway on ``port``, half of them on
    connections authenticated as ``user``; run ``canary()`` (a client of another tenant that
    raises on any problem) every ``canary_every`` frames."""
    import time

    rng = random.Random(seed)
    corpus = seeds(db)
    report = FuzzReport()
    started = time.monotonic()
    sock: socket.socket | None = None
    authenticated = False
    try:
        for i in range(frames):
            if sock is None:
                sock = socket.create_connection((host, port), timeout=reply_timeout)
                authenticated = False
                if rng.random() < 0.5:
                    login = scram_login(sock, user, password, db)
                    if not login.get("ok"):
                        raise RuntimeError(f"the fuzzer's own login failed: {login}")
                    authenticated = True
                    report.logins += 1
            frame = rng.choice(corpus)
            for _ in range(rng.choice((1, 1, 2, 3))):
                frame = mutate(frame, rng)
            report.frames += 1
            expect = _expects_answer(frame, authenticated)
            try:
                sock.sendall(frame)
                if expect == "wait":
                    sock.close()
                    sock = None
                else:
                    try:
                        reply = read_reply(sock)
                    except TimeoutError:
                        report.hangs.append(frame[:200].hex())
                        reply = None
                    except Exception:  # a reply the fuzzer cannot decode is the gateway's
                        reply = {}    # business only if it is not BSON: count it answered
                    if reply is None:
                        report.closes += 1
                        sock.close()
                        sock = None
                    else:
                        report.replies += 1
                        if expect == "once":
                            sock.close()
                            sock = None
            except (BrokenPipeError, ConnectionResetError):
                report.closes += 1
                if sock is not None:
                    sock.close()
                sock = None
            if canary is not None and i % canary_every == 0:
                report.canary_ops += 1
                try:
                    canary()
                except Exception as exc:
                    report.canary_failures.append(f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if sock is not None:
            sock.close()
        report.seconds = time.monotonic() - started
    return report
