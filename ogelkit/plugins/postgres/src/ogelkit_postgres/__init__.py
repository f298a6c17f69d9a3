"""ogelkit-postgres: PostgreSQL wire-protocol gateway backend for ogelkit.

See docs/plugins/postgres.md. The Neon plugin reuses the front door, the relay and the
pool: subclass ``PostgresBackend`` and override ``upstream_target`` (wake the compute).
"""

from ogelkit_postgres.backend import PostgresBackend
from ogelkit_postgres.listener import PostgresFrontDoor
from ogelkit_postgres.options import PostgresOptions

__all__ = ["PostgresBackend", "PostgresFrontDoor", "PostgresOptions"]
