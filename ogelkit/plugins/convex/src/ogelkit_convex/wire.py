"""Sync protocol helpers (convex-js ``protocol.ts``): versions, timestamps, messages the
gateway writes itself, udfPath normalisation and the platform token format."""

from __future__ import annotations

import base64
import json
import secrets
import struct
from typing import Any

#: A new client's version before any Transition: ``{querySet: 0, identity: 0, ts: 0}``.
ZERO_TS = base64.b64encode(struct.pack("<Q", 0)).decode()
TOKEN_PREFIX = "ogk_cvx"


def initial_version() -> dict[str, Any]:
    return {"querySet": 0, "identity": 0, "ts": ZERO_TS}


def decode_ts(ts: str) -> int:
    return struct.unpack("<Q", base64.b64decode(ts))[0]


def canonical(path: str) -> str:
    """``messages.js:list`` and ``messages:list`` name one function; ``messages`` is
    ``messages:default``."""
    module, _, fn = path.partition(":")
    if module.endswith(".js"):
        module = module[:-3]
    return f"{module}:{fn or 'default'}"


def dumps(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"))


def new_token(tenant: str, database: str) -> str:
    """``ogk_cvx.<tenant>.<database>.<secret>``: names its database, so a client that cannot
    use host routing (the Python ConvexClient drops URL paths) is routed by token."""
    return f"{TOKEN_PREFIX}.{tenant}.{database}.{secrets.token_urlsafe(24)}"


def token_target(token: str) -> tuple[str, str] | None:
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_PREFIX:
        return None
    return parts[1], parts[2]


def host_target(host: str, domain: str) -> tuple[str, str] | None:
    """``main--acme.convex.example.com[:port]`` -> ("acme", "main") for domain
    ``convex.example.com``; None for any other host."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower().rstrip(".")
    suffix = "." + domain.lower().strip(".")
    if not name.endswith(suffix):
        return None
    label = name[: -len(suffix)]
    db, sep, tenant = label.partition("--")
    if not sep or not db or not tenant or "." in label:
        return None
    return tenant, db


def http_to_ws(url: str) -> str:
    """The deployment's sync URL: like the Rust and Python clients, any path is dropped."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    return f"{'wss' if scheme == 'https' else 'ws'}://{host}/api/sync"
