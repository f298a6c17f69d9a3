"""Cursor ownership: which tenant opened which upstream cursor.

Drivers run ``getMore`` on whichever pooled connection is free (pymongo does), so ownership is
per *tenant*, not per client connection. Upstream cursor ids are random 64-bit numbers and are
passed through unchanged; the table only answers "does this tenant own it?". Both FerretDB and
MongoDB accept ``getMore`` on any connection of the same user, so cursors are not pinned to the
upstream connection that opened them (FerretDB closes a cursor when that connection closes; the
pool keeps connections open, and a cursor lost with its connection reports CursorNotFound).
"""

from __future__ import annotations

import time


class CursorEntry:
    __slots__ = ("last_used", "namespace", "tenant")

    def __init__(self, tenant: str, namespace: str, now: float):
        self.tenant = tenant
        self.namespace = namespace  # upstream "db.collection"
        self.last_used = now


class CursorTable:
    def __init__(self, idle_timeout: float, max_cursors: int = 100_000):
        self.idle_timeout = idle_timeout
        self.max_cursors = max_cursors
        self._cursors: dict[int, CursorEntry] = {}
        self._next_sweep = time.monotonic() + 60.0

    def add(self, cursor_id: int, tenant: str, namespace: str) -> None:
        now = time.monotonic()
        if now >= self._next_sweep or len(self._cursors) >= self.max_cursors:
            self.sweep(now)
        self._cursors[cursor_id] = CursorEntry(tenant, namespace, now)

    def owned(self, cursor_id: int, tenant: str) -> CursorEntry | None:
        entry = self._cursors.get(cursor_id)
        if entry is None or entry.tenant != tenant:
            return None
        entry.last_used = time.monotonic()
        return entry

    def remove(self, cursor_id: int) -> None:
        self._cursors.pop(cursor_id, None)

    def sweep(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        self._next_sweep = now + 60.0
        limit = now - self.idle_timeout
        stale = [cid for cid, e in self._cursors.items() if e.last_used < limit]
        for cid in stale:
            del self._cursors[cid]
        if len(self._cursors) >= self.max_cursors:  # still full: forget the oldest tenth
            oldest = sorted(self._cursors.items(), key=lambda kv: kv[1].last_used)
            for cid, _ in oldest[: max(1, self.max_cursors // 10)]:
                del self._cursors[cid]
        return len(stale)

    def __len__(self) -> int:
        return len(self._cursors)
