"""OutputGuard (``[limits]``): the per-connection and per-gateway ceilings on replies that
clients do not read, and the config section they come from."""

from __future__ import annotations

import asyncio

import pytest

from ogelkit import Reason, Reject
from ogelkit.config import parse_config
from ogelkit.limits import CHECK_EVERY, OutputGuard
from ogelkit.testing import minimal_config


class FakeTransport:
    def __init__(self, size: int):
        self.size = size
        self.closing = False
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.size

    def is_closing(self) -> bool:
        return self.closing


class FakeConn:
    def __init__(self, size: int):
        self.transport: FakeTransport | None = FakeTransport(size)
        self.refusals: list[Reject] = []

    def close_with(self, reject: Reject) -> None:
        self.refusals.append(reject)
        assert self.transport is not None
        self.transport.closing = True

    def abort(self) -> None:
        assert self.transport is not None
        self.transport.aborted = True
        self.transport = None


@pytest.mark.anyio
async def test_a_connection_over_its_ceiling_is_refused_then_aborted():
    guard = OutputGuard(connection_limit=1000, gateway_limit=10_000)
    small, big = FakeConn(500), FakeConn(1500)
    guard.writing_paused(small)
    guard.writing_paused(big)
    await asyncio.sleep(CHECK_EVERY * 2)
    assert [r.reason for r in big.refusals] == [Reason.MEMORY]
    assert "out of memory" in big.refusals[0].message and big.refusals[0].detail
    assert small.refusals == [] and guard.refused == 1
    transport = big.transport
    await asyncio.sleep(1.1)  # the refused client did not read its error: dropped
    assert transport is not None and transport.aborted
    assert small.transport is not None and not small.transport.aborted


@pytest.mark.anyio
async def test_over_the_gateway_ceiling_the_largest_buffers_go_first():
    guard = OutputGuard(connection_limit=10_000, gateway_limit=10_000)
    conns = [FakeConn(size) for size in (6000, 3000, 2500, 1000)]
    for c in conns:
        guard.writing_paused(c)
    await asyncio.sleep(CHECK_EVERY * 2)
    # 12,500 buffered: refusing the 6,000 one brings the total to 6,500, under the limit.
    assert [len(c.refusals) for c in conns] == [1, 0, 0, 0]
    guard.writing_resumed(conns[1])
    assert conns[1] not in guard.paused


@pytest.mark.anyio
async def test_a_connection_that_reads_again_is_not_watched():
    guard = OutputGuard(connection_limit=100, gateway_limit=1000)
    conn = FakeConn(5000)
    guard.writing_paused(conn)
    guard.writing_resumed(conn)
    await asyncio.sleep(CHECK_EVERY * 2)
    assert conn.refusals == [] and guard.paused == set()


def test_the_limits_section():
    config = parse_config(minimal_config(
        '[limits]\nmax_inflight = 16\nconnection_output = "2MB"\ngateway_output = "1GB"\n'),
        None)
    assert config.limits.max_inflight == 16
    assert config.limits.connection_output == 2 * 1024 * 1024
    assert config.limits.gateway_output == 1024 ** 3
    default = parse_config(minimal_config(""), None).limits
    assert (default.max_inflight, default.connection_output) == (128, 64 * 1024 * 1024)
