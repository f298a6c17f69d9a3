"""Fairness between tenants at the Postgres door (issue 16): the work one tenant's
connections do per event-loop turn is bounded together, not per connection, so a tenant
flooding from many connections cannot make every turn (every other tenant's latency) long.
Real gateway, real sockets; the gateway's loop turns are counted from inside its loop."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
from ogelkit_postgres import connection as pgconn
from ogelkit_postgres import wire as pg
from ogelkit_postgres.testing import RawClient, Tenant, pg_gateway, unique

FLOODER = Tenant(unique("pgff"), tier="pro")
OTHER = Tenant(unique("pgfo"), tier="pro")
ONE = pg.message(b"P", b"\0SELECT 1\0" + pg._h.pack(0))


@pytest.fixture(scope="module")
def gw():
    with pg_gateway([FLOODER, OTHER], backend_options='pool_size = 12\nquery_wait_timeout = "20s"') as gw:
        yield gw


class TurnCounter:
    """Counts the gateway loop's turns (a task that yields once per turn) and the bytes of
    client messages each tenant's connections scanned in each turn."""

    def __init__(self, gw, monkeypatch):
        self.gw = gw
        self.turn = 0
        self.scanned: Counter[tuple[str, int]] = Counter()
        self.stop = False
        original = pgconn.PostgresConnection._process

        def process(conn, data, pos, run, resumed):
            original(conn, data, pos, run, resumed)
            at = conn.held_at
            if at is not None and at[0] is data:  # deferred to the next turn from there
                end = at[1]
            elif conn.held is not None:  # waiting for a server: the rest is held
                end = len(data) - len(conn.held)
            else:
                end = len(data) - len(conn.rbuf)
            self.scanned[(conn.session.tenant_slug, self.turn)] += end - pos

        monkeypatch.setattr(pgconn.PostgresConnection, "_process", process)

    async def _spin(self) -> None:
        while not self.stop:
            self.turn += 1
            await asyncio.sleep(0)

    def __enter__(self) -> TurnCounter:
        async def start() -> None:
            self.task = asyncio.get_running_loop().create_task(self._spin())

        self.gw.call(start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True

    def most_in_one_turn(self, tenant: Tenant) -> int:
        return max((n for (slug, _), n in self.scanned.items() if slug == tenant.slug), default=0)


def logged_in(gw, tenant: Tenant) -> RawClient:
    raw = RawClient(gw.port, timeout=60)
    assert raw.login(tenant.slug, tenant.password)[-1] == (b"Z", b"I")
    return raw


def test_a_tenant_flooding_from_many_connections_gets_one_share_per_turn(gw, monkeypatch):
    # 12 connections each pipelining 3,000 Parse messages: with a per-connection bound only
    # (64 messages), every turn scanned 12 x 64 of this tenant's messages.
    raws = [logged_in(gw, FLOODER) for _ in range(12)]
    batch = ONE * 3000 + pg.SYNC
    try:
        with TurnCounter(gw, monkeypatch) as turns:
            for raw in raws:
                raw.send(batch)
            replies = [raw.until(b"Z") for raw in raws]
        for msgs in replies:
            assert [k for k, _ in msgs].count(b"1") == 3000
            assert msgs[-1] == (b"Z", b"I")
        # (a connection resumed with a server may take one message over the share, and the
        # counted turns and the share's need not start at the same callback: one more batch)
        bound = (pgconn.TENANT_UNITS_PER_TURN + pgconn.MESSAGES_PER_TURN) * len(ONE) + 5
        assert turns.most_in_one_turn(FLOODER) <= bound, (
            f"{turns.most_in_one_turn(FLOODER)} bytes of one tenant's messages in one turn"
        )
        assert turns.most_in_one_turn(FLOODER) > 0
    finally:
        for raw in raws:
            raw.close()


def test_the_other_tenant_keeps_its_own_share_during_a_flood(gw, monkeypatch):
    # The flooding tenant's share is its own: another tenant's query is scanned in the turn
    # it arrives, and both are answered correctly.
    raws = [logged_in(gw, FLOODER) for _ in range(6)]
    other = logged_in(gw, OTHER)
    batch = ONE * 3000 + pg.SYNC
    got: list = []
    try:
        with TurnCounter(gw, monkeypatch) as turns:
            for raw in raws:
                raw.send(batch)
            t = threading.Thread(target=lambda: got.extend(raw.until(b"Z") for raw in raws))
            t.start()
            for _ in range(20):
                other.send(pg.query("SELECT 42"))
                msgs = other.until(b"Z")
                assert [b for k, b in msgs if k == b"D"] == [pg._h.pack(1) + pg._i.pack(2) + b"42"]
            t.join(60)
        assert len(got) == 6 and all(m[-1] == (b"Z", b"I") for m in got)
        assert turns.most_in_one_turn(OTHER) > 0
    finally:
        for raw in [*raws, other]:
            raw.close()


def test_a_big_query_is_a_debt_not_a_refusal(gw):
    # A 2 MB statement is 500 units, more than a turn's share: it still runs at once, and the
    # same connection's next statement too (the debt is paid by the turns in between).
    raw = logged_in(gw, FLOODER)
    try:
        for _ in range(3):
            text = "x" * 2_000_000
            raw.send(pg.query(f"SELECT length('{text}')") + pg.query("SELECT 7"))
            msgs = raw.until(b"Z")
            msgs += raw.until(b"Z")
            rows = [b for k, b in msgs if k == b"D"]
            assert rows == [pg._h.pack(1) + pg._i.pack(7) + b"2000000", pg._h.pack(1) + pg._i.pack(1) + b"7"]
    finally:
        raw.close()
