import uuid
from contextlib import asynccontextmanager

import asyncpg
import pytest
from ogelkit_layer_usage import plugin as usage_plugin

from ogelkit.testing import isolated_plugins, minimal_config, test_context
from ogelkit.testing.services import pg_dsn


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(pg_dsn())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def control_url(request, tmp_path):
    """Both control plane engines; PostgreSQL gets a throwaway database on the test server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/control.db"
        return
    name = f"ogelkit_usage_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg_dsn().rsplit('/', 1)[0]}/{name}"
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def usage_layer(body: str = "", *, control_url: str = "sqlite:///:memory:",
                      extra_plugins=()):
    """A context with one opened usage layer configured by ``body`` (TOML lines)."""
    text = minimal_config('[[layers]]\ntype = "usage"\n' + body, control_url=control_url)
    plugins = isolated_plugins(("usage", usage_plugin), *extra_plugins)
    async with test_context(text, plugins=plugins) as ctx:
        spec = ctx.config.layers[0]
        layer = spec.cls(spec.options, name=spec.name, context=ctx)
        await layer.open()
        ctx.layers.append(layer)
        yield ctx, layer


@pytest.fixture
def make_usage():
    return usage_layer
