"""``Reject`` -> RESP error reply: the one table of the Redis door (docs/dev/frontdoors.md).

A RESP error is ``-<CODE> <message>``; clients dispatch on the code (redis-py raises
``AuthenticationError`` for ``WRONGPASS``, ``OutOfMemoryError`` for ``OOM``, ...). A
``Reject`` whose message already starts with an upper-case code word (``"OOM command not
allowed ..."``, ``"ERR max number of clients reached"``) keeps that code.
"""

from __future__ import annotations

from ogelkit import Reason, Reject
from ogelkit_redis import wire

#: The RESP error code of every refusal reason.
CODES: dict[Reason, str] = {
    Reason.AUTH: "WRONGPASS",
    Reason.UNKNOWN: "ERR",
    Reason.SUSPENDED: "ERR",
    Reason.BANNED: "ERR",
    Reason.CONNECTIONS: "ERR",
    Reason.RATE: "ERR",
    Reason.COST: "ERR",
    Reason.TIMEOUT: "TIMEOUT",
    Reason.QUOTA: "OOM",
    Reason.MEMORY: "OOM",
    Reason.FORBIDDEN: "ERR",
    Reason.UNAVAILABLE: "ERR",
    Reason.SHUTDOWN: "ERR",
}

#: Redis's own answer to a bad AUTH, for a wrong password and an unknown tenant alike.
WRONGPASS_MESSAGE = "invalid username-password pair or user is disabled."
WRONGPASS = b"-WRONGPASS " + WRONGPASS_MESSAGE.encode() + b"\r\n"
NOAUTH = b"-NOAUTH Authentication required.\r\n"
#: AUTH on an authenticated connection naming another tenant or database (whether it exists
#: or not: the answer needs no lookup, so it tells nothing about other tenants).
NO_SWITCH = wire.error("ERR the gateway does not switch tenant or database on an open "
                       "connection; open a new connection")


def reject_error(rej: Reject) -> bytes:
    """A ``Reject`` as a RESP error reply, keeping message, detail, hint and retry_after."""
    code = CODES.get(rej.reason, "ERR")
    message = rej.message
    head = message.split(" ", 1)[0]
    if head.isupper() and head.isalpha():
        code, message = head, message[len(head):].lstrip()
    text = f"{code} {message}"
    if rej.detail:
        text += f" ({rej.detail})"
    if rej.hint:
        text += f". {rej.hint}"
    elif rej.retry_after is not None:
        text += f". Retry after {round(rej.retry_after * 1000)} ms."
    return wire.error(text)


def protocol_error(message: str) -> bytes:
    """Malformed input (``-ERR Protocol error: ...``, as Redis says it); the client is
    closed after it."""
    return wire.error(f"ERR Protocol error: {message}")


__all__ = ["CODES", "NOAUTH", "NO_SWITCH", "WRONGPASS", "WRONGPASS_MESSAGE", "protocol_error",
           "reject_error"]
