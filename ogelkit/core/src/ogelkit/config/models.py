"""The core config schema: every top-level table of ``config.toml`` except plugin options.

Plugin tables (``[backends.<id>]`` minus ``type``, each ``[[layers]]`` entry minus
``type``/``name``) are validated against the plugin's own ``Config`` class.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import attrs

from ogelkit.config.schema import Duration, Size, option
from ogelkit.config.validators import positive
from ogelkit.limits import CONNECTION_OUTPUT, GATEWAY_OUTPUT, MAX_INFLIGHT

_UNSET: Any = None


@attrs.define(kw_only=True)
class ListenConfig:
    host: str = option("::", doc='Address every listener binds; "::" binds IPv4 and IPv6.')
    http: int = option(8080, doc="Ops/admin HTTP port (health, metrics, admin API, Convex). "
                                 "The PORT environment variable wins when set (Railway).")
    postgres: int | None = option(None, doc="Postgres protocol port (postgres and neon "
                                            "backends). Default 5432 when such a backend exists.")
    redis: int | None = option(None, doc="Redis protocol port. Default 6379 when a redis "
                                         "backend exists.")
    mongodb: int | None = option(None, doc="MongoDB protocol port. Default 27017 when a "
                                           "mongodb backend exists.")
    port: int | None = option(None, doc="One port for every database protocol (Postgres, "
                                        "Redis, MongoDB, TLS), told apart by the first bytes "
                                        "a client sends; the per-protocol ports stay. For "
                                        "Railway's single public TCP proxy.")
    sniff_timeout: Duration = option(5.0, doc="How long a client on the one port may "
                                              "take to send its first bytes.",
                                     validator=positive)
    ports: dict[str, int] = option(factory=dict, doc="Ports of other protocols that "
                                                     "third-party backends bring, by protocol "
                                                     "name.")
    tls_cert: str | None = option(None, doc="PEM certificate for TLS on the database "
                                            "protocols (Postgres SSLRequest; TLS-first clients "
                                            "on the one port). No TLS when unset.")
    tls_key: str | None = option(None, doc="PEM private key matching tls_cert.")
    worker_http: int | None = option(None, doc="With [gateway] workers > 1: worker i also "
                                     "serves the HTTP side on worker_http + i, its own port, "
                                     "so that each worker's /metrics can be scraped (the "
                                     "shared http port answers from whichever worker takes "
                                     "the connection). 0: a free port per worker, logged.")

    def port_for(self, protocol: str, default: int) -> int:
        named = getattr(self, protocol, None) if protocol in ("postgres", "redis", "mongodb") else None
        if named is not None:
            return named
        return self.ports.get(protocol, default)


def _workers(_inst: object, attribute: attrs.Attribute, value: Any) -> None:
    if value != "auto" and value < 1:
        raise ValueError(f"{attribute.name} must be at least 1 (or \"auto\")")


@attrs.define(kw_only=True)
class GatewayConfig:
    drain_timeout: Duration = option(30.0, doc="How long SIGTERM/SIGINT waits for in-flight "
                                               "work before closing clients.")
    startup_timeout: Duration = option(30.0, doc="Deadline for opening the store and backends.")
    public_host: str = option("localhost", doc="Host name printed in the connection strings "
                                               "that `databases create` hands out.")
    admin_token: str = option("", doc="Bearer token for /admin/* on the HTTP port. Admin API "
                                      "disabled when empty.")
    log_level: Literal["debug", "info", "warning", "error"] = option("info", doc="Log level.")
    workers: int | Literal["auto"] = option(1, validator=_workers, doc="Processes that each "
                                            "run the whole gateway, sharing its ports "
                                            "(SO_REUSEPORT), so every core is used. "
                                            '"auto": one per CPU. More than 1 needs [state] '
                                            "(limits, cancel keys and leases are shared "
                                            "through it) and a control plane every worker "
                                            "reaches (docs/operations.md, \"Workers\").")

    @property
    def processes(self) -> int:
        """``workers`` as a number (``"auto"``: the CPUs this process may run on)."""
        if self.workers == "auto":
            try:
                return max(1, len(os.sched_getaffinity(0)))
            except AttributeError:  # not Linux
                return max(1, os.cpu_count() or 1)
        return int(self.workers)


@attrs.define(kw_only=True)
class ControlConfig:
    url: str = option(doc='Control plane store: "sqlite:///path/to/file.db" (one gateway) or '
                          '"postgresql://..." (several replicas).')
    secret_key: str = option(doc="Fernet key (32 url-safe base64 bytes) that encrypts upstream "
                                 "credentials at rest. Take it from the environment.")
    cache_ttl: Duration = option(2.0, doc="How long the gateway caches a tenant's record; "
                                          "tier changes reach live sessions within this time.")


@attrs.define(kw_only=True)
class StateConfig:
    url: str = option(doc='Shared state for several replicas: "redis://host:port/db".')


@attrs.define(kw_only=True)
class LifecycleConfig:
    enabled: bool = option(True, doc="Put idle databases to sleep after their tier's "
                                     "idle_before_sleep and wake them on the next client. When "
                                     "false nothing sleeps; sleeping databases still wake.")
    wake_timeout: Duration = option(8.0, validator=positive, doc="How long a client of a "
                                    "sleeping database is held while it wakes; then it gets "
                                    "a clear error (Postgres: SQLSTATE 57P03). Keep it under "
                                    "the front doors' 10 s handshake timeout.")
    check_every: Duration = option(1.0, validator=positive, doc="Scheduler period: how "
                                   "often activity is recorded, idle databases are put to "
                                   "sleep and `databases sleep|wake` requests are applied.")
    lease_ttl: Duration = option(10.0, validator=positive, doc="Lifetime of the scheduler "
                                 "lease in the [state] Redis (renewed every check_every): "
                                 "how long a dead replica's lease blocks another one.")


@attrs.define(kw_only=True)
class AuditConfig:
    keep: int = option(1000, validator=positive, doc="Audit events kept in memory per gateway "
                                                     "for GET /admin/audit (newest win; lost "
                                                     "at restart).")
    log_rate: float = option(20.0, validator=positive, doc="Audit log lines per second at "
                             "most (bursts of log_burst); lines over it are counted and the "
                             "next line carries how many were left out (\"suppressed\").")
    log_burst: int = option(100, validator=positive, doc="Audit log lines allowed at once "
                                                         "before log_rate applies.")


@attrs.define(kw_only=True)
class LimitsConfig:
    """Bounds on what one client may make the gateway hold (docs/operations.md, "Fairness
    and limits"). They apply to every tenant and tier alike: they protect the gateway and
    its other clients, not a plan."""

    max_inflight: int = option(MAX_INFLIGHT, validator=positive, doc="Requests one client connection "
                               "may have sent upstream and not yet answered (Redis "
                               "pipelines); past it the gateway stops reading that client "
                               "until replies have been delivered. Bounds the replies an "
                               "upstream buffers for a client that does not read them.")
    connection_output: Size = option(CONNECTION_OUTPUT, validator=positive, doc="Replies "
                                     "buffered for one client that does not read them; past "
                                     "it the client is refused in its protocol (Postgres "
                                     "53200, Redis -OOM, MongoDB code 146) and closed.")
    gateway_output: Size = option(GATEWAY_OUTPUT, validator=positive, doc="Replies "
                                  "buffered for all clients that do not read them, together; "
                                  "past it the client holding the most is refused and "
                                  "closed, until the total is under the limit again.")


@attrs.define(kw_only=True)
class PluginsConfig:
    disable: list[str] = option(factory=list, doc="Plugin (entry point) names not to load.")


@attrs.define(kw_only=True)
class PriceConfig:
    base: float | None = option(_UNSET, doc="Monthly base price.")
    included_vcpu_hours: float | None = option(_UNSET, doc="vCPU-hours included per month.")
    included_gb_hours: float | None = option(_UNSET, doc="GB-hours included per month.")
    vcpu_hour: float | None = option(_UNSET, doc="Price per vCPU-hour beyond the included ones.")
    gb_hour: float | None = option(_UNSET, doc="Price per GB-hour beyond the included ones.")


# Tier options: every field is optional so ``[tiers.free]`` overrides only what it names.
# A value of "unlimited" sets the limit to none; an absent key keeps the base tier's value.
_MISSING = "__missing__"


def _limit(doc: str):
    return option(_MISSING, unlimited=True, doc=doc)


@attrs.define(kw_only=True)
class TierConfig:
    base: str | None = option(None, doc="Tier to copy unspecified limits from (new tiers "
                                        "default to free).")
    rank: int | None = option(_UNSET, doc="Ordering for upgrade hints; bigger is higher.")
    connections: int | None = _limit("Concurrent client connections per tenant.")
    ops_per_second: float | None = _limit("Sustained operations per second.")
    burst: int | None = _limit("Operations allowed at once above the rate.")
    statement_timeout: Duration | None = _limit("Deadline per operation.")
    idle_in_transaction_timeout: Duration | None = _limit("Postgres idle in "
                                                                        "transaction timeout.")
    work_mem: Size | None = _limit("Postgres work_mem per operation.")
    parallel_workers: int | None = _limit("Postgres "
                                                        "max_parallel_workers_per_gather.")
    cost_ceiling: float | None = _limit("Highest estimated cost admitted.")
    idle_before_sleep: Duration | None = _limit("Idle time before a database "
                                                              "is put to sleep.")
    storage: Size | None = _limit("Storage quota per tenant.")
    memory: Size | None = _limit("In-memory data quota (Redis).")
    max_keys: int | None = _limit("Key-count quota (Redis).")
    connection_queue: Duration | None = _limit("How long a client may wait for "
                                                             "a connection slot at the cap.")
    price: PriceConfig | None = option(None, doc="Price book entry for the invoice preview.")


@attrs.define(kw_only=True)
class DatabaseSeed:
    backend: str = option(doc="Backend id ([backends.<id>]) that hosts this database.")


@attrs.define(kw_only=True)
class TenantSeed:
    tier: str = option("free", doc="Tier of the tenant.")
    password: str | None = option(None, doc="Password to set when the tenant has none yet "
                                            "(demo setups; production uses `credentials "
                                            "rotate`).")
    databases: dict[str, DatabaseSeed] = option(factory=dict, doc="Databases to provision at "
                                                                  "startup when missing.")


#: Top-level keys and the model of each; backends/layers/tiers/tenants are handled specially.
TOP_LEVEL = {
    "listen": ListenConfig,
    "gateway": GatewayConfig,
    "control": ControlConfig,
    "state": StateConfig,
    "lifecycle": LifecycleConfig,
    "audit": AuditConfig,
    "limits": LimitsConfig,
    "plugins": PluginsConfig,
}
SPECIAL = ("backends", "layers", "tiers", "tenants")
