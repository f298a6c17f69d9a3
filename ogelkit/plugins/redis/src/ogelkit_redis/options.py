"""``[backends.<id>]`` options of a redis backend."""

from __future__ import annotations

import attrs

import ogelkit
from ogelkit import Duration, Size

MB = 1024 * 1024


@attrs.define(kw_only=True)
class RedisOptions:
    url: str = ogelkit.option(
        "redis://127.0.0.1:6379/0",
        doc='Admin connection to the upstream Redis 7 ("redis://[user:password@]host:port/db"), '
            "used for provisioning (ACL users), the command table, key-pattern commands and "
            "quota sampling. Tenant data lives in this logical database.")
    upstream_connections: int = ogelkit.option(
        2, validator=ogelkit.validators.at_least_one,
        doc="Shared upstream connections per tenant database (and protocol version) that "
            "the tenant's clients are pipelined onto.")
    max_clients_dedicated: int | None = ogelkit.option(
        64, doc="Dedicated upstream connections per tenant database at once (MULTI/WATCH, "
                "pub/sub, blocking commands); beyond it such commands get an error.")
    max_bulk_size: Size = ogelkit.option(
        512 * MB, doc="Largest bulk string a client may send (like proto-max-bulk-len); a "
                      "larger one is a protocol error that closes that client.")
    prefix_format: str = ogelkit.option(
        "t:{tenant}:{db}:", doc="Key and channel prefix of a tenant database ({tenant}, {db}); "
                                "fixed at provisioning time and stored with the database.")
    acl_user_format: str = ogelkit.option(
        "o7s:{tenant}:{db}", doc="Name of the upstream ACL user created per tenant database.")
    quota_enforce: bool = ogelkit.option(
        True, doc="Refuse writes (-OOM) while a tenant database is over its tier's max_keys or "
                  "memory; false only measures.")
    quota_sample_interval: Duration = ogelkit.option(
        30.0, doc="How often each active tenant database's keys and memory are sampled (SCAN "
                  "+ MEMORY USAGE), in the background.")
    quota_sample_keys: int = ogelkit.option(
        1000, doc="Keys measured with MEMORY USAGE per sample; the memory figure of a larger "
                  "keyspace is extrapolated from them.")
    connect_timeout: Duration = ogelkit.option(
        5.0, doc="Deadline for connecting and authenticating to the upstream Redis.")
    handshake_timeout: Duration = ogelkit.option(
        10.0, doc="Seconds a client may stay connected without a successful AUTH (or HELLO "
                  "with AUTH); then it gets an error and is closed, so idle unauthenticated "
                  "sockets cannot pile up.")
    delete_batch: int = ogelkit.option(
        500, doc="Keys per SCAN/UNLINK batch when a tenant database is deleted or FLUSHDB runs.")

    def __attrs_post_init__(self) -> None:
        if "{tenant}" not in self.prefix_format or "{db}" not in self.prefix_format:
            raise ValueError("prefix_format must contain {tenant} and {db}")
        if "{tenant}" not in self.acl_user_format or "{db}" not in self.acl_user_format:
            raise ValueError("acl_user_format must contain {tenant} and {db}")
        if any(c in self.acl_user_format for c in " \t\r\n"):
            raise ValueError("acl_user_format cannot contain spaces")
