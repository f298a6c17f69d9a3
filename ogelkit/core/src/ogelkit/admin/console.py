"""Studio's console: one command run as a tenant, through the gateway's layers.

A console request is a session of its own, made with the same ``Login`` steps as a
client's connection (tenant lookup, suspension, the chain's connect phase, waking a sleeping
database, registration), with protocol ``studio``, and one ``Operation`` the layers admit,
time out, meter and log like any other. Only the wire is skipped: the backend runs the
command upstream itself (``Backend.console``).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

from ogelkit.admin.problems import Problem
from ogelkit.backend import Capability
from ogelkit.frontdoor import FrontDoor
from ogelkit.model import Operation, Reason, Reject, Session

if TYPE_CHECKING:
    from ogelkit.context import GatewayContext
    from ogelkit.control.records import DatabaseRecord, TenantRecord

#: reason -> HTTP status of a console refusal
STATUS = {Reason.RATE: 429, Reason.CONNECTIONS: 429, Reason.BANNED: 429, Reason.COST: 403,
          Reason.SUSPENDED: 403, Reason.FORBIDDEN: 403, Reason.TIMEOUT: 504,
          Reason.QUOTA: 507, Reason.UNAVAILABLE: 503, Reason.SHUTDOWN: 503,
          Reason.UNKNOWN: 404, Reason.AUTH: 401}
MAX_ROWS = 1000


class StudioDoor(FrontDoor):
    """The console's sessions: counted under protocol ``studio``; binds no port."""

    protocol = "studio"

    async def start(self) -> list[tuple[str, int]]:
        return []


def _door(ctx: GatewayContext) -> StudioDoor:
    door = getattr(ctx, "_studio_door", None)
    if door is None:
        door = StudioDoor(ctx, host="", port=0, backends=list(ctx.backends.values()))
        ctx._studio_door = door  # type: ignore[attr-defined]
    return door


def refusal(rej: Reject, session: Session) -> Problem:
    tier = session.tier.name if session.tier is not None else None
    extra: dict[str, Any] = {"reason": str(rej.reason), "layer": rej.layer, "tier": tier}
    if rej.hint:
        extra["hint"] = rej.hint
    headers = None
    if rej.retry_after is not None:
        extra["retry_after"] = rej.retry_after
        headers = {"retry-after": str(max(1, math.ceil(rej.retry_after)))}
    return Problem(STATUS.get(rej.reason, 503), "refused", rej.message, headers=headers,
                   **extra)


async def run_console(ctx: GatewayContext, tenant: TenantRecord, db: DatabaseRecord,
                      backend: Any, request: dict[str, Any]) -> dict[str, Any]:
    if Capability.CONSOLE not in backend.capabilities:
        raise Problem(400, "unsupported", f"{backend.kind} databases have no console")
    try:
        kind, name, text = backend.console_operation(request)
    except ValueError as exc:
        raise Problem(400, "bad_request", str(exc)) from None
    door = _door(ctx)
    session = Session("studio", "studio", tenant.slug)
    login = door.login(session)
    try:
        try:
            entry = await login.lookup(tenant.slug)
            if entry is None:
                raise Problem(404, "not_found", f'no tenant "{tenant.slug}"')
            login.use(db, backend)
            await login.admit(lambda _rej: None)
        except Reject as rej:
            raise refusal(rej, session) from None
        op = Operation(session, kind, name, text, len(text.encode()))
        chain = ctx.chain
        if chain is not None:
            refused = await chain.try_admit(op)
            if refused is not None:
                chain.complete(op)
                raise refusal(refused, session)
        return await _execute(ctx, backend, db, request, session, op)
    finally:
        login.end()


async def _execute(ctx: GatewayContext, backend: Any, db: DatabaseRecord,
                   request: dict[str, Any], session: Session, op: Operation) -> dict[str, Any]:
    task = asyncio.ensure_future(backend.console(db, request, session))
    stopped: list[Reject] = []

    def cancel(reject: Reject) -> None:
        stopped.append(reject)
        task.cancel()

    op.canceller = cancel
    started = time.monotonic()
    problem: Problem | None = None
    result: dict[str, Any] = {}
    try:
        result = await task
    except asyncio.CancelledError:
        if not stopped:
            raise
        op.rejection = op.rejection or stopped[0]
        problem = refusal(stopped[0], session)
    except ValueError as exc:  # the user's mistake (bad SQL, unknown command)
        op.error = "error"
        problem = Problem(400, "bad_request", str(exc))
    except Exception as exc:
        op.error = "unavailable"
        problem = Problem(503, "unavailable", f"the upstream database failed: {exc}")
    op.ended = time.monotonic()
    rows = result.get("rows")
    op.bytes_out = len(rows) if isinstance(rows, list) else 0
    if ctx.chain is not None:
        ctx.chain.complete(op)
    if problem is not None:
        raise problem
    return {"kind": db.kind, "duration_ms": round((op.ended - started) * 1000, 3), **result}
