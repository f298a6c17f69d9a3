"""Auth-failure bans and retry-storm back-off, in one process (no shared state)."""

from __future__ import annotations

import time
import uuid

import anyio
import pytest
from ogelkit_layer_intelligence import IntelligenceLayer

from ogelkit.chain import Chain
from ogelkit.model import Reason, Reject, Session
from ogelkit.testing import make_operation, make_session, minimal_config
from ogelkit.testing.contracts import LayerContract
from ogelkit.testing.services import redis_url

pytestmark = pytest.mark.anyio


async def ban_by_failed_logins(drive, failures: int) -> None:
    """``failures`` wrong passwords from one address, then logins until one is banned
    (at once in process; after the replica's round trip to Redis when shared)."""
    for _ in range(failures):
        drive.failed_login(tier="free", tenant="acme", client_addr="10.9.9.9:5000")
    deadline = time.monotonic() + 10
    while True:
        session = await drive.connect(tier="free", tenant="acme", client_addr="10.9.9.9:5001")
        if session.rejection is not None or time.monotonic() > deadline:
            break
        drive.disconnect(session)
        await anyio.sleep(0.05)
    assert session.rejection is not None and session.rejection.reason == Reason.BANNED


class TestIntelligenceContract(LayerContract):
    layer_class = IntelligenceLayer
    options = {"auth_failures": 3, "ban": "1s", "latency_targets": {"free": "2s"}}

    async def provoke_refusal(self, drive):
        await ban_by_failed_logins(drive, 3)


class TestIntelligenceSharedContract(LayerContract):
    """The same with the real shared Redis as [state] (scripts loaded, nothing written)."""

    layer_class = IntelligenceLayer
    options = {"key_prefix": f"test-intel-contract-{uuid.uuid4().hex[:8]}:"}
    context_config = minimal_config(f'[state]\nurl = "{redis_url()}"\n')
    refusal_options = {"key_prefix": f"test-intel-contract-{uuid.uuid4().hex[:8]}:",
                       "auth_failures": 3, "ban": "5s", "sync_interval": "100ms"}

    async def provoke_refusal(self, drive):
        await ban_by_failed_logins(drive, 3)


def client(ctx, tenant: str, addr: str, known: bool) -> Session:
    """A connecting client: a known tenant, or a name the directory does not know."""
    return make_session(ctx, tenant=tenant, client_addr=addr) if known else Session(
        "test", addr, user=tenant)


def failed_login(ctx, tenant="acme", addr="10.1.1.1:5000", known=True) -> Session:
    s = client(ctx, tenant, addr, known)
    s.authenticated = False
    s.rejection = Reject(Reason.AUTH, "password authentication failed")
    return s


def login(chain: Chain, ctx, tenant="acme", addr="10.1.1.1:5001", known=True) -> Reject | None:
    s = client(ctx, tenant, addr, known)
    try:
        chain.auth(s)
    except Reject as rej:
        return rej
    return None


async def test_a_burst_of_failed_logins_bans_that_tenant_and_address(make_intelligence):
    async with make_intelligence('auth_failures = 10\nauth_window = "150s"\n') as (ctx, layer):
        chain = Chain([layer])
        for _ in range(9):
            chain.disconnect(failed_login(ctx))
        assert login(chain, ctx) is None  # 9 of 10: not yet
        chain.disconnect(failed_login(ctx))
        rej = login(chain, ctx)  # the right password would not even be checked now
        assert rej is not None and rej.reason == Reason.BANNED and rej.layer == "intelligence"
        assert 119 < rej.retry_after <= 120
        assert "10 failed logins" in rej.detail and "10.1.1.1" in rej.detail
        assert "ban #1" in rej.detail and rej.hint.startswith("Retry after")
        # Someone else: another address of the tenant, the same address for another tenant.
        assert login(chain, ctx, addr="10.9.9.9:5000") is None
        assert login(chain, ctx, tenant="zeta") is None
        metrics = ctx.metrics.render().decode()
        assert ('ogelkit_layer_decisions_total{decision="detected",layer="intelligence",'
                'reason="auth_burst",tier="free"} 1.0') in metrics
        assert ('decision="rejected",layer="intelligence",reason="banned",tier="free"} 1.0'
                in metrics)
        (ban,) = layer.blocks()
        assert ban["kind"] == "ban" and ban["tenant"] == "acme" and ban["address"] == "10.1.1.1"
        # A refusal of this layer's own is not another failure.
        banned = make_session(ctx, client_addr="10.1.1.1:6000")
        banned.rejection = rej
        chain.disconnect(banned)
        assert layer.describe()["auth_failures"] == 10


async def test_unknown_tenants_are_banned_by_the_name_they_claim(make_intelligence):
    async with make_intelligence("auth_failures = 3\n") as (ctx, layer):
        chain = Chain([layer])
        for _ in range(3):
            chain.disconnect(failed_login(ctx, tenant="nosuch", known=False))
        rej = login(chain, ctx, tenant="nosuch", known=False)
        assert rej is not None and rej.reason == Reason.BANNED
        # Same message shape as for a real tenant: a ban tells nothing about existence.
        assert rej.message == "too many failed logins: try again later"


async def test_failures_outside_the_window_do_not_add_up(make_intelligence):
    async with make_intelligence('auth_failures = 3\nauth_window = "200ms"\n') as (ctx, layer):
        chain = Chain([layer])
        for _ in range(2):
            chain.disconnect(failed_login(ctx))
        await anyio.sleep(0.25)
        chain.disconnect(failed_login(ctx))
        assert login(chain, ctx) is None


