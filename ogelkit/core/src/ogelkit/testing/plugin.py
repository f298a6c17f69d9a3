"""pytest plugin for ogelkit plugin authors: ``pytest_plugins = ["ogelkit.testing.plugin"]``.

Fixtures:

``ogelkit_plugins``   an isolated plugin set (no entry points) plus whatever the test
                      registers with ``register_plugin``; ``check_pending`` problems fail.
``register_plugin``   ``register_plugin(module_or_object, name=...)`` for one test.
``load_test_config``  ``load_test_config(text)`` -> validated ``Config`` or ``ConfigErrors``
                      with ``.messages``, using the fixture's plugin set.
``anyio_backend``     "asyncio" (the gateway runs on asyncio/uvloop).
``redis_key_prefix``  a key prefix no other test uses on the shared test Redis; its keys are
                      deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from ogelkit.config import Config, parse_config
from ogelkit.plugins import Plugins, load_plugins


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Registry:
    def __init__(self) -> None:
        self.extra: list[tuple[str, object]] = []
        self._plugins: Plugins | None = None

    def add(self, obj: object, name: str | None = None) -> None:
        self.extra.append((name or str(getattr(obj, "__name__", repr(obj))), obj))
        self._plugins = None

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            self._plugins = load_plugins(entry_points=False, extra=self.extra)
            if self._plugins.errors:
                pytest.fail("plugin problems: " + "; ".join(self._plugins.errors))
        return self._plugins


@pytest.fixture
def _ogelkit_registry() -> _Registry:
    return _Registry()


@pytest.fixture
def register_plugin(_ogelkit_registry: _Registry) -> Callable[..., None]:
    return _ogelkit_registry.add


@pytest.fixture
def ogelkit_plugins(_ogelkit_registry: _Registry) -> Plugins:
    return _ogelkit_registry.plugins


@pytest.fixture
def load_test_config(_ogelkit_registry: _Registry) -> Callable[[str], Config]:
    def load(text: str, env: dict[str, str] | None = None) -> Config:
        return parse_config(text, _ogelkit_registry.plugins, env=env or {}, file="config.toml")
    return load


@pytest.fixture
def redis_key_prefix() -> Iterator[str]:
    import redis

    from ogelkit.testing import services

    prefix = f"o7s-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(services.redis_url())
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
