"""The gateway's audit log: what was refused, who failed to log in, what changed state.

One JSON log line (logger ``ogelkit.audit``, message = the event name) per

- ``login_failed``: a wrong password or an unknown tenant (the user name as sent, never a
  password);
- ``connection_refused``: any other refused connection (ban, connection cap, suspended
  tenant, unknown database, control plane down, drain ...);
- ``operation_refused``: an operation a layer or the door refused (rate, cost, quota,
  timeout ...);
- ``tier_changed``, ``tenant_suspended``, ``tenant_resumed``, ``tenant_changed`` (a change
  to a tenant this gateway had not seen since it started: new values only);
- ``database_asleep``, ``database_woken``, ``wake_failed``: the lifecycle.

Lines are rate-limited (a token bucket, ``[audit] log_rate`` per second with bursts of
``log_burst``) so a refusal storm cannot flood the log: lines over the rate are counted,
not written, and the next written line says how many were left out (``suppressed``);
``ogelkit_audit_suppressed_total`` counts them too. Every event, written or not, is also
kept in a bounded in-memory ring (``[audit] keep`` entries per gateway, lost at restart)
that the admin API's ``GET /admin/audit`` searches.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ogelkit.logs import RESERVED

log = logging.getLogger("ogelkit.audit")


class AuditLog:
    """Record with ``record(event, **fields)`` (``None`` fields are dropped); search with
    ``query``. Cheap enough for a refusal storm: a dict, a deque append, a bucket check."""

    def __init__(self, *, keep: int = 1000, log_rate: float = 20.0, log_burst: int = 100,
                 on_suppressed: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.entries: deque[dict[str, Any]] = deque(maxlen=max(1, keep))
        self.rate = log_rate
        self.burst = float(max(1, log_burst))
        self.suppressed = 0  # since the last written line
        self.suppressed_total = 0
        self._tokens = self.burst
        self._clock = clock
        self._last = clock()
        self._seq = itertools.count(1)
        self._on_suppressed = on_suppressed

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Keep the event (``None`` and empty fields dropped) and log it unless over the
        rate; returns the kept entry."""
        entry: dict[str, Any] = {"seq": next(self._seq), "ts": round(time.time(), 3),
                                 "event": event}
        entry.update((k, v) for k, v in fields.items() if v is not None and v != "")
        self.entries.append(entry)
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            self.suppressed_total += 1
            if self._on_suppressed is not None:
                self._on_suppressed()
            return entry
        self._tokens -= 1.0
        extra = {k: v for k, v in entry.items() if k not in ("ts", "event")}
        if self.suppressed:
            extra["suppressed"] = self.suppressed
            self.suppressed = 0
        log.info(event, extra={"audit": True, **{f"a_{k}" if k in RESERVED else k: v
                                                 for k, v in extra.items()}})
        return entry

    def query(self, *, event: str | None = None, tenant: str | None = None,
              text: str | None = None, before: int | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
        """Newest first. ``event`` may list several names separated by commas; ``text``
        matches any field's value (case-insensitive); ``before`` pages by ``seq``."""
        events = set(event.split(",")) if event else None
        needle = text.lower() if text else None
        out: list[dict[str, Any]] = []
        for entry in reversed(self.entries):
            if before is not None and entry["seq"] >= before:
                continue
            if events is not None and entry["event"] not in events:
                continue
            if tenant is not None and entry.get("tenant") != tenant:
                continue
            if needle is not None and not any(needle in str(v).lower() for v in entry.values()):
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return out


def operation_refused(audit: AuditLog, op: Any) -> None:
    """The audit line of a refused operation (``op.rejection`` is set)."""
    s = op.session
    rej = op.rejection
    audit.record("operation_refused", protocol=s.protocol, client=s.client_addr,
                 tenant=s.tenant_slug, database=s.database, operation=op.name,
                 reason=rej.reason.value, layer=rej.layer, text=rej.message,
                 requests=op.count if op.count > 1 else None)


_LIFECYCLE = {"cold_start": "database_woken", "wake_failed": "wake_failed",
              "sleep": "database_asleep"}


def lifecycle_event(audit: AuditLog, event: Any) -> None:
    """The audit line of a ``LifecycleEvent`` (a subscriber of ``context.lifecycle``)."""
    name = _LIFECYCLE.get(event.kind)
    if name is not None:
        audit.record(name, tenant=event.tenant, database=event.database,
                     backend=event.backend,
                     seconds=round(event.seconds, 4) if event.seconds else None)


__all__ = ["AuditLog", "lifecycle_event", "operation_refused"]
