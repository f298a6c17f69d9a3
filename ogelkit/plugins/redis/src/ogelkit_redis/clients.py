"""The Redis connections of each tenant database through this gateway: what ``CLIENT
LIST``/``CLIENT KILL`` and ``INFO`` (clients, stats) show a tenant, and nothing of others.

A connection is registered when its login attaches it to a tenant database
(``login.authenticate``) and counts until it closes, RESETs or its session ends. Entries are
weak references checked on every read, so the connection's own teardown needs no hook
here; what a gone connection did (commands, bytes) is folded into the totals when it is
pruned.

``idle`` is sampled: the gateway does not stamp every command, so a connection's idle time
is measured from the last time a read of this registry saw its input grow. That is never
more than the true idle time (a script killing "idle > N s" connections kills none that were
busy), and exact for a connection that sent nothing since it logged in.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ogelkit import Session
    from ogelkit_redis.backend import TenantDb
    from ogelkit_redis.connection import RedisConnection


class _Entry:
    __slots__ = ("bytes_in", "conn", "seen_active", "session")

    def __init__(self, conn: RedisConnection, now: float):
        self.conn = weakref.ref(conn)
        self.session: Session = conn.session
        self.bytes_in = conn.session.bytes_in
        self.seen_active = now


class TenantClients:
    """One tenant database's connections and its counters since the gateway started."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}  # by session id (CLIENT ID)
        self._prune_at = 16
        self.connections_received = 0
        self.closed_commands = 0
        self.closed_bytes_in = 0
        self.closed_bytes_out = 0
        #: (monotonic time, total commands) of an earlier INFO, for instantaneous_ops_per_sec.
        self.ops_sample: tuple[float, int] | None = None
        self.ops_rate = 0

    def register(self, conn: RedisConnection) -> None:
        self._entries[conn.session.id] = _Entry(conn, time.monotonic())
        self.connections_received += 1
        if len(self._entries) >= self._prune_at:
            self._prune()
            self._prune_at = max(16, 2 * len(self._entries))

    def _alive(self, entry: _Entry) -> RedisConnection | None:
        conn = entry.conn()
        if (
            conn is None
            or conn.closing
            or not conn.authed
            or conn.session is not entry.session
            or conn.tdb is None
            or registry_of(conn.tdb) is not self
        ):
            return None
        return conn

    def _prune(self) -> list[tuple[RedisConnection, _Entry]]:
        live = []
        for sid, entry in list(self._entries.items()):
            conn = self._alive(entry)
            if conn is None:
                s = entry.session
                self.closed_commands += s.operations
                self.closed_bytes_in += s.bytes_in
                self.closed_bytes_out += s.bytes_out
                del self._entries[sid]
            else:
                live.append((conn, entry))
        return live

    def live(self) -> list[RedisConnection]:
        """The open connections, oldest first; samples their activity (see ``idle``)."""
        now = time.monotonic()
        out = []
        for conn, entry in self._prune():
            if conn.session.bytes_in != entry.bytes_in:
                entry.bytes_in = conn.session.bytes_in
                entry.seen_active = now
            out.append(conn)
        out.sort(key=lambda c: c.session.id)
        return out

    def idle(self, conn: RedisConnection) -> int:
        """Whole seconds since this connection was last seen sending (a lower bound)."""
        entry = self._entries.get(conn.session.id)
        if entry is None:
            return 0
        return int(time.monotonic() - entry.seen_active)

    def totals(self) -> tuple[int, int, int]:
        """Commands, input bytes and output bytes of every connection since start."""
        live = [c.session for c, _ in self._prune()]
        return (
            self.closed_commands + sum(s.operations for s in live),
            self.closed_bytes_in + sum(s.bytes_in for s in live),
            self.closed_bytes_out + sum(s.bytes_out for s in live),
        )


_REGISTRIES: weakref.WeakKeyDictionary[TenantDb, TenantClients] = weakref.WeakKeyDictionary()


def registry_of(tdb: TenantDb) -> TenantClients:
    """The registry of a tenant database (made on first use)."""
    reg = _REGISTRIES.get(tdb)
    if reg is None:
        reg = _REGISTRIES[tdb] = TenantClients()
    return reg


def register(conn: RedisConnection) -> None:
    """An authenticated connection of ``conn.tdb``."""
    registry_of(conn.tdb).register(conn)


__all__ = ["TenantClients", "register", "registry_of"]
