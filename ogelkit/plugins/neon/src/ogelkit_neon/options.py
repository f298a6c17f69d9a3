"""``[backends.<id>]`` options of a ``type = "neon"`` backend.

The pool and front-door options are the Postgres backend's (a Neon database is reached
through the same front door and pool); ``driver`` picks where the computes run, and the
``local`` / ``cloud`` tables hold each driver's own options.
"""

from __future__ import annotations

from typing import Literal

import attrs
from ogelkit_postgres.options import PostgresOptions

from ogelkit import Duration, Size, option, validators


def _port_range(_inst: object, _attr: object, value: str) -> None:
    low, sep, high = value.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit() \
            or not 1024 <= int(low) <= int(high) <= 65535:
        raise ValueError('port_range must be "LOW-HIGH" with 1024 <= LOW <= HIGH <= 65535')


@attrs.define(kw_only=True, repr=False)
class LocalOptions:
    data_dir: str = option("/var/lib/ogelkit/neon",
                           doc="Directory holding one data directory per branch "
                               "(<data_dir>/<tenant>/<database>/pgdata). When the gateway "
                               "runs as root, the os_user must be able to reach it.")
    pg_bin: str = option("/usr/lib/postgresql/15/bin",
                         doc="Directory of initdb, pg_ctl, pg_basebackup and postgres.")
    os_user: str = option("postgres", doc="OS user the computes run as when the gateway runs "
                                          "as root (PostgreSQL refuses to run as root).")
    port_range: str = option("55100-55999", validator=_port_range,
                             doc='Loopback TCP ports computes listen on ("LOW-HIGH"); a free '
                                 "one is picked at every start.")
    max_running_computes: int = option(
        20, validator=validators.at_least_one,
        doc="Most computes running at once in this gateway. Starting one more first puts the "
            "least recently used compute without clients to sleep; when every running "
            "compute has clients the start is refused (53300).")
    start_timeout: Duration = option(30.0, validator=validators.positive,
                                     doc="Deadline for a compute to start (crash recovery "
                                         "included) and answer SELECT 1.")
    stop_timeout: Duration = option(30.0, validator=validators.positive,
                                    doc="Deadline for pg_ctl stop -m fast.")
    branch_method: Literal["auto", "basebackup", "copy"] = option(
        "auto", doc='How a branch copies its parent: "basebackup" = pg_basebackup from the '
                    'running parent (woken if asleep); "copy" = cp -a --reflink=auto of the '
                    'stopped parent (a running parent without clients is put to sleep '
                    'first); "auto" = basebackup when the parent is running, copy otherwise.')
    shared_buffers: Size = option(16 * 1024 * 1024, doc="shared_buffers of each compute.")
    max_connections: int = option(25, validator=validators.at_least_one,
                                  doc="max_connections of each compute (pool_size and the "
                                      "tier's connection limit must fit under it).")
    stop_computes_on_close: bool = option(
        True, doc="Stop the computes this process started when the gateway shuts down "
                  "(computes found running at startup are adopted, and left running).")

    def __repr__(self) -> str:  # the docs' default column
        return "its own defaults (table below)"


@attrs.define(kw_only=True, repr=False)
class CloudOptions:
    api_url: str = option("https://console.neon.tech/api/v2", doc="Base URL of Neon's API v2.")
    api_key_env: str = option("NEON_API_KEY", doc="Environment variable holding the API key "
                                                  "(never put the key in the config file).")
    project: Literal["platform", "tenant"] = option(
        "platform", doc='"platform": every tenant database is a branch of one project; '
                        '"tenant": one project per tenant.')
    project_id: str | None = option(None, doc='With project = "platform": the existing '
                                              "project to use; unset = create (or find) one "
                                              "named project_name.")
    project_name: str = option("ogelkit", doc="Name of the platform project, and prefix of "
                                              "per-tenant project names.")
    region_id: str = option("aws-us-east-2", doc="Region of projects created by the gateway.")
    pg_version: int = option(15, doc="PostgreSQL major version of created projects.")
    autoscaling_min_cu: float = option(0.25, doc="Smallest compute size (CU) of endpoints.")
    autoscaling_max_cu: float = option(0.25, doc="Largest compute size (CU) of endpoints.")
    request_timeout: Duration = option(30.0, validator=validators.positive,
                                       doc="Deadline of one HTTP request to the API.")
    operation_timeout: Duration = option(120.0, validator=validators.positive,
                                         doc="Deadline for the operations of one call to "
                                             "reach finished.")
    retry_budget: Duration = option(60.0, validator=validators.positive,
                                    doc="How long 423/503/429 answers are retried before the "
                                        "call fails.")
    tls: Literal["verify-full", "require"] = option(
        "verify-full", doc='Upstream connections to endpoints use TLS (Neon accepts no other), '
                           'with SNI = the endpoint host. "verify-full" checks the certificate '
                           'and host name against the system CAs (or ca_file); "require" only '
                           'encrypts (a test stand-in with a self-signed certificate).')
    ca_file: str = option("", doc="PEM file of the CAs that sign the endpoints' certificates "
                                  "(empty: the system's).")

    def __repr__(self) -> str:  # the docs' default column
        return "its own defaults (table below)"


@attrs.define(kw_only=True)
class NeonOptions(PostgresOptions):
    dsn: str = option("", doc="Unused by the neon backend (each branch has its own compute); "
                              "kept for the shared Postgres options.")
    driver: Literal["local", "cloud"] = option(
        "local", doc='"local": a small PostgreSQL 15 cluster per branch, started and stopped '
                     'by the gateway; "cloud": branches and endpoints through Neon\'s API v2.')
    local: LocalOptions = option(factory=LocalOptions, doc="Options of the local driver.")
    cloud: CloudOptions = option(factory=CloudOptions, doc="Options of the cloud driver.")
    pool_size: int = option(5, validator=validators.at_least_one,
                            doc="Most server connections per tenant database (also capped by "
                                "the tier's connection limit and the compute's "
                                "max_connections).")

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.driver == "local" and self.pool_size > self.local.max_connections - 3:
            raise ValueError("pool_size must leave 3 of the compute's max_connections free "
                             "(probes, EXPLAIN, branching)")
