"""MongoDB error documents: the one ``Reason`` -> error code table and the gateway's own
refusals (docs/dev/frontdoors.md has the table for every protocol)."""

from __future__ import annotations

from typing import Any

from ogelkit import Reason, Reject

AUTHENTICATION_FAILED = (18, "AuthenticationFailed")
UNAUTHORIZED = (13, "Unauthorized")
MAX_TIME_EXPIRED = (50, "MaxTimeMSExpired")
HOST_UNREACHABLE = (6, "HostUnreachable")
SHUTDOWN = (91, "ShutdownInProgress")
FAILED_TO_PARSE = (9, "FailedToParse")
BAD_VALUE = (2, "BadValue")
TYPE_MISMATCH = (14, "TypeMismatch")
PROTOCOL_ERROR = (17, "ProtocolError")
CURSOR_NOT_FOUND = (43, "CursorNotFound")
COMMAND_NOT_FOUND = (59, "CommandNotFound")
INVALID_NAMESPACE = (73, "InvalidNamespace")
MESSAGE_TOO_LARGE = (10334, "BSONObjectTooLarge")
INTERNAL_ERROR = (1, "InternalError")
EXCEEDED_MEMORY_LIMIT = (146, "ExceededMemoryLimit")

#: Every ``ogelkit.Reason`` and the MongoDB error it is answered with (one table, used by the
#: connection and by the FrontDoorContract).
BY_REASON: dict[Reason, tuple[int, str]] = {
    Reason.AUTH: AUTHENTICATION_FAILED,
    Reason.UNKNOWN: UNAUTHORIZED,
    Reason.SUSPENDED: UNAUTHORIZED,
    Reason.BANNED: UNAUTHORIZED,
    Reason.CONNECTIONS: UNAUTHORIZED,
    Reason.RATE: UNAUTHORIZED,
    Reason.COST: UNAUTHORIZED,
    Reason.TIMEOUT: MAX_TIME_EXPIRED,
    # MongoDB has no quota code (14 is TypeMismatch): 13 with reason "quota" in the document.
    Reason.QUOTA: UNAUTHORIZED,
    Reason.MEMORY: EXCEEDED_MEMORY_LIMIT,
    Reason.FORBIDDEN: UNAUTHORIZED,
    Reason.UNAVAILABLE: HOST_UNREACHABLE,
    Reason.SHUTDOWN: SHUTDOWN,
}


def error_doc(code: tuple[int, str], message: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"ok": 0.0, "errmsg": message, "code": code[0], "codeName": code[1]}
    doc.update({k: v for k, v in extra.items() if v is not None})
    return doc


def reject_doc(rej: Reject) -> dict[str, Any]:
    """The error document for a ``Reject``: message with detail and hint appended (drivers
    show only ``errmsg``), plus the parts as separate fields for programs."""
    code = BY_REASON.get(rej.reason, UNAUTHORIZED)
    text = rej.message
    if rej.detail:
        text = f"{text.rstrip('.')} ({rej.detail.rstrip('.')})"
    if rej.hint:
        text = f"{text.rstrip('.')}. {rej.hint}"
    retry_ms = int(rej.retry_after * 1000) if rej.retry_after is not None else None
    return error_doc(code, text, reason=str(rej.reason), detail=rej.detail, hint=rej.hint,
                     retryAfterMS=retry_ms, layer=rej.layer)


def encode_reject(rej: Reject) -> str:
    """What a client is told for ``rej`` (the contract checks every reason maps)."""
    doc = reject_doc(rej)
    return f"{doc['code']} {doc['codeName']}: {doc['errmsg']}"
