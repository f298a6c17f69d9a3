"""A PostgreSQL control plane that is unreachable from the start is a plain error (startup
reports it), not the "unavailable" state that only an outage after a success enters."""

from __future__ import annotations

import socket

import pytest

from ogelkit.control.postgres import PostgresStore
from ogelkit.testing import test_secret_key

pytestmark = pytest.mark.anyio


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_at_startup_is_an_error_each_time_and_closes_cleanly():
    url = f"postgresql://postgres:postgres@127.0.0.1:{closed_port()}/nothing"
    store = PostgresStore(url, test_secret_key())
    await store.open()
    try:
        for _ in range(2):
            with pytest.raises(OSError) as info:
                await store.migrate()
            assert type(info.value).__name__ != "StoreUnavailable"
            assert store.unavailable is None
    finally:
        await store.close()
    assert store._probe is None
