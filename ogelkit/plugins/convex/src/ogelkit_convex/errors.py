"""Every ``ogelkit.Reason`` as the sync protocol and the HTTP API answer it, in one table."""

from __future__ import annotations

import math
from typing import Any

from ogelkit import Reason, Reject

#: reason -> (HTTP status, Convex-style error code, sync message type for a login refusal)
TABLE: dict[str, tuple[int, str, str]] = {
    Reason.AUTH: (401, "Unauthenticated", "AuthError"),
    Reason.UNKNOWN: (401, "Unauthenticated", "AuthError"),
    Reason.SUSPENDED: (403, "TenantSuspended", "FatalError"),
    Reason.BANNED: (429, "Banned", "FatalError"),
    Reason.CONNECTIONS: (429, "TooManyConnections", "FatalError"),
    Reason.RATE: (429, "RateLimited", "FatalError"),
    Reason.COST: (403, "CostCeiling", "FatalError"),
    Reason.TIMEOUT: (504, "GatewayTimeout", "FatalError"),
    Reason.QUOTA: (507, "QuotaExceeded", "FatalError"),
    Reason.MEMORY: (503, "OutOfMemory", "FatalError"),
    Reason.FORBIDDEN: (403, "Forbidden", "FatalError"),
    Reason.UNAVAILABLE: (503, "Unavailable", "FatalError"),
    Reason.SHUTDOWN: (503, "Shutdown", "FatalError"),
}


def http_status(reject: Reject) -> int:
    return TABLE.get(reject.reason, (503, "", ""))[0]


def error_data(reject: Reject, tier: str | None) -> dict[str, Any]:
    """``errorData`` of a refused call (ConvexError.data on the client)."""
    data: dict[str, Any] = {"gateway": "ogelkit", "reason": str(reject.reason),
                            "message": reject.message, "tier": tier}
    if reject.detail:
        data["detail"] = reject.detail
    if reject.hint:
        data["hint"] = reject.hint
    if reject.retry_after is not None:
        data["retryAfter"] = float(reject.retry_after)
    return data


def http_error(reject: Reject, tier: Any = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, body, headers) of an HTTP refusal: ``{code, message}`` like Convex's own
    infrastructure errors, plus the gateway's details; 429s carry Retry-After and
    RateLimit headers."""
    status, code, _ = TABLE.get(reject.reason, (503, "Unavailable", ""))
    tier_name = getattr(tier, "name", None)
    body: dict[str, Any] = {"code": code, "message": reject.message,
                            **error_data(reject, tier_name)}
    headers: dict[str, str] = {}
    if status == 401:
        headers["www-authenticate"] = 'Bearer realm="ogelkit"'
    if reject.retry_after is not None or status == 429:
        retry = max(1, math.ceil(reject.retry_after or 1.0))
        headers["retry-after"] = str(retry)
        limit = getattr(tier, "ops_per_second", None)
        if limit:
            headers["ratelimit-policy"] = f"{limit:g};w=1"
            headers["ratelimit"] = f"limit={limit:g}, remaining=0, reset={retry}"
        else:
            headers["ratelimit"] = f"remaining=0, reset={retry}"
    return status, body, headers


def login_refusal(reject: Reject, base_version: int = 0) -> dict[str, Any]:
    """The sync message that refuses a socket's login: AuthError for credentials,
    FatalError for everything else (both make the client restart the protocol)."""
    kind = TABLE.get(reject.reason, (0, "", "FatalError"))[2]
    text = reject.message if not reject.hint else f"{reject.message} ({reject.hint})"
    if kind == "AuthError":
        return {"type": "AuthError", "error": text, "baseVersion": base_version}
    return {"type": "FatalError", "error": f"{reject.reason}: {text}"}
