from contextlib import asynccontextmanager

import pytest
from ogelkit_layer_usage import plugin as usage_plugin

from ogelkit.testing import isolated_plugins, minimal_config, test_context
from ogelkit.testing.services import scratch_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def control_url(request, tmp_path):
    """Both control plane engines; PostgreSQL gets a throwaway database on the test server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/control.db"
        return
    with scratch_pg_database("ogelkit_usage") as url:
        yield url


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
