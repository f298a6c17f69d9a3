"""Entry point ``postgres``: registers the PostgreSQL backend (and with it its front door)."""

from __future__ import annotations

import ogelkit
from ogelkit_postgres.backend import PostgresBackend


@ogelkit.hookimpl
def ogelkit_register_backends(register) -> None:
    register.backend(PostgresBackend)