async def test_bans_escalate_and_are_forgotten_after_ban_memory(make_intelligence):
    body = ('auth_failures = 2\nban = "200ms"\nban_factor = 3\nmax_ban = "1s"\n'
            'ban_memory = "1s"\n')
    async with make_intelligence(body) as (ctx, layer):
        chain = Chain([layer])
        lengths = []
        for _ in range(3):
            for _ in range(2):
                chain.disconnect(failed_login(ctx))
            rej = login(chain, ctx)
            lengths.append(round(rej.retry_after, 1))
            await anyio.sleep(rej.retry_after + 0.02)
            assert login(chain, ctx) is None  # the ban ended
        assert lengths == [0.2, 0.6, 1.0]  # x3 each time, capped at max_ban
        await anyio.sleep(1.05)  # ban_memory passes: the next ban is a first one again
        for _ in range(2):
            chain.disconnect(failed_login(ctx))
        assert round(login(chain, ctx).retry_after, 1) == 0.2


async def test_a_retry_storm_backs_the_tenant_off_with_escalation(make_intelligence):
    body = ('storm_threshold = 20\nstorm_window = "1s"\nbackoff = "300ms"\n'
            'backoff_factor = 2\n')
    async with make_intelligence(body) as (ctx, layer):
        chain = Chain([layer])
        s = make_session(ctx, tenant="acme")
        await chain.connect(s)
        quiet = make_session(ctx, tenant="zeta")

        def storm(n):
            for _ in range(n):
                op = make_operation(s)
                op.rejection = Reject(Reason.RATE, "rate limited", layer="ratelimit")
                chain.complete(op)

        storm(19)
        assert chain.admit(make_operation(s)) is None  # 19/s < 20/s
        storm(1)
        with pytest.raises(Reject) as info:
            chain.admit(make_operation(s))
        first = info.value
        assert first.reason == Reason.BANNED and first.layer == "intelligence"
        assert 0.2 < first.retry_after <= 0.3 and "refusals per second" in first.detail
        assert login(chain, ctx) is not None  # new connections back off too
        assert chain.admit(make_operation(quiet)) is None  # other tenants are not affected
        # Refusals during the back-off (ours or others') do not extend it.
        storm(100)
        op = make_operation(s)
        op.rejection = first
        chain.complete(op)
        await anyio.sleep(first.retry_after + 0.02)
        assert chain.admit(make_operation(s)) is None
        storm(20)  # the storm goes on: the second back-off is twice as long
        with pytest.raises(Reject) as info:
            chain.admit(make_operation(s))
        assert 0.5 < info.value.retry_after <= 0.6
        assert layer.describe()["storms"] == 2
        kinds = [e["event"] for e in layer.describe()["recent"]]
        assert kinds == ["backoff", "backoff"]


async def test_refused_connections_count_toward_a_storm_but_auth_failures_do_not(make_intelligence):
    async with make_intelligence('storm_threshold = 5\nstorm_window = "1s"\n'
                                 "auth_failures = 100\n") as (ctx, layer):
        chain = Chain([layer])
        for _ in range(10):
            chain.disconnect(failed_login(ctx))
        assert login(chain, ctx) is None
        for _ in range(5):
            capped = make_session(ctx)
            capped.rejection = Reject(Reason.CONNECTIONS, "cap", layer="gatekeeper")
            chain.disconnect(capped)
        rej = login(chain, ctx)
        assert rej is not None and "backing off" in rej.message


async def test_policy_refusals_do_not_cascade_into_a_back_off(make_intelligence, caplog):
    """A command refused by design (forbidden), looped 1000 times, never backs off the
    tenant's allowed traffic; a real storm does, and its log line keeps its log level."""
    async with make_intelligence('storm_threshold = 5\nstorm_window = "1s"\n') as (ctx, layer):
        chain = Chain([layer])
        looping, reading = make_session(ctx, tenant="acme"), make_session(ctx, tenant="acme")
        await chain.connect(looping)
        await chain.connect(reading)
        for _ in range(1000):
            op = make_operation(looping)
            op.rejection = Reject(Reason.FORBIDDEN, "ERR 'CONFIG' is not allowed")
            chain.complete(op)
            assert chain.admit(make_operation(reading)) is None
        assert layer.describe()["storms"] == 0
        with caplog.at_level("WARNING", logger="ogelkit.layer.intelligence"):
            for _ in range(5):
                op = make_operation(looping)
                op.rejection = Reject(Reason.RATE, "rate limited", layer="ratelimit")
                chain.complete(op)
        with pytest.raises(Reject):
            chain.admit(make_operation(reading))
        record = next(r for r in caplog.records if r.getMessage().startswith("retry storm"))
        assert record.levelname == "WARNING" and record.escalation_level == 1
        assert not hasattr(record, "level")
        assert layer.describe()["recent"][-1]["level"] == 1  # the API keeps its key


async def test_stale_entries_are_pruned(make_intelligence):
    body = 'auth_failures = 2\nauth_window = "100ms"\nban = "100ms"\nban_memory = "100ms"\n'
    async with make_intelligence(body) as (ctx, layer):
        chain = Chain([layer])
        for i in range(50):
            chain.disconnect(failed_login(ctx, addr=f"10.0.0.{i}:1"))
        for _ in range(2):
            chain.disconnect(failed_login(ctx, addr="10.0.1.1:1"))
        assert layer._failures and layer._blocks
        await anyio.sleep(0.25)
        layer._prune(time.monotonic())
        assert not layer._failures and not layer._blocks and not layer._bans
