"""Control plane schema and its versioned migrations, one text for SQLite and PostgreSQL.

Each migration is a list of statements with ``{real}`` / ``{int}`` placeholders filled in per
dialect. Migrations only ever append: a released version is never edited.
"""

from __future__ import annotations

from ogelkit.control.records import (
    USAGE_FIELDS_V1,
    USAGE_FIELDS_V2,
    USAGE_FIELDS_V3,
    USAGE_FIELDS_V4,
)

# Migration 1 is rendered from the *frozen* version-1 field list, so adding a usage field
# never changes what a released migration creates; later fields arrive by ALTER TABLE.
_USAGE_COLUMNS = ",\n    ".join(
    f"{name} {{real}} NOT NULL DEFAULT 0"
    if name in ("duration", "connection_seconds", "vcpu_seconds", "gb_seconds")
    else f"{name} {{int}} NOT NULL DEFAULT 0"
    for name in USAGE_FIELDS_V1
)

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "tenants, credentials, databases, usage", [
        """CREATE TABLE tenants (
    slug TEXT PRIMARY KEY,
    tier TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL
)""",
        "CREATE INDEX tenants_updated_at ON tenants (updated_at)",
        # Salted SCRAM-SHA-256 verifiers only: the password itself is never stored.
        """CREATE TABLE credentials (
    tenant TEXT PRIMARY KEY REFERENCES tenants (slug) ON DELETE CASCADE,
    verifier TEXT NOT NULL,
    updated_at {real} NOT NULL
)""",
        # upstream: Fernet token of the JSON connection details (encrypted at rest).
        """CREATE TABLE databases (
    tenant TEXT NOT NULL REFERENCES tenants (slug) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    backend TEXT NOT NULL,
    upstream TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    created_at {real} NOT NULL,
    PRIMARY KEY (tenant, name)
)""",
        # Usage survives tenant deletion: it is billing history.
        f"""CREATE TABLE usage_events (
    id TEXT PRIMARY KEY,
    ts {{real}} NOT NULL,
    tenant TEXT NOT NULL,
    dbname TEXT NOT NULL,
    kind TEXT NOT NULL,
    gateway TEXT NOT NULL DEFAULT '',
    {_USAGE_COLUMNS}
)""",
        "CREATE INDEX usage_events_tenant_ts ON usage_events (tenant, ts)",
        f"""CREATE TABLE usage_rollups (
    tenant TEXT NOT NULL,
    dbname TEXT NOT NULL,
    hour {{real}} NOT NULL,
    {_USAGE_COLUMNS},
    PRIMARY KEY (tenant, dbname, hour)
)""",
    ]),
    (2, "usage rejection breakdown, layer reports", [
        *(f"ALTER TABLE {table} ADD COLUMN {name} {{int}} NOT NULL DEFAULT 0"
          for table in ("usage_events", "usage_rollups") for name in USAGE_FIELDS_V2),
        # A layer's latest findings per subject (cost calibration per backend ...), for
        # the CLI to read without a running gateway. body is JSON.
        """CREATE TABLE layer_reports (
    layer TEXT NOT NULL,
    subject TEXT NOT NULL,
    gateway TEXT NOT NULL DEFAULT '',
    updated_at {real} NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (layer, subject)
)""",
    ]),
    (3, "database lifecycle: activity, cold starts, requested state, scheduler leader", [
        "ALTER TABLE databases ADD COLUMN last_active_at {real} NOT NULL DEFAULT 0",
        "ALTER TABLE databases ADD COLUMN last_cold_start_at {real}",
        "ALTER TABLE databases ADD COLUMN last_cold_start_seconds {real}",
        "ALTER TABLE databases ADD COLUMN state_changed_at {real} NOT NULL DEFAULT 0",
        # "asleep" / "active" asked for by `ogelkit databases sleep|wake`; the gateway that
        # runs the lifecycle scheduler applies it and clears it.
        "ALTER TABLE databases ADD COLUMN requested_state TEXT",
        *(f"ALTER TABLE {table} ADD COLUMN {name} "
          + ("{real}" if name == "cold_start_seconds" else "{int}") + " NOT NULL DEFAULT 0"
          for table in ("usage_events", "usage_rollups") for name in USAGE_FIELDS_V3),
        # One row: which gateway runs the lifecycle scheduler and when it last said so
        # (the CLI reads it to know whether a gateway will apply a request).
        """CREATE TABLE lifecycle_leader (
    id INTEGER PRIMARY KEY,
    gateway TEXT NOT NULL,
    heartbeat_at {real} NOT NULL
)""",
    ]),
    (4, "compute-seconds of databases with a compute of their own", [
        *(f"ALTER TABLE {table} ADD COLUMN {name} {{real}} NOT NULL DEFAULT 0"
          for table in ("usage_events", "usage_rollups") for name in USAGE_FIELDS_V4),
    ]),
]

LATEST = MIGRATIONS[-1][0]

DIALECTS = {
    "sqlite": {"real": "REAL", "int": "INTEGER", "greatest": "MAX"},
    "postgres": {"real": "DOUBLE PRECISION", "int": "BIGINT", "greatest": "GREATEST"},
}


def render(statement: str, dialect: str) -> str:
    return statement.format(**DIALECTS[dialect])
