"""Fixtures for the redis plugin's tests (helpers live in redis_support.py)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from redis_support import Gw, PrivateRedis, gateway, new_tenants


@pytest.fixture(scope="module")
def gw() -> Iterator[Gw]:
    with gateway(new_tenants(2)) as g:
        yield g


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:  # pragma: no cover - services.sh installs it
        pytest.fail("redis-server not installed: run scripts/services.sh up")
    server = PrivateRedis(["--notify-keyspace-events", "KEA"]).start()
    try:
        yield server
    finally:
        server.stop()
