"""Gateway bugs found by running psycopg's own test suite through the gateway (docs/compat.md).

Each case is a minimal reproduction with the real client library. A case whose bug is
open is a strict xfail naming the bug; fixed ones are plain regression tests.
"""

from __future__ import annotations

import psycopg
from ogelkit_postgres.testing import PREFIX, Tenant, pg_gateway, unique

from ogelkit.testing.services import pg_dsn


def test_tenant_with_databases_on_two_backends_of_one_server() -> None:
    """Two Postgres backends on one server share the tenant's upstream role: the second
    backend's provisioning must reuse its password, or the first database's logins fail
    upstream (28P01)."""
    tenant = Tenant(unique("pgtwo"), databases=("main",))
    # A session-mode backend on the same server as the transaction-mode "pg", with the same
    # name prefix (as two backends with the default prefix have); the tenant's second
    # database lives there.
    second = (
        f'\n[backends.pgsess]\ntype = "postgres"\ndsn = "{pg_dsn()}"\n'
        f'pool_mode = "session"\nname_prefix = "{PREFIX}"\n'
        f'\n[tenants.{tenant.slug}.databases.other]\nbackend = "pgsess"\n'
    )
    with pg_gateway([tenant], backends=second) as gw:
        for database in ("main", "other"):
            with psycopg.connect(**gw.kw(tenant, database), connect_timeout=10) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
