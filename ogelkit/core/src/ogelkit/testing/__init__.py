"""Helpers for testing ogelkit plugins (install ``ogelkit-core[testing]``).

Enable the pytest fixtures with ``pytest_plugins = ["ogelkit.testing.plugin"]`` in your
``conftest.py``; run the contract suites by subclassing ``LayerContract`` /
``BackendContract`` from ``ogelkit.testing.contracts``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from ogelkit.chain import Chain
from ogelkit.config import Config, ConfigErrors, parse_config
from ogelkit.context import GatewayContext
from ogelkit.control.records import TenantRecord
from ogelkit.control.store import open_store
from ogelkit.directory import Directory
from ogelkit.metrics import Metrics
from ogelkit.model import Operation, Session
from ogelkit.plugins import Plugins, load_plugins
from ogelkit.testing.gateway import (
    GatewayProcess,
    RunningGateway,
    gateway_thread,
    running_gateway,
    test_secret_key,
)

__all__ = [
    "Chain",
    "GatewayProcess",
    "RunningGateway",
    "config_errors",
    "gateway_thread",
    "isolated_plugins",
    "load_plugins",
    "make_operation",
    "make_session",
    "minimal_config",
    "running_gateway",
    "test_context",
    "test_secret_key",
]


# ``Chain`` (the compiled layer chain: ``Chain([layer]).admit(op)``, ``.complete(op)``,
# ``.connect(session)``) is re-exported for layer unit tests; building one is the runtime's job.


def isolated_plugins(*plugins: tuple[str, object], entry_points: bool = False) -> Plugins:
    """A plugin set with only ``plugins`` registered (no installed entry points by default)."""
    return load_plugins(entry_points=entry_points, extra=plugins)


def minimal_config(extra: str = "", *, control_url: str = "sqlite:///:memory:") -> str:
    """A valid config text on free ports with an in-memory control plane; append tables."""
    return (f'[listen]\nhost = "127.0.0.1"\nhttp = 0\n\n'
            f'[gateway]\ndrain_timeout = "5s"\nadmin_token = "test-admin-token"\n\n'
            f'[control]\nurl = "{control_url}"\nsecret_key = "{test_secret_key()}"\n\n{extra}')


def config_errors(text: str, plugins: Plugins | None = None,
                  env: Mapping[str, str] | None = None) -> list[str]:
    """The exact error lines a config produces ([] when valid)."""
    try:
        parse_config(text, plugins or load_plugins(), env=env or {}, file="config.toml")
    except ConfigErrors as exc:
        return exc.messages
    return []


@asynccontextmanager
async def test_context(config: Config | str | None = None, *,
                       plugins: Plugins | None = None) -> AsyncIterator[GatewayContext]:
    """An opened ``GatewayContext`` (store migrated, no listeners) for unit tests of layers
    and backends."""
    plugins = plugins or load_plugins()
    if config is None or isinstance(config, str):
        config = parse_config(config or minimal_config(), plugins, env={})
    store = open_store(config.control.url, config.control.secret_key)
    await store.open()
    await store.migrate()
    try:
        ctx = GatewayContext(config, plugins, store, Metrics(),
                             Directory(store, config.tiers, ttl=config.control.cache_ttl))
        yield ctx
        await ctx.close_state()
    finally:
        await store.close()


test_context.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


def make_session(ctx: GatewayContext | None = None, *, tenant: str = "acme", tier: str = "free",
                 protocol: str = "test", database: str = "main",
                 client_addr: str = "127.0.0.1:40000") -> Session:
    """A session as a front door builds it after authentication."""
    from ogelkit.tiers import DEFAULT_TIER_TABLE
    tiers = ctx.tiers if ctx is not None else DEFAULT_TIER_TABLE
    session = Session(protocol, client_addr, user=tenant)
    session.tenant = TenantRecord(tenant, tier)
    session.tier = tiers[tier]
    session.database = database
    session.authenticated = True
    return session


def make_operation(session: Session, name: str = "SELECT", text: str | None = "SELECT 1",
                   kind: str = "query", size: int = 16) -> Operation:
    return Operation(session, kind, name, text, size)

