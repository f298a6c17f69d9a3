"""Client side of SCRAM-SHA-256, used to log in to the upstream server with a tenant role.

PBKDF2 is slow on purpose (4096 rounds by default). The salted password depends only on
(password, salt, iterations), which stay the same for a role, so it is computed once and
cached: opening the tenth pooled connection costs no PBKDF2 at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

from ogelkit.scram import saslprep


class ScramClientError(Exception):
    pass


@lru_cache(maxsize=256)
def _salted(password: str, salt: bytes, iterations: int) -> bytes:
    try:
        prepared = saslprep(password).encode()
    except ValueError:
        prepared = password.encode()
    return hashlib.pbkdf2_hmac("sha256", prepared, salt, iterations)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


class ScramClient:
    MECHANISM = "SCRAM-SHA-256"

    def __init__(self, password: str):
        self.password = password
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        nonce, salt, iterations = fields.get("r", ""), fields.get("s"), fields.get("i")
        if not nonce.startswith(self.nonce) or salt is None or iterations is None:
            raise ScramClientError("malformed server-first-message")
        salted = _salted(self.password, base64.b64decode(salt), int(iterations))
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        text = server_final.decode()
        if not text.startswith("v="):
            raise ScramClientError(f"server rejected SCRAM: {text}")
        if not hmac.compare_digest(base64.b64decode(text[2:]), self._server_signature):
            raise ScramClientError("upstream server signature does not match")
