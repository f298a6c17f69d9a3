"""Cancellation-safe awaiting for the control plane engines.

A statement handed to a worker thread (SQLite) or sent to a server (PostgreSQL) keeps
running when the task awaiting it is cancelled: a client resetting mid-login, a readiness
probe's timeout, a drain. The store must not release its connection (or its lock) while
the statement is still in flight, and must not skip the ROLLBACK that ends a transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def uninterrupted(aw: Awaitable[T], *, grace: float | None = None) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile (once or many
    times, by ``Task.cancel()`` or by an anyio cancel scope), then let the cancellation
    through: the caller still sees ``CancelledError``, but only once the work is over.

    With ``grace``, a cancelled caller waits that long at most: then ``aw`` itself is
    cancelled (for work that knows how to be interrupted, but is better left to finish)."""
    fut = asyncio.ensure_future(aw)
    cancelled: asyncio.CancelledError | None = None
    timer: asyncio.TimerHandle | None = None
    try:
        while not fut.done():
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError as exc:
                if fut.done() and fut.cancelled() and cancelled is None:
                    raise  # the work itself was cancelled, not the caller
                cancelled = cancelled or exc
                if grace is not None and timer is None and not fut.done():
                    timer = asyncio.get_running_loop().call_later(grace, fut.cancel)
    finally:
        if timer is not None:
            timer.cancel()
    if cancelled is not None:
        if not fut.cancelled():
            fut.exception()  # retrieved: the cancellation wins, not the result or error
        raise cancelled
    return fut.result()
