"""Helpers of the Neon plugin's tests: gateways whose tenants have Neon-local databases
(the data directory helpers are public, in ``ogelkit_neon.testing``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ogelkit_neon.testing import neon_backend_toml, new_data_dir, remove_data_dir, stop_all
from ogelkit_postgres.testing import PgGateway, Tenant, pg_gateway

__all__ = ["drop_neon", "neon_backend_toml", "neon_gateway", "new_data_dir", "stop_all"]


async def drop_neon(gw: PgGateway) -> None:
    store = gw.context.store
    for tenant in await store.list_tenants():
        for db in await store.list_databases(tenant.slug):
            backend = gw.context.backends.get(db.backend)
            if backend is not None and backend.type_name == "neon":
                with contextlib.suppress(Exception):
                    await backend.deprovision(tenant, db)


@contextlib.contextmanager
def neon_gateway(tenants: list[Tenant], *, local: str = "", extra: str = "",
                 backend_extra: str = "") -> Iterator[tuple[PgGateway, str]]:
    data_dir = new_data_dir()
    try:
        with pg_gateway(tenants, backends=neon_backend_toml(data_dir, local=local,
                                                            extra=backend_extra),
                        extra=extra) as gw:
            try:
                yield gw, data_dir
            finally:
                gw.call(drop_neon(gw), timeout=120)
    finally:
        remove_data_dir(data_dir)
