"""Encryption at rest for upstream credentials (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from the environment through ``[control] secret_key = "${OGELKIT_SECRET_KEY}"``.
Generate one with ``ogelkit secret-key``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken


class SecretKeyError(ValueError):
    pass


def check_key(key: str) -> None:
    try:
        raw = base64.urlsafe_b64decode(key.encode())
    except (binascii.Error, ValueError) as exc:
        raise SecretKeyError("not url-safe base64") from exc
    if len(raw) != 32:
        raise SecretKeyError(f"decodes to {len(raw)} bytes, a Fernet key has 32")


def generate_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    def __init__(self, key: str):
        check_key(key)
        self._fernet = Fernet(key.encode())

    def seal(self, data: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(data, sort_keys=True).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as exc:
            raise SecretKeyError("cannot decrypt upstream details: wrong secret_key?") from exc
