"""Gateway bugs found by running psycopg's own test suite through the gateway (docs/compat.md).

Each case is a minimal reproduction with the real client library, recorded as a strict
xfail: it fails today because of the bug named in its reason; when the bug is fixed the
xfail turns into an XPASS failure, and the marker should be removed.
"""

from __future__ import annotations

import psycopg
import pytest
from ogelkit_postgres.testing import PREFIX, Tenant, pg_gateway, unique

from ogelkit.testing.services import pg_dsn


@pytest.mark.xfail(
    strict=True,
    reason=(
        "two postgres backends on one server give a tenant one upstream role (the role name "
        "does not depend on the backend), but PostgresBackend._known_password looks for the "
        "earlier password only among the same backend's databases: the second backend's "
        "provisioning ALTERs the role with a new password, and the first database's logins "
        "fail upstream (28P01, shown with the tenant's name)"
    ),
)
def test_tenant_with_databases_on_two_backends_of_one_server() -> None:
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
