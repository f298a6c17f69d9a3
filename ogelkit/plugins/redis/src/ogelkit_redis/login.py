"""Redis ``AUTH``/``HELLO ... AUTH`` on the core's ``ogelkit.frontdoor.Login`` steps.

The user name is ``<tenant>`` or ``<tenant>.<database>``; the password is the tenant's.
An unknown tenant pays the same key derivation as a known one and gets the same
``-WRONGPASS`` reply, so AUTH cannot probe which tenants exist. Like Redis, a failed AUTH
leaves the connection open for another try; a refusal by the chain (a ban, the tier's
connection limit) closes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from ogelkit import Reason, Reject, Session
from ogelkit_redis.clients import register
from ogelkit_redis.errors import WRONGPASS_MESSAGE, reject_error

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, TenantEntry
    from ogelkit_redis.backend import RedisBackend
    from ogelkit_redis.connection import RedisConnection
    from ogelkit_redis.listener import RedisFrontDoor

#: Refusals after which the client may simply try AUTH again on the same connection.
RETRYABLE = frozenset({Reason.AUTH, Reason.UNKNOWN, Reason.SUSPENDED, Reason.UNAVAILABLE})


def pick_database(door: RedisFrontDoor, entry: TenantEntry,
                  name: str) -> tuple[DatabaseRecord, RedisBackend] | str:
    """The tenant's Redis database called ``name``; without a name the only one, else
    ``default``/``main``. A string is the refusal's message."""
    slug = entry.tenant.slug
    dbs = [d for d in entry.databases.values() if d.backend in door.backend_ids]
    if name:
        found = next((d for d in dbs if d.name == name), None)
        if found is None:
            return f'ERR tenant "{slug}" has no Redis database "{name}"'
    elif len(dbs) == 1:
        found = dbs[0]
    else:
        found = next((d for p in ("default", "main") for d in dbs if d.name == p), None)
        if found is None and not dbs:
            return f'ERR tenant "{slug}" has no Redis database'
        if found is None:
            names = ", ".join(sorted(d.name for d in dbs))
            return (f'ERR tenant "{slug}" has several Redis databases ({names}): '
                    f"log in as {slug}.<database>")
    return found, cast("RedisBackend", door.context.backends[found.backend])


def names_another_database(conn: RedisConnection, user: bytes) -> bool:
    """On an authenticated connection: does ``AUTH user ...`` name another tenant or another
    database than the connection's? Decided on the name alone, before any lookup, so the
    refusal takes the same time for a tenant that exists and one that does not (a lookup of
    an unknown name goes to the control plane, a known tenant comes from the cache)."""
    s = conn.session
    slug, _, dbname = user.partition(b".")
    try:
        slug_s, dbname_s = slug.decode(), dbname.decode()
    except UnicodeDecodeError:
        return False  # answered -WRONGPASS by the AUTH itself
    return (s.tenant is None or slug_s != s.tenant.slug
            or (bool(dbname_s) and dbname_s != s.database))


async def authenticate(conn: RedisConnection, user: str, password: str,
                       proto: int | None) -> bool:
    """Run the login steps for ``AUTH user password``; on success the connection is an
    admitted session attached to its tenant database. On failure the client has been
    answered (and closed, unless it may retry) and the attempt's session has ended."""
    door = conn.door
    session = conn.session
    session.user = user
    login = conn.login = door.login(session)
    slug, _, dbname = user.partition(".")
    try:
        entry = await login.lookup(slug)
        login.check_ban()
        if not await login.check_password(password) or entry is None:
            raise login.bad_credentials(WRONGPASS_MESSAGE)
        picked = pick_database(door, entry, dbname)
        if isinstance(picked, str):
            raise login.refuse(Reject(Reason.UNKNOWN, picked))
        db, backend = picked
        login.use(db, backend)
        await login.admit(conn.close_with)
    except Reject as rej:
        conn.reply(reject_error(rej))
        login.end()
        conn.login = None
        conn.session = Session("redis", session.client_addr)
        if rej.reason not in RETRYABLE:
            conn.close()
        return False
    if conn.closed:  # gone while we were checking: nothing to attach
        return False
    tdb = backend.attach(db)
    index = tdb.pools.attach()
    conn.authenticated(backend, tdb, index)
    register(conn)  # CLIENT LIST / KILL and INFO of the tenant database see it
    try:  # connect the shared upstream now, so the first command does not wait
        await tdb.pools.get_shared(proto or conn.proto, index)
    except Reject:
        pass  # commands will retry and report it
    return True
