"""Who calls the admin API: the operator (``[gateway] admin_token``) or one tenant.

A tenant signs in with its own credentials (``POST /admin/login``) and gets a bearer token
``ogk_t.<tenant>.<expiry>.<signature>`` limited to that tenant. The token is stateless: an
HMAC over the tenant, the expiry and a fingerprint of the tenant's current password
verifier, keyed from ``[control] secret_key``, so rotating the password (or the key)
revokes every token at once, and nothing needs storing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import attrs

PREFIX = "ogk_t"
#: Seconds a tenant token is valid.
TENANT_TOKEN_TTL = 12 * 3600


@attrs.frozen
class Principal:
    """``tenant`` is None for the operator (and for an anonymous caller of a public
    endpoint, which may see nothing)."""

    tenant: str | None
    anonymous: bool = False

    @property
    def operator(self) -> bool:
        return self.tenant is None and not self.anonymous

    def may_see(self, slug: str) -> bool:
        return self.operator or self.tenant == slug


OPERATOR = Principal(None)
ANONYMOUS = Principal(None, anonymous=True)


def _key(secret_key: str) -> bytes:
    return hashlib.sha256(b"ogelkit admin tenant tokens\0" + secret_key.encode()).digest()


def _fingerprint(verifier: str) -> bytes:
    return hashlib.sha256(verifier.encode()).digest()[:16]


def _sign(secret_key: str, slug: str, expires: int, verifier: str) -> str:
    mac = hmac.digest(_key(secret_key), f"{slug}.{expires}.".encode() + _fingerprint(verifier),
                      hashlib.sha256)
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def issue(secret_key: str, slug: str, verifier: str, *, ttl: int = TENANT_TOKEN_TTL,
          now: float | None = None) -> tuple[str, int]:
    """(token, expiry as a Unix time) for tenant ``slug`` with password ``verifier``."""
    expires = int((time.time() if now is None else now) + ttl)
    return f"{PREFIX}.{slug}.{expires}.{_sign(secret_key, slug, expires, verifier)}", expires


def parse(token: str) -> tuple[str, int, str] | None:
    """(tenant, expiry, signature) of a token's shape, or None."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2]), parts[3]


def valid(secret_key: str, token: str, verifier: str | None, *,
          now: float | None = None) -> bool:
    parsed = parse(token)
    if parsed is None or verifier is None:
        return False
    slug, expires, sig = parsed
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(sig.encode(), _sign(secret_key, slug, expires, verifier).encode())
