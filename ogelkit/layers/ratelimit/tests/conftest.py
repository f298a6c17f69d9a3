"""Fixtures of the ratelimit tests: a unique Redis key prefix on the shared test Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from ogelkit.testing import services


@pytest.fixture
def key_prefix() -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"o7s-test-rl-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(services.redis_url())
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
