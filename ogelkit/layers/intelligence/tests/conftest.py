import uuid
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis
from ogelkit_layer_intelligence import plugin as intelligence_plugin

from ogelkit.testing import isolated_plugins, minimal_config, test_context
from ogelkit.testing.services import redis_url


@asynccontextmanager
async def intelligence_layer(body: str = "", *, state_url: str | None = None,
                             control_url: str = "sqlite:///:memory:"):
    """A context with one opened intelligence layer configured by ``body`` (TOML lines)."""
    state = f'[state]\nurl = "{state_url}"\n\n' if state_url else ""
    text = minimal_config(state + '[[layers]]\ntype = "intelligence"\n' + body,
                          control_url=control_url)
    plugins = isolated_plugins(("intelligence", intelligence_plugin))
    async with test_context(text, plugins=plugins) as ctx:
        spec = ctx.config.layers[0]
        layer = spec.cls(spec.options, name=spec.name, context=ctx)
        await layer.open()
        ctx.layers.append(layer)
        try:
            yield ctx, layer
        finally:
            await layer.close()


@pytest.fixture
def make_intelligence():
    return intelligence_layer


@pytest.fixture
async def redis_prefix():
    """A key prefix of our own on the shared test Redis; its keys are deleted afterwards."""
    prefix = f"test-intel-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = aioredis.from_url(redis_url())
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
