"""``Reject`` -> ErrorResponse: the pinned SQLSTATE of every refusal reason."""

from __future__ import annotations

from ogelkit import Reason, Reject
from ogelkit_postgres import wire as pg

SQLSTATE = {
    Reason.AUTH: "28P01",
    Reason.UNKNOWN: "3D000",
    Reason.SUSPENDED: "57P03",
    Reason.BANNED: "53400",
    Reason.CONNECTIONS: "53300",
    Reason.RATE: "53400",
    Reason.COST: "54001",
    Reason.TIMEOUT: "57014",
    Reason.QUOTA: "53100",
    Reason.MEMORY: "53200",  # out_of_memory
    Reason.FORBIDDEN: "42501",
    Reason.UNAVAILABLE: "08006",
    Reason.SHUTDOWN: "57P01",
}

PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"
FEATURE_NOT_SUPPORTED = "0A000"
TOO_MANY_CONNECTIONS = "53300"


def reject_error(reject: Reject, *, fatal: bool = False) -> bytes:
    """The ErrorResponse for a refusal, keeping message, DETAIL and HINT."""
    hint = reject.hint
    if hint is None and reject.retry_after is not None:
        hint = f"Retry after {max(1, round(reject.retry_after * 1000))} ms."
    # A Reject may name its own SQLSTATE (the lifecycle's NotReady: 57P03).
    code = getattr(reject, "sqlstate", None) or SQLSTATE.get(reject.reason, "XX000")
    return pg.error_response(code, reject.message,
                             severity="FATAL" if fatal else "ERROR", detail=reject.detail,
                             hint=hint)
