"""The ``redis`` backend: one shared upstream Redis 7, one key/channel prefix and one ACL
user per tenant database."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ogelkit import Backend, Reason, Reject, format_size
from ogelkit_redis import wire
from ogelkit_redis.commands import CommandTable, to_python
from ogelkit_redis.namespace import Namespace, glob_escape
from ogelkit_redis.options import RedisOptions
from ogelkit_redis.pools import Pools

if TYPE_CHECKING:
    from ogelkit import DatabaseRecord, Operation, TenantRecord, Tier
    from ogelkit_redis.connection import RedisConnection

log = logging.getLogger("ogelkit.redis.backend")

#: What a tenant's ACL user may not run even if the gateway had a bug: the dangerous and
#: admin categories, and the commands that list or count every tenant's keys and channels
#: (a tenant's Lua script could call them). The gateway runs KEYS/SCAN/SORT BY on its own
#: admin connection with the tenant's prefix forced into the pattern instead.
ACL_COMMANDS = (
    "+@all", "-@dangerous", "-@admin", "+sort", "+sort_ro",
    "-scan", "-randomkey", "-dbsize", "-keys", "-move", "-swapdb", "-wait",
    "-pubsub|channels", "-pubsub|numsub", "-pubsub|numpat", "-pubsub|shardchannels",
    "-pubsub|shardnumsub", "-script|flush", "-script|kill", "-function|load",
    "-function|delete", "-function|flush", "-function|restore", "-function|kill",
    "-function|stats", "-memory|stats", "-memory|doctor", "-memory|malloc-stats",
    "-memory|purge",
)


class RedisCallError(Exception):
    """The upstream answered an admin command with an error."""


class TenantDb:
    """Gateway-side state of one tenant database: its namespace, upstream pools and the
    latest quota sample."""

    def __init__(self, backend: RedisBackend, db: DatabaseRecord):
        up = db.upstream
        self.tenant = db.tenant
        self.name = db.name
        self.record = db
        prefix = up.get("prefix") or backend.prefix_for(db.tenant, db.name)
        self.ns = Namespace(prefix.encode(), backend.db)
        self.pools = Pools(backend, user=up.get("user"), password=up.get("password"),
                           shared=backend.config.upstream_connections,
                           max_dedicated=backend.config.max_clients_dedicated,
                           label=f"{db.tenant}/{db.name}")
        self.pools.repair = lambda: backend.repair_acl(db)
        self.granted: set[bytes] = set()  # channel patterns added to the ACL user
        self.over_quota: Reject | None = None
        self.keys: int | None = None
        self.memory: int | None = None
        self.sampled_at = 0.0
        self.last_used = time.monotonic()


class RedisBackend(Backend):
    type_name = "redis"
    Config = RedisOptions
    protocol = "redis"  # served by RedisFrontDoor (registered in plugin.py)

    def __init__(self, config: RedisOptions, *, name: str, context: Any):
        super().__init__(config, name=name, context=context)
        parts = urlsplit(config.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        path = parts.path.strip("/")
        self.db = int(path) if path.isdigit() else 0
        self.admin_user = unquote(parts.username) if parts.username else None
        self.admin_password = unquote(parts.password) if parts.password else None
        if self.admin_password is None and self.admin_user is not None and not parts.password:
            # redis://:password@host form puts the password in the user slot for some tools
            pass
        self.admin = Pools(self, user=self.admin_user, password=self.admin_password, shared=1,
                           max_dedicated=None, label="admin")
        self.table: CommandTable = CommandTable([])
        self.version = ""
        self.tdbs: dict[tuple[str, str], TenantDb] = {}
        self.started = time.monotonic()  # INFO's uptime_in_seconds
        self._sampler: asyncio.Task[None] | None = None
        m = context.metrics
        self._m_shared = m.upstream_connections.labels(name, "shared")
        self._m_dedicated = m.upstream_connections.labels(name, "dedicated")
        self._m_errors = m.upstream_errors

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Fetch the command table (key specs) and the server version once."""
        info = await self.call(b"COMMAND", b"INFO")
        entries = to_python(info)
        server = await self.call(b"INFO", b"server")
        version = ""
        for line in (server.value or b"").decode().splitlines():
            if line.startswith("redis_version:"):
                version = line.split(":", 1)[1].strip()
        major = int(version.split(".")[0]) if version else 0
        if major and major < 7:
            raise RuntimeError(f"Redis {version} has no key specifications; Redis 7 or newer "
                               "is required")
        self.version = version
        self.table = CommandTable(entries, version)
        log.info("redis command table loaded", extra={"backend": self.name,
                                                      "commands": len(self.table),
                                                      "version": version})

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sampler
            self._sampler = None
        for tdb in self.tdbs.values():
            tdb.pools.close()
        self.tdbs.clear()
        self.admin.close()

    async def check(self) -> None:
        frame = await self.call(b"PING")
        if frame.value != b"PONG":
            raise RuntimeError(f"unexpected PING reply {frame!r}")

    def stats(self) -> dict[str, Any]:
        return {"tenant_databases": len(self.tdbs), "admin": self.admin.stats(),
                "upstream": {f"{k[0]}/{k[1]}": t.pools.stats() for k, t in self.tdbs.items()}}

    # -- admin calls -------------------------------------------------------------------------
    async def call(self, *argv: bytes) -> wire.Frame:
        """One command on the admin connection; raises RedisCallError on an error reply."""
        up = await self.admin.get_shared(2, 0)
        raw = await up.call(*argv)
        frame, _ = wire.decode(raw)
        if frame.is_error:
            raise RedisCallError(frame.value.decode("utf-8", "replace"))
        return frame

    async def calls(self, commands: list[list[bytes]]) -> list[wire.Frame]:
        """Several commands pipelined on the admin connection (errors returned, not raised)."""
        if not commands:
            return []
        up = await self.admin.get_shared(2, 0)
        raws = await asyncio.gather(*(up.call(*argv) for argv in commands))
        return [wire.decode(raw)[0] for raw in raws]

    async def scan_prefix(self, ns: Namespace, count: int = 1000):
        """Every key name of a namespace (full names), batch by batch."""
        cursor = b"0"
        pattern = ns.escaped + b"*"
        while True:
            frame = await self.call(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", b"%d" % count)
            cursor = frame.value[0].value
            batch = [item.value for item in frame.value[1].value]
            if batch:
                yield batch
            if cursor == b"0":
                return

    # -- hot-path helpers ---------------------------------------------------------------------
    def attach(self, db: DatabaseRecord) -> TenantDb:
        key = (db.tenant, db.name)
        tdb = self.tdbs.get(key)
        if tdb is None or tdb.record.upstream != db.upstream:
            # Re-provisioned: new clients get the new details; clients of the old entry
            # keep its pools until they leave.
            tdb = self.tdbs[key] = TenantDb(self, db)
        tdb.last_used = time.monotonic()
        if self._sampler is None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())
        return tdb

    def metrics_upstream(self, delta: int, dedicated: bool) -> None:
        (self._m_dedicated if dedicated else self._m_shared).inc(delta)

    def upstream_error(self, kind: str) -> None:
        self._m_errors.labels(self.name, kind).inc()

    # -- provisioning --------------------------------------------------------------------------
    def prefix_for(self, tenant: str, db: str) -> str:
        return self.config.prefix_format.format(tenant=tenant, db=db)

    def acl_user(self, tenant: str, db: str) -> str:
        return self.config.acl_user_format.format(tenant=tenant, db=db)

    def _password(self, user: str) -> str:
        # Derived, not random: provisioning twice gives the same password, so a rerun after
        # a half-way failure and a gateway still holding the first answer both keep working.
        key = self.context.config.control.secret_key.encode()
        return hmac.new(key, f"ogelkit-redis:{self.name}:{user}".encode(),
                        hashlib.sha256).hexdigest()

    async def provision(self, tenant: TenantRecord, name: str, tier: Tier) -> dict[str, Any]:
        user = self.acl_user(tenant.slug, name)
        prefix = self.prefix_for(tenant.slug, name)
        password = self._password(user)
        await self._setuser(user, prefix, password)
        return {"user": user, "password": password, "prefix": prefix}

    async def _setuser(self, user: str, prefix: str, password: str | None) -> None:
        password = password or self._password(user)
        escaped = glob_escape(prefix.encode()).decode()
        rules = ["reset", "on", f">{password}", f"~{escaped}*", "resetchannels",
                 f"&{escaped}*", f"&__keyspace@{self.db}__:{escaped}*", *ACL_COMMANDS]
        await self.call(b"ACL", b"SETUSER", user.encode(), *(r.encode() for r in rules))

    async def repair_acl(self, db: DatabaseRecord) -> None:
        """Re-create a tenant database's ACL user (after a Redis restart lost it), unless
        the database was deleted meanwhile (its user is gone on purpose then)."""
        current = await self.context.store.get_database(db.tenant, db.name)
        if current is None or current.backend != self.name:
            log.info("not re-creating the ACL user of a deleted database",
                     extra={"tenant": db.tenant, "database": db.name})
            return
        log.warning("re-creating the upstream ACL user", extra={"tenant": db.tenant,
                                                                "database": db.name})
        await self._setuser(db.upstream.get("user") or self.acl_user(db.tenant, db.name),
                            db.upstream.get("prefix") or self.prefix_for(db.tenant, db.name),
                            db.upstream.get("password"))

    async def grant_patterns(self, tdb: TenantDb, patterns: list[bytes]) -> None:
        """Allow PSUBSCRIBE of these (prefixed) patterns to the tenant's ACL user."""
        user = tdb.record.upstream.get("user") or self.acl_user(tdb.tenant, tdb.name)
        fresh = [p for p in patterns if p.startswith((tdb.ns.escaped, b"__keyspace@"))]
        if fresh:
            try:
                await self.call(b"ACL", b"SETUSER", user.encode(), *(b"&" + p for p in fresh))
            except RedisCallError as exc:
                # Redis's ACL rules cannot hold every pattern (one with a space is a syntax
                # error): the client's PSUBSCRIBE is refused, not a gateway error.
                raise Reject(Reason.FORBIDDEN, "ERR this pattern cannot be subscribed to "
                             f"through the gateway ({exc})") from None
        tdb.granted.update(patterns)

    async def deprovision(self, tenant: TenantRecord, db: DatabaseRecord) -> None:
        user = db.upstream.get("user") or self.acl_user(tenant.slug, db.name)
        prefix = db.upstream.get("prefix") or self.prefix_for(tenant.slug, db.name)
        await self.call(b"ACL", b"DELUSER", user.encode())  # also disconnects its clients
        tdb = self.tdbs.pop((tenant.slug, db.name), None)
        if tdb is not None:
            tdb.pools.close(Reject(Reason.UNKNOWN, f'tenant database "{db.name}" was deleted'))
            for session in self.context.sessions.of(tenant.slug):
                if session.database == db.name and session.backend is self:
                    session.close(Reject(Reason.UNKNOWN,
                                         f'tenant database "{db.name}" was deleted'))
        await self.delete_keys(Namespace(prefix.encode(), self.db))

    async def delete_keys(self, ns: Namespace) -> int:
        """SCAN + UNLINK in batches (never KEYS: it would block the shared server)."""
        deleted = 0
        async for batch in self.scan_prefix(ns, self.config.delete_batch):
            frame = await self.call(b"UNLINK", *batch)
            deleted += int(frame.value)
        return deleted

    def connection_string(self, tenant: TenantRecord, db: DatabaseRecord, password: str | None,
                          host: str, port: int) -> str:
        secret = password if password is not None else "<password>"
        return f"redis://{tenant.slug}.{db.name}:{secret}@{host}:{port}/0"

    # -- emulated commands --------------------------------------------------------------------
    async def emulate(self, name: str, tdb: TenantDb, argv: list[bytes],
                      client: RedisConnection) -> bytes:
        ns = tdb.ns
        proto = client.proto
        if name == "dbsize":
            if len(argv) != 1:
                return wire.error("ERR wrong number of arguments for 'dbsize' command")
            n = 0
            async for batch in self.scan_prefix(ns):
                n += len(batch)
            return wire.integer(n)
        if name == "keys":
            if len(argv) != 2:
                return wire.error("ERR wrong number of arguments for 'keys' command")
            found: dict[bytes, None] = {}  # SCAN may repeat a key; KEYS lists it once
            cursor = b"0"
            pattern = ns.pattern(argv[1])
            while True:
                frame = await self.call(b"SCAN", cursor, b"MATCH", pattern, b"COUNT", b"1000")
                cursor = frame.value[0].value
                for item in frame.value[1].value:
                    found[item.value] = None
                if cursor == b"0":
                    break
            return wire.array([wire.bulk(ns.strip(k)) for k in found])
        if name == "randomkey":
            if len(argv) != 1:
                return wire.error("ERR wrong number of arguments for 'randomkey' command")
            async for batch in self.scan_prefix(ns):
                return wire.bulk(ns.strip(random.choice(batch)))
            return wire.null(proto)
        if name == "flushdb":
            if len(argv) > 2 or (len(argv) == 2 and argv[1].upper() not in (b"ASYNC", b"SYNC")):
                return wire.error("ERR syntax error")
            await self.delete_keys(ns)
            return wire.OK
        if name == "info":
            return await self._info(tdb, argv, client)
        return wire.error(f"ERR {name.upper()} is not supported through the gateway")

    async def _info(self, tdb: TenantDb, argv: list[bytes], client: RedisConnection) -> bytes:
        from ogelkit_redis.info import info_reply
        return await info_reply(self, tdb, argv, client)

    # -- quotas (background sampling) ---------------------------------------------------------
    async def sample(self, tdb: TenantDb) -> None:
        """Count a tenant database's keys and estimate its memory (MEMORY USAGE on up to
        ``quota_sample_keys`` keys, extrapolated)."""
        keys = 0
        measured: list[bytes] = []
        limit = self.config.quota_sample_keys
        async for batch in self.scan_prefix(tdb.ns):
            keys += len(batch)
            if len(measured) < limit:
                measured.extend(batch[:limit - len(measured)])
        memory = 0
        if measured:
            frames = await self.calls([[b"MEMORY", b"USAGE", k, b"SAMPLES", b"5"]
                                       for k in measured])
            sizes = [int(f.value) for f in frames if not f.is_error and f.value is not None]
            if sizes:
                memory = int(sum(sizes) / len(sizes) * keys)
        tdb.keys, tdb.memory, tdb.sampled_at = keys, memory, time.monotonic()
        await self._judge(tdb)

    async def _judge(self, tdb: TenantDb) -> None:
        if not self.config.quota_enforce:
            tdb.over_quota = None
            return
        entry = await self.context.directory.lookup(tdb.tenant)
        if entry is None:
            return
        tier = entry.tier
        tiers = self.context.tiers
        if tier.max_keys is not None and tdb.keys is not None and tdb.keys >= tier.max_keys:
            tdb.over_quota = Reject(
                Reason.QUOTA, "OOM command not allowed: the tenant database is over its key "
                              "quota",
                detail=f"{tdb.keys} keys of {tier.max_keys} on tier {tier.name}",
                hint=tiers.upgrade_hint(tier, "max_keys", lambda v: f"{v or 'unlimited'} keys")
                or "Delete keys to write again.")
        elif tier.memory is not None and tdb.memory is not None and tdb.memory >= tier.memory:
            tdb.over_quota = Reject(
                Reason.QUOTA, "OOM command not allowed: the tenant database is over its memory "
                              "quota",
                detail=f"{format_size(tdb.memory)} of {format_size(tier.memory)} on tier "
                       f"{tier.name}",
                hint=tiers.upgrade_hint(tier, "memory", format_size)
                or "Delete keys to write again.")
        else:
            tdb.over_quota = None

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.quota_sample_interval)
            now = time.monotonic()
            for key, tdb in list(self.tdbs.items()):
                if self.context.sessions.count(tdb.tenant) == 0 and now - tdb.last_used > 600:
                    tdb.pools.close()
                    self.tdbs.pop(key, None)
                    continue
                try:
                    await self.sample(tdb)
                except Exception as exc:  # the upstream is down: keep the last verdict
                    log.warning("quota sample failed", extra={"tenant": tdb.tenant,
                                                              "database": tdb.name,
                                                              "error": str(exc)})

    async def sleep(self, db: DatabaseRecord) -> None:
        """Lifecycle: close the database's upstream connections (shared and dedicated);
        they open again on the next client's first command. Never under a live client:
        a database with sessions keeps its pools."""
        if any(s.database == db.name for s in self.context.sessions.of(db.tenant)):
            return
        tdb = self.tdbs.pop((db.tenant, db.name), None)
        if tdb is not None:
            tdb.pools.close()

    # -- Studio's key browser -----------------------------------------------------------------
    def console_operation(self, request: dict[str, Any]) -> tuple[str, str, str]:
        from ogelkit_redis.console import parse
        argv = parse(request.get("command"))
        return "command", argv[0], " ".join(argv)

    async def console(self, db: DatabaseRecord, request: dict[str, Any],
                      session: Any) -> dict[str, Any]:
        from ogelkit_redis.console import parse, run
        return await run(self, self.attach(db), parse(request.get("command")))

    async def storage_bytes(self, db: DatabaseRecord) -> int | None:
        tdb = self.tdbs.get((db.tenant, db.name))
        if tdb is None:
            tdb = TenantDb(self, db)
            try:
                await self.sample(tdb)
            finally:
                tdb.pools.close()
            return tdb.memory
        if tdb.memory is None or time.monotonic() - tdb.sampled_at > self.config.quota_sample_interval:
            await self.sample(tdb)
        return tdb.memory

    # -- cost classes ----------------------------------------------------------------------------
    def cost_key(self, op: Operation) -> Hashable | None:
        from ogelkit_redis.cost import cost_key
        return cost_key(op)

    async def estimate_cost(self, op: Operation) -> float | None:
        from ogelkit_redis.cost import estimate_cost
        return await estimate_cost(self, op)
