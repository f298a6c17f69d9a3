"""Entry point ``postgres``: registers the PostgreSQL backend and the Postgres front door."""

from __future__ import annotations

import ogelkit
from ogelkit_postgres.backend import PostgresBackend
from ogelkit_postgres.listener import PostgresFrontDoor


@ogelkit.hookimpl
def ogelkit_register_backends(register) -> None:
    register.backend(PostgresBackend)
    register.frontdoor(PostgresFrontDoor)
