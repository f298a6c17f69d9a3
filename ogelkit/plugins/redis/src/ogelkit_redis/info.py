"""``INFO`` as a tenant sees it: Redis's sections and the fields clients read, with values
that are true for the tenant database (its own connections, commands and keys through this
gateway), never the shared server's or another tenant's.

Fields with no honest per-tenant value (CPU time, keyspace hits, the server's persistence
state beyond ``loading``) are left out rather than invented; clients that parse INFO (redis-py
``info()``, redis-cli, monitoring agents) read the fields they find.
"""

from __future__ import annotations

import os
import platform
import secrets
import struct
import time
from typing import TYPE_CHECKING

from ogelkit_redis import wire
from ogelkit_redis.clients import registry_of

if TYPE_CHECKING:
    from ogelkit_redis.backend import RedisBackend, TenantDb
    from ogelkit_redis.connection import RedisConnection

RUN_ID = secrets.token_hex(20)  # one per gateway process, as Redis has one per server
OS = f"{platform.system()} {platform.machine()}".strip()  # without the kernel's release
ARCH_BITS = struct.calcsize("P") * 8


def human(n: int) -> str:
    """Bytes as Redis's ``bytesToHuman`` writes them (``240B``, ``1.50K``, ``3.02M``)."""
    if n < 1024:
        return f"{n}B"
    for unit, factor in (("K", 1024), ("M", 1024**2), ("G", 1024**3), ("T", 1024**4)):
        if n < factor * 1024 or unit == "T":
            return f"{n / factor:.2f}{unit}"
    return f"{n}B"  # pragma: no cover - the loop always returns


async def info_reply(
    backend: RedisBackend, tdb: TenantDb, argv: list[bytes], client: RedisConnection
) -> bytes:
    """The INFO reply (a verbatim string in RESP3) for the sections ``argv`` names."""
    wanted = {a.decode("utf-8", "replace").lower() for a in argv[1:]} or {"default"}
    every = bool(wanted & {"all", "everything", "default"})
    reg = registry_of(tdb)
    conns = reg.live()
    if client not in conns:
        conns.append(client)
    tier = client.session.tier
    out: list[str] = []

    def section(name: str, *lines: str) -> None:
        if every or name in wanted:
            out.extend([f"# {name.capitalize()}", *lines, ""])

    now = time.monotonic()
    uptime = int(now - backend.started)
    sock = client.transport.get_extra_info("sockname") if client.transport is not None else None
    port = sock[1] if isinstance(sock, tuple) and len(sock) >= 2 else client.door.port
    section(
        "server",
        f"redis_version:{backend.version}",
        "redis_git_sha1:00000000",
        "redis_git_dirty:0",
        "redis_mode:standalone",
        f"os:{OS}",
        f"arch_bits:{ARCH_BITS}",
        f"process_id:{os.getpid()}",
        f"run_id:{RUN_ID}",
        f"tcp_port:{port}",
        f"server_time_usec:{time.time_ns() // 1000}",
        f"uptime_in_seconds:{uptime}",
        f"uptime_in_days:{uptime // 86400}",
        "gateway:ogelkit",
    )
    maxclients = tier.connections if tier is not None and tier.connections is not None else 0
    section(
        "clients",
        f"connected_clients:{len(conns)}",
        "cluster_connections:0",
        f"maxclients:{maxclients}",
        f"blocked_clients:{sum(1 for c in conns if c.blocked)}",
        "tracking_clients:0",
        "clients_in_timeout_table:0",
    )
    if every or "memory" in wanted:
        if tdb.memory is None:
            await backend.sample(tdb)
        used = tdb.memory or 0
        limit = tier.memory if tier is not None and tier.memory is not None else 0
        section(
            "memory",
            f"used_memory:{used}",
            f"used_memory_human:{human(used)}",
            f"maxmemory:{limit}",
            f"maxmemory_human:{human(limit)}",
        )
    section("persistence", "loading:0", "async_loading:0")
    if every or "stats" in wanted:
        commands, bytes_in, bytes_out = reg.totals()
        # The rate between two INFOs at least a second apart (Redis: over the last 1.6 s).
        if reg.ops_sample is None:
            reg.ops_sample = (now, commands)
        elif now - reg.ops_sample[0] >= 1.0:
            reg.ops_rate = round((commands - reg.ops_sample[1]) / (now - reg.ops_sample[0]))
            reg.ops_sample = (now, commands)
        ops = reg.ops_rate
        section(
            "stats",
            f"total_connections_received:{reg.connections_received}",
            f"total_commands_processed:{commands}",
            f"instantaneous_ops_per_sec:{ops}",
            f"total_net_input_bytes:{bytes_in}",
            f"total_net_output_bytes:{bytes_out}",
        )
    section("replication", "role:master", "connected_slaves:0")
    section("cluster", "cluster_enabled:0")
    if every or "keyspace" in wanted:
        keys = expires = 0
        async for batch in backend.scan_prefix(tdb.ns):
            keys += len(batch)
            ttls = await backend.calls([[b"PTTL", k] for k in batch])
            expires += sum(1 for t in ttls if not t.is_error and int(t.value) >= 0)
        out.append("# Keyspace")
        if keys:
            out.append(f"db0:keys={keys},expires={expires},avg_ttl=0")
        out.append("")
    return wire.verbatim("\r\n".join(out).encode(), client.proto)


__all__ = ["human", "info_reply"]
