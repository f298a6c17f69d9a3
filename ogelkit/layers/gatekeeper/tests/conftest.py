"""Fixtures of the gatekeeper tests."""

import pytest


@pytest.fixture
def key_prefix(redis_key_prefix: str) -> str:
    """A Redis key prefix no other test uses (ogelkit.testing's redis_key_prefix)."""
    return redis_key_prefix
