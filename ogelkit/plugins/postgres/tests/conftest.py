"""Fixtures of the Postgres plugin's end-to-end tests (helpers: ``ogelkit_postgres.testing``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ogelkit_postgres.testing import PgGateway, Tenant, pg_gateway, unique


@pytest.fixture(scope="module")
def tx_gw() -> Iterator[PgGateway]:
    with pg_gateway([Tenant(unique("pgtx")), Tenant(unique("pgtx"))],
                    backend_options="pool_size = 10\nquery_wait_timeout = \"10s\"") as gw:
        yield gw


@pytest.fixture(scope="module")
def session_gw() -> Iterator[PgGateway]:
    with pg_gateway([Tenant(unique("pgss"))], mode="session") as gw:
        yield gw

