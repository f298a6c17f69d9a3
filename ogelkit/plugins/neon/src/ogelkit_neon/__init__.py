"""ogelkit-neon: serverless Postgres for ogelkit (see docs/plugins/neon.md).

A ``NeonBackend`` is a ``PostgresBackend`` whose pools connect to one compute per tenant
database: a local PostgreSQL 15 cluster per branch (``driver = "local"``) or a Neon
endpoint through Neon's API v2 (``driver = "cloud"``).
"""

from ogelkit_neon.backend import NeonBackend
from ogelkit_neon.options import CloudOptions, LocalOptions, NeonOptions

__all__ = ["CloudOptions", "LocalOptions", "NeonBackend", "NeonOptions"]
