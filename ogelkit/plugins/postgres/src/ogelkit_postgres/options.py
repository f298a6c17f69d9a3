"""``[backends.<id>]`` options of a ``type = "postgres"`` backend."""

from __future__ import annotations

from typing import Literal

import attrs

from ogelkit import Duration, Size, option, validators


@attrs.define(kw_only=True)
class PostgresOptions:
    dsn: str = option(doc="Admin (superuser) DSN of the upstream PostgreSQL server, used for "
                          "provisioning, storage figures and health checks. Tenant connections "
                          "go to its host and port unless upstream_host/upstream_port are set.")
    upstream_host: str | None = option(None, doc="Host tenant connections go to, when it "
                                                 "differs from the dsn's host.")
    upstream_port: int | None = option(None, doc="Port tenant connections go to, when it "
                                                 "differs from the dsn's port.")
    pool_mode: Literal["session", "transaction"] = option(
        "transaction", doc='"transaction": a server connection serves a client for one '
                           'transaction and goes back to the pool at ReadyForQuery idle; '
                           '"session": it stays with the client until it disconnects.')
    pool_size: int = option(10, validator=validators.at_least_one,
                            doc="Most server connections per tenant database (also capped by "
                                "the tier's connection limit).")
    min_pool_size: int = option(0, doc="Server connections kept open per tenant database once "
                                       "it has been used.")
    connect_timeout: Duration = option(5.0, doc="Deadline for opening and authenticating one "
                                                "upstream connection.")
    query_wait_timeout: Duration = option(30.0, doc="How long a client waits for a free server "
                                                    "connection before it gets an error "
                                                    "(53300).")
    server_idle_timeout: Duration = option(600.0, doc="Close pooled server connections idle "
                                                      "longer than this (above min_pool_size).")
    server_lifetime: Duration = option(3600.0, doc="Close server connections older than this "
                                                   "when they go back to the pool.")
    max_message_size: Size = option(64 * 1024 * 1024, doc="Largest client message accepted; "
                                                          "a bigger one is answered with "
                                                          "08P01 and that client is closed.")
    max_prepared_statements: int = option(200, validator=validators.at_least_one,
                                          doc="Named prepared statements kept per server "
                                              "connection in transaction mode (least recently "
                                              "used ones are deallocated).")
    login_timeout: Duration = option(30.0, doc="A client must finish TLS, startup and SCRAM "
                                               "within this time.")
    name_prefix: str = option("o7s_", doc="Prefix of the roles and databases that provisioning "
                                          "creates upstream (lets several gateways share a "
                                          "server).")
    upstream_names: Literal["opaque", "readable"] = option(
        "opaque", doc='Names of the roles and databases provisioning creates: "opaque" '
                      '(name_prefix + an HMAC of the tenant and database under '
                      '[control] secret_key) so other tenants of a shared server learn '
                      'nothing from pg_database, pg_roles or pg_stat_activity; "readable" '
                      '(name_prefix + tenant + database) for operators who prefer names '
                      'they can read. Existing databases keep the names they were created '
                      'with.')
    role_connection_reserve: int = option(2, doc="Connections a tenant role may open beyond "
                                                 "its tier's connection limit (cost estimates, "
                                                 "health checks).")
    explain_timeout: Duration = option(2.0, doc="statement_timeout for the EXPLAIN behind "
                                                "estimate_cost; no estimate when it runs out.")
    cancel_key_ttl: Duration = option(300.0, doc="With [state] configured: lifetime of a client's "
                                                 "cancel key in Redis, refreshed while the "
                                                 "client is connected.")

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.min_pool_size <= self.pool_size:
            raise ValueError("min_pool_size must be between 0 and pool_size")
        if not self.name_prefix or not all(c.isalnum() or c == "_" for c in self.name_prefix) \
                or not self.name_prefix[0].isalpha() or self.name_prefix.lower() != self.name_prefix:
            raise ValueError("name_prefix must be lower-case letters, digits and '_', starting "
                             "with a letter")
