"""Intelligence layer through the Postgres front door: wrong passwords from psql and asyncpg
get the (tenant, address) banned, shared through the real Redis; a reconnect storm against a
suspended tenant backs it off; the refusals reach the usage store and `tenants advise`."""

from __future__ import annotations

import time
import uuid

import anyio
import asyncpg
import pytest
import redis

from ogelkit.testing.services import redis_url

from .conftest import Tenant, thread_gateway


@pytest.fixture
def redis_prefix():
    prefix = f"test-intel-e2e-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url())
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def layers(prefix: str, extra: str = "") -> str:
    return ('[[layers]]\ntype = "session"\n\n'
            '[[layers]]\ntype = "usage"\nflush_interval = "300ms"\n\n'
            f'[[layers]]\ntype = "intelligence"\nkey_prefix = "{prefix}"\n'
            f'sync_interval = "200ms"\n{extra}')


async def asyncpg_error(gw, tenant, password=None) -> BaseException | None:
    try:
        conn = await asyncpg.connect(**gw.asyncpg_kw(tenant, password=password))
    except Exception as exc:
        return exc
    await conn.close()
    return None


def test_wrong_passwords_ban_the_tenant_and_address_on_every_replica(workdir, redis_prefix):
    tenant, neighbour = Tenant("free"), Tenant("free")
    with thread_gateway(workdir, [tenant, neighbour], layers=layers(redis_prefix),
                        state_url=redis_url()) as gw:
        for _ in range(5):  # psql with a wrong password: 28P01 each time
            out = gw.psql(tenant, "-c", "SELECT 1", password="wrong")
            assert out.returncode != 0
            assert 'password authentication failed for user' in out.stderr, out.stderr
        for _ in range(5):  # asyncpg too
            exc = anyio.run(asyncpg_error, gw, tenant, "wrong")
            assert exc is not None and exc.sqlstate == "28P01", exc

        # The right password does not help now: refused before the password is checked.
        out = gw.psql(tenant, "-c", "SELECT 1")
        assert out.returncode != 0 and "too many failed logins" in out.stderr, out.stderr
        exc = anyio.run(asyncpg_error, gw, tenant)
        assert exc is not None and exc.sqlstate == "53400"
        assert "too many failed logins" in str(exc)
        assert "Retry after" in (exc.hint or "")
        # Another tenant from the same address is not affected.
        ok = gw.psql(neighbour, "-c", "SELECT 1")
        assert ok.returncode == 0 and ok.stdout.strip() == "1", ok.stderr

        # The ban lives in Redis, so every replica of the gateway enforces it.
        client = redis.Redis.from_url(redis_url())
        try:
            blocks = client.zrange(f"{redis_prefix}intel:blocks", 0, -1, withscores=True)
            seconds, micros = client.time()
            now_ms = seconds * 1000 + micros // 1000
        finally:
            client.close()
        assert [m for m, _ in blocks] == [f"a|{tenant.slug}|127.0.0.1".encode()]
        assert 100_000 < blocks[0][1] - now_ms <= 120_000

        def metered():
            data = gw.cli.usage(tenant)
            rows = {d["database"]: d for d in data["databases"]}
            return rows if rows.get("", {}).get("auth_failures") == 10 else None

        deadline = time.monotonic() + 10
        while (rows := metered()) is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert rows[""]["banned"] == 2 and rows[""]["rejected"] == 2

        advice = gw.cli.json("tenants", "advise", tenant.slug)
        assert any("10 failed logins" in note for note in advice["notes"]), advice


def test_a_reconnect_storm_against_a_suspended_tenant_backs_it_off(workdir, redis_prefix):
    tenant = Tenant("starter")
    storm = 'storm_threshold = 3\nstorm_window = "2s"\nbackoff = "3s"\n'
    with thread_gateway(workdir, [tenant], layers=layers(redis_prefix, storm),
                        state_url=redis_url()) as gw:
        gw.cli("tenants", "suspend", tenant.slug)
        time.sleep(0.5)  # cache_ttl: the gateway has heard of it
        errors = []
        for _ in range(8):  # a client that reconnects at once, without backing off
            out = gw.psql(tenant, "-c", "SELECT 1")
            assert out.returncode != 0
            errors.append(out.stderr)
            if "backing off" in out.stderr:
                break
        assert "is suspended" in errors[0]
        assert "too many refused requests: backing off" in errors[-1], errors
        assert len(errors) >= 7  # 3/s over 2 s: the 6th refusal starts the back-off
        gw.cli("tenants", "resume", tenant.slug)
        time.sleep(0.5)
        out = gw.psql(tenant, "-c", "SELECT 1")
        assert "backing off" in out.stderr  # resumed, but still backing off
        time.sleep(3)
        out = gw.psql(tenant, "-c", "SELECT 1")
        assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
