"""Server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677), shared by every front door.

The control plane stores only *verifiers* in PostgreSQL's format
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``: a stolen store does not give
out passwords, and the Postgres and MongoDB front doors run the same exchange against it.
Front doors that receive a plain password (Redis ``AUTH``) check it with
``verify_password``; callers should cache positive results, since PBKDF2 is slow on purpose.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stringprep
import unicodedata

import attrs

DEFAULT_ITERATIONS = 4096
MECHANISM = "SCRAM-SHA-256"


class ScramError(Exception):
    """The exchange failed; ``str(exc)`` is safe to log, never to show the client details."""


@attrs.frozen
class Verifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __str__(self) -> str:
        b64 = base64.b64encode
        return (f"{MECHANISM}${self.iterations}:{b64(self.salt).decode()}$"
                f"{b64(self.stored_key).decode()}:{b64(self.server_key).decode()}")


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep (stored strings profile), as PostgreSQL and MongoDB apply it."""
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c
        for c in text if not stringprep.in_table_b1(c)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return normalized
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
        stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
        stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
    )
    for c in normalized:
        if any(check(c) for check in prohibited):
            raise ValueError("password contains a character SASLprep prohibits")
    if any(stringprep.in_table_d1(c) for c in normalized):
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise ValueError("password has invalid bidirectional text")
        if any(stringprep.in_table_d2(c) for c in normalized):
            raise ValueError("password mixes bidirectional categories")
    return normalized


def _prep(password: str) -> bytes:
    try:
        return saslprep(password).encode()
    except ValueError:
        return password.encode()  # PostgreSQL falls back to the raw bytes too


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", _prep(password), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key")


def make_verifier(password: str, *, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> Verifier:
    salt = salt if salt is not None else os.urandom(16)
    stored, server = _keys(password, salt, iterations)
    return Verifier(iterations, salt, stored, server)


def parse_verifier(text: str) -> Verifier:
    try:
        mech, params, keys = text.split("$")
        iterations, salt = params.split(":")
        stored, server = keys.split(":")
        if mech != MECHANISM:
            raise ValueError(mech)
        return Verifier(int(iterations), base64.b64decode(salt), base64.b64decode(stored),
                        base64.b64decode(server))
    except ValueError as exc:
        raise ValueError("not a SCRAM-SHA-256 verifier") from exc


def verify_password(verifier: Verifier | str, password: str) -> bool:
    v = parse_verifier(verifier) if isinstance(verifier, str) else verifier
    stored, _ = _keys(password, v.salt, v.iterations)
    return hmac.compare_digest(stored, v.stored_key)


def mock_verifier(name: str, secret: bytes) -> Verifier:
    """A stable, unguessable verifier for unknown users, so the exchange looks the same."""
    salt = _hmac(secret, b"salt:" + name.encode())[:16]
    junk = _hmac(secret, b"keys:" + name.encode())
    return Verifier(DEFAULT_ITERATIONS, salt, junk, junk)


def _attrs(message: str) -> dict[str, str]:
    out = {}
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ScramError(f"malformed SCRAM attribute {part[:10]!r}")
        out[part[0]] = part[2:]
    return out


class ScramServer:
    """One SCRAM-SHA-256 exchange: ``first()`` then ``final()``.

    ``channel_binding`` is the ``tls-server-end-point`` data when the server offered
    SCRAM-SHA-256-PLUS over TLS, otherwise None.
    """

    def __init__(self, verifier: Verifier | str, *, channel_binding: bytes | None = None):
        self.verifier = parse_verifier(verifier) if isinstance(verifier, str) else verifier
        self.channel_binding = channel_binding
        self.username = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._gs2 = ""

    def first(self, client_first: bytes | str) -> str:
        msg = client_first.decode() if isinstance(client_first, bytes) else client_first
        parts = msg.split(",", 2)
        if len(parts) != 3:
            raise ScramError("malformed client-first-message")
        cb_flag, authzid, bare = parts
        if cb_flag.startswith("p="):
            if self.channel_binding is None:
                raise ScramError("client requires channel binding that was not offered")
        elif cb_flag not in ("n", "y"):
            raise ScramError("malformed channel binding flag")
        if authzid and not authzid.startswith("a="):
            raise ScramError("malformed authzid")
        self._gs2 = f"{cb_flag},{authzid},"
        fields = _attrs(bare)
        if "r" not in fields or "m" in fields:
            raise ScramError("client-first-message lacks a nonce or uses extensions")
        self.username = fields.get("n", "").replace("=2C", ",").replace("=3D", "=")
        self._client_first_bare = bare
        self._nonce = fields["r"] + base64.b64encode(secrets.token_bytes(18)).decode()
        salt = base64.b64encode(self.verifier.salt).decode()
        self._server_first = f"r={self._nonce},s={salt},i={self.verifier.iterations}"
        return self._server_first

    def final(self, client_final: bytes | str) -> str:
        """Check the client's proof; return server-final-message or raise ``ScramError``."""
        msg = client_final.decode() if isinstance(client_final, bytes) else client_final
        without_proof, sep, proof_part = msg.rpartition(",p=")
        if not sep:
            raise ScramError("client-final-message lacks a proof")
        fields = _attrs(without_proof)
        expected_cb = self._gs2.encode()
        if self._gs2.startswith("p="):
            expected_cb += self.channel_binding or b""
        try:
            cb = base64.b64decode(fields.get("c", ""), validate=True)
            proof = base64.b64decode(proof_part, validate=True)
        except ValueError as exc:
            raise ScramError("malformed base64 in client-final-message") from exc
        if not hmac.compare_digest(cb, expected_cb):
            raise ScramError("channel binding mismatch")
        if fields.get("r") != self._nonce:
            raise ScramError("nonce mismatch")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_signature = _hmac(self.verifier.stored_key, auth_message)
        if len(proof) != len(client_signature):
            raise ScramError("wrong proof length")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.verifier.stored_key):
            raise ScramError("wrong password")
        server_signature = _hmac(self.verifier.server_key, auth_message)
        return "v=" + base64.b64encode(server_signature).decode()
