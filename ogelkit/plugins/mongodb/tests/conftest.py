"""Fixtures: a gateway on free ports in front of each available upstream, with unique tenants.

The upstreams are FerretDB (always, from ``scripts/services.sh``) and a real MongoDB when
``OGELKIT_TEST_MONGODB_URL`` is set: every gateway test runs once per upstream. Without the
variable the MongoDB parameter is simply not generated (nothing is skipped).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mongo_support import UPSTREAMS, Gateway, drop_upstream, gateway_config

from ogelkit.testing import gateway_thread


@pytest.fixture(params=UPSTREAMS)
def upstream(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def make_gateway(upstream: str, suffix: str) -> Iterator[Callable[..., Any]]:
    """``make_gateway({"a": {...}}, layers=..., plugins=...)`` -> Gateway; tenant slugs get the
    test's unique suffix appended (``gw.tenants["a"]`` is the real slug)."""
    stack: list[Any] = []

    def make(tenants: dict[str, dict[str, Any]] | None = None, *, layers: str = "",
             plugins: Any = None, backend_extra: str = "", session: bool = True) -> Gateway:
        tenants = tenants or {"a": {}}
        real = {f"{name}-{suffix}": spec for name, spec in tenants.items()}
        cm = gateway_thread(gateway_config(upstream, real, layers=layers, session=session,
                                           backend_extra=backend_extra), plugins=plugins)
        running = cm.__enter__()
        stack.append(cm)
        gw = Gateway(running, upstream, {name: f"{name}-{suffix}" for name in tenants})
        stack.append(gw)
        return gw

    yield make
    for item in reversed(stack):
        if isinstance(item, Gateway):
            for client in item.clients:
                try:
                    client.close()
                except Exception:  # closed by the test already
                    pass
        else:
            item.__exit__(None, None, None)
    drop_upstream(upstream, suffix)
