"""The database lifecycle through the Postgres front door, on the real test PostgreSQL:
scale to zero after the tier's idle time, wake on connect (psql, asyncpg), one shared wake
for a burst of clients, the wake timeout's error, restarts, and one scheduler for two
gateways sharing the state Redis."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import attrs
import httpx
import pytest
from ogelkit_postgres.backend import PostgresBackend
from ogelkit_postgres.options import PostgresOptions
from ogelkit_postgres.testing import PREFIX, PgGateway, Tenant, pg_gateway, unique

import ogelkit
from ogelkit.config import Duration, option
from ogelkit.control import open_store
from ogelkit.plugins import load_plugins
from ogelkit.testing import test_secret_key
from ogelkit.testing.gateway import metric_value
from ogelkit.testing.services import pg_dsn, redis_url, scratch_pg_database

USAGE = '[[layers]]\ntype = "usage"\nstorage_interval = "0s"\n'
TIER = '[tiers.nap]\nbase = "free"\nrank = 9\nidle_before_sleep = "2s"\n'


@attrs.define(kw_only=True)
class CountingOptions(PostgresOptions):
    wake_delay: Duration = option(0.0, doc="Extra seconds every wake takes (tests).")
    running: bool | None = option(None, doc="What running(db) answers (tests).")
    wake_fails: bool = option(False, doc="Every wake raises (tests).")
    sleep_delay: Duration = option(0.0, doc="Extra seconds every sleep takes (tests).")


class CountingPostgres(PostgresBackend):
    """The real shared-Postgres backend, counting wakes and sleeps; ``wake_delay`` makes a
    wake slow (a stand-in for a compute that takes long to start)."""

    type_name = "countingpg"
    Config = CountingOptions

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        self.wakes = 0
        self.sleeps = 0
        self.events: list[str] = []

    async def wake(self, db):
        self.wakes += 1
        self.events.append("wake")
        await asyncio.sleep(self.config.wake_delay)
        if self.config.wake_fails:
            raise OSError("the compute would not start (test)")
        await super().wake(db)

    async def sleep(self, db):
        self.sleeps += 1
        self.events.append("sleep")
        await asyncio.sleep(self.config.sleep_delay)
        await super().sleep(db)
        self.events.append("slept")

    async def running(self, db):
        return self.config.running


class _TestPlugin:
    @ogelkit.hookimpl
    def ogelkit_register_backends(self, register):
        register.backend(CountingPostgres)


def _plugins():
    return load_plugins(extra=[("lifecycle-test", _TestPlugin())])


def _backends(dsn_text: str) -> str:
    return "".join(
        f'\n[backends.{bid}]\ntype = "countingpg"\ndsn = "{dsn_text}"\n'
        f'name_prefix = "{PREFIX}"\nmin_pool_size = 2\nwake_delay = "{delay}"\n'
        for bid, delay in (("fast", "300ms"), ("slow", "4s"), ("broken", "0s"))
    ).replace('wake_delay = "0s"', 'wake_delay = "0s"\nwake_fails = true') + (
        f'\n[backends.drowsy]\ntype = "countingpg"\ndsn = "{dsn_text}"\n'
        f'name_prefix = "{PREFIX}"\nmin_pool_size = 2\nsleep_delay = "800ms"\n')


def _lifecycle(check: str = "200ms", timeout: str = "1500ms") -> str:
    return f'[lifecycle]\ncheck_every = "{check}"\nwake_timeout = "{timeout}"\n'


def _upstream_sessions(gw: PgGateway, tenant: Tenant, database: str = "main") -> int:
    db = gw.call(gw.context.store.get_database(tenant.slug, database))
    async def count() -> int:
        conn = await asyncpg.connect(pg_dsn())
        try:
            return await conn.fetchval("SELECT count(*) FROM pg_stat_activity "
                                       "WHERE datname = $1", db.upstream["dbname"])
        finally:
            await conn.close()
    return asyncio.run(count())


def _wait_state(gw: PgGateway, tenant: Tenant, state: str, timeout: float = 20.0,
                database: str = "main") -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        db = gw.call(gw.context.store.get_database(tenant.slug, database))
        if db.state == state and gw.context.lifecycle.state_of(tenant.slug, database) == state:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{tenant.slug}/{database} not {state} after {timeout}s "
                         f"(store: {db.state})")


async def _drop_counting(gw: PgGateway) -> None:
    store = gw.context.store
    for tenant in await store.list_tenants():
        for db in await store.list_databases(tenant.slug):
            backend = gw.context.backends.get(db.backend)
            if backend is not None and backend.type_name == "countingpg":
                await backend.deprovision(tenant, db)


@pytest.fixture(scope="module")
def sleepy():
    tenants = {"pg": Tenant(unique("dls"), tier="nap"),
               "fast": Tenant(unique("dls"), tier="nap", backend="fast"),
               "slow": Tenant(unique("dls"), tier="nap", backend="slow"),
               "broken": Tenant(unique("dls"), tier="nap", backend="broken"),
               "pro": Tenant(unique("dls"), tier="pro"),
               "drowsy": Tenant(unique("dls"), tier="nap", backend="drowsy")}
    with pg_gateway(list(tenants.values()), backend_options="min_pool_size = 2",
                    extra=TIER + _lifecycle() + USAGE, backends=_backends(pg_dsn()),
                    plugins=_plugins()) as gw:
        gw.t = tenants
        try:
            yield gw
        finally:
            gw.call(_drop_counting(gw), timeout=60)


def test_an_idle_database_sleeps_and_its_next_client_is_served(sleepy):
    gw, t = sleepy, sleepy.t["pg"]
    out = gw.psql(t, "-c", "CREATE TABLE kept (v int); INSERT INTO kept VALUES (1), (2), (3)")
    assert out.returncode == 0, out.stderr
    assert _upstream_sessions(gw, t) >= 1  # the pool holds server connections
    waited = _wait_state(gw, t, "asleep")
    assert waited < 15
    assert _upstream_sessions(gw, t) == 0  # asleep: no pooled upstream connection left
    assert gw.pool(t).stats()["size"] == 0
    wakes_before = gw.running.metric("ogelkit_database_wakes_total", kind="postgres",
                                     outcome="ok") if _has_wakes(gw) else 0.0

    out = gw.psql(t, "-c", "SELECT sum(v) FROM kept")  # served, no error, data intact
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6"
    db = gw.call(gw.context.store.get_database(t.slug, "main"))
    assert db.state == "active" and db.last_cold_start_at is not None
    assert db.last_cold_start_seconds is not None and db.last_cold_start_seconds >= 0
    assert gw.running.metric("ogelkit_database_wakes_total", kind="postgres",
                             outcome="ok") == wakes_before + 1
    assert gw.running.metric("ogelkit_cold_start_seconds_count", kind="postgres") >= 1
    assert gw.running.metric("ogelkit_database_sleeps_total", kind="postgres") >= 1
    assert gw.running.metric("ogelkit_databases", state="active") >= 1
    info = httpx.get(gw.running.url(f"/admin/tenants/{t.slug}"),
                     headers={"authorization": "Bearer test-admin-token"}).json()
    (listed,) = info["databases"]
    assert listed["state"] == "active" and listed["last_cold_start_seconds"] is not None
    usage = next(layer for layer in gw.context.layers if layer.type_name == "usage")
    assert gw.call(usage.flush())
    (total,) = gw.call(gw.context.store.usage_totals(t.slug, 0, time.time() + 3600, "main"))
    assert total["cold_starts"] == 1  # metered as usage, on the woken database
    assert total["cold_start_seconds"] == pytest.approx(db.last_cold_start_seconds, abs=0.05)

    async def with_asyncpg():
        conn = await asyncpg.connect(**gw.asyncpg_kw(t))
        try:
            return await conn.fetchval("SELECT count(*) FROM kept")
        finally:
            await conn.close()

    _wait_state(gw, t, "asleep")  # and again, through asyncpg
    assert asyncio.run(with_asyncpg()) == 3


def _has_wakes(gw: PgGateway) -> bool:
    try:
        gw.running.metric("ogelkit_database_wakes_total", kind="postgres", outcome="ok")
    except AssertionError:
        return False
    return True


def test_a_pro_database_never_sleeps_until_its_tier_changes(sleepy):
    gw, t = sleepy, sleepy.t["pro"]
    assert gw.psql(t, "-c", "SELECT 1").returncode == 0
    time.sleep(3)
    assert gw.context.lifecycle.state_of(t.slug, "main") in ("active", "idle")
    tenant = gw.call(gw.context.store.update_tenant(t.slug, tier="nap"))
    gw.context.directory.apply(tenant)
    assert _wait_state(gw, t, "asleep", timeout=10) < 10  # idle for 3 s > nap's 2 s


def test_twenty_clients_of_a_sleeping_database_share_one_wake(sleepy):
    gw, t = sleepy, sleepy.t["fast"]
    backend = gw.backend("fast")
    assert gw.psql(t, "-c", "CREATE TABLE n AS SELECT 7 AS v").returncode == 0
    _wait_state(gw, t, "asleep")
    before = backend.wakes

    async def burst():
        async def one():
            conn = await asyncpg.connect(**gw.asyncpg_kw(t), timeout=20)
            try:
                return await conn.fetchval("SELECT v FROM n")
            finally:
                await conn.close()
        return await asyncio.gather(*(one() for _ in range(20)), return_exceptions=True)

    results = asyncio.run(burst())
    assert results == [7] * 20, results
    assert backend.wakes - before == 1


def test_a_client_during_a_slow_sleep_waits_for_it_then_wakes_the_database(sleepy):
    """The state says asleep as soon as the sleep starts (new clients are held), but the
    backend's wake runs only once its sleep has finished: a compute is never asked to
    start while it is still being stopped."""
    gw, t = sleepy, sleepy.t["drowsy"]
    backend = gw.backend("drowsy")

    async def connect():
        conn = await asyncpg.connect(**gw.asyncpg_kw(t), timeout=20)
        try:
            return await conn.fetchval("SELECT 41 + 1")
        finally:
            await conn.close()

    assert asyncio.run(connect()) == 42  # awake now (it may have slept already)
    deadline = time.monotonic() + 20
    while backend.events[-1:] != ["sleep"]:  # in the middle of its next 0.8 s sleep
        assert time.monotonic() < deadline, backend.events
        time.sleep(0.02)
    assert gw.context.lifecycle.state_of(t.slug, "main") == "asleep"
    assert asyncio.run(connect()) == 42
    assert backend.events[-3:] == ["sleep", "slept", "wake"], backend.events
    assert gw.context.lifecycle.state_of(t.slug, "main") == "active"


def test_a_wake_longer_than_the_timeout_gives_a_clear_error(sleepy):
    gw, t = sleepy, sleepy.t["slow"]
    _wait_state(gw, t, "asleep")  # never used since the gateway started: asleep after 2 s

    async def connect():
        conn = await asyncpg.connect(**gw.asyncpg_kw(t), timeout=20)
        try:
            return await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(connect())
    err = info.value
    assert err.sqlstate == "57P03"
    assert "waking up" in err.args[0]
    assert "wake timeout" in (err.detail or "") and "1.5s" in err.detail
    assert "Retry" in (err.hint or "")
    assert gw.running.metric("ogelkit_wake_timeouts_total", kind="countingpg") >= 1
    out = gw.psql(t, "-c", "SELECT 1")  # psql shows the same, in its words
    assert out.returncode != 0 and "waking up" in out.stderr
    # The wake went on in the background: once done, clients are served.
    _wait_state(gw, t, "active", timeout=15)
    assert asyncio.run(connect()) == 1


def test_a_failed_wake_leaves_the_database_asleep_and_is_logged(sleepy, caplog):
    gw, t = sleepy, sleepy.t["broken"]
    _wait_state(gw, t, "asleep")
    before = gw.backend("broken").wakes

    async def connect():
        conn = await asyncpg.connect(**gw.asyncpg_kw(t), timeout=20)
        await conn.close()

    with (caplog.at_level("WARNING", logger="ogelkit.lifecycle"),
          pytest.raises(asyncpg.PostgresError) as info):
        asyncio.run(connect())
    assert info.value.sqlstate == "57P03"
    assert "could not be woken up" in info.value.args[0] and info.value.hint
    assert gw.backend("broken").wakes == before + 1
    assert any(r.getMessage().startswith("wake failed") and "would not start" in
               str(getattr(r, "error", "")) for r in caplog.records)
    time.sleep(0.5)  # the state write is asynchronous
    assert gw.call(gw.context.store.get_database(t.slug, "main")).state == "asleep"
    assert gw.context.lifecycle.state_of(t.slug, "main") == "asleep"
    assert gw.running.metric("ogelkit_database_wakes_total", kind="countingpg",
                             outcome="failed") >= 1


def test_the_lifecycle_survives_a_gateway_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/control.db"
    t = Tenant(unique("dlr"), tier="nap")
    with pg_gateway([t], extra=TIER + _lifecycle(), control_url=url, cleanup=False,
                    plugins=_plugins()) as gw:
        assert gw.psql(t, "-c", "CREATE TABLE r AS SELECT 42 AS v").returncode == 0
        _wait_state(gw, t, "asleep")

    async def interrupted_wake():  # as if a gateway died in the middle of a wake
        store = open_store(url, test_secret_key())
        await store.open()
        try:
            assert (await store.get_database(t.slug, "main")).state == "asleep"
            await store.transition(t.slug, "main", "waking")
        finally:
            await store.close()

    asyncio.run(interrupted_wake())
    with pg_gateway([t], extra=TIER + _lifecycle(), control_url=url,
                    plugins=_plugins()) as gw:
        assert gw.context.lifecycle.state_of(t.slug, "main") == "asleep"  # reloaded
        assert gw.call(gw.context.store.get_database(t.slug, "main")).state == "asleep"
        out = gw.psql(t, "-c", "SELECT v FROM r")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "42"
        assert gw.context.lifecycle.state_of(t.slug, "main") == "active"


def test_a_database_whose_backend_runs_nothing_is_asleep_at_start():
    t = Tenant(unique("dlz"), tier="pro", backend="fast")
    backends = _backends(pg_dsn()).replace('wake_delay = "300ms"', 'running = false')
    with pg_gateway([t], extra=TIER + _lifecycle(), backends=backends,
                    plugins=_plugins()) as gw:
        try:
            # Seeded active, but its backend says nothing runs: asleep before any idle time.
            assert gw.context.lifecycle.state_of(t.slug, "main") == "asleep"
            assert gw.psql(t, "-c", "SELECT 1").returncode == 0
            assert gw.backend("fast").wakes == 1
        finally:
            gw.call(_drop_counting(gw), timeout=60)


@pytest.mark.parametrize("lease", ["state-redis", "advisory-lock"])
def test_two_gateways_sharing_a_control_plane_run_one_scheduler(lease):
    """With [state]: a lease in Redis; without it, on a PostgreSQL control plane: a session
    advisory lock."""
    t = Tenant(unique("dl2"), tier="nap")
    extra = TIER + _lifecycle()
    if lease == "state-redis":
        extra += f'[state]\nurl = "{redis_url()}"\n'
    with scratch_pg_database() as control, \
            pg_gateway([t], extra=extra, control_url=control, plugins=_plugins()) as one, \
            pg_gateway([t], extra=extra, control_url=control, plugins=_plugins(),
                       cleanup=False) as two:
        # A client through each gateway, so both hold pooled connections.
        assert one.psql(t, "-c", "CREATE TABLE s AS SELECT 1 AS v").returncode == 0
        assert two.psql(t, "-c", "SELECT v FROM s").returncode == 0
        assert two.pool(t).stats()["size"] >= 1
        _wait_state(one, t, "asleep")
        _wait_state(two, t, "asleep")
        leaders = [gw for gw in (one, two) if gw.context.lifecycle.leader]
        assert len(leaders) == 1
        sleeps = sum(_metric_or_zero(gw, "ogelkit_database_sleeps_total", kind="postgres")
                     for gw in (one, two))
        assert sleeps == 1  # decided once
        row = one.call(one.context.store.lifecycle_leader())
        assert row[0] == leaders[0].context.gateway_id
        # The follower released its pool too: nothing is left upstream.
        assert one.pool(t).stats()["size"] == 0 and two.pool(t).stats()["size"] == 0
        assert _upstream_sessions(one, t) == 0
        assert two.psql(t, "-c", "SELECT v FROM s").stdout.strip() == "1"


def _metric_or_zero(gw: PgGateway, name: str, **labels: str) -> float:
    try:
        return metric_value(gw.running.url("/metrics"), name, **labels)
    except AssertionError:
        return 0.0


def test_fifty_databases_go_to_sleep_and_wake_with_their_data():
    names = tuple(f"db{i:02d}" for i in range(50))
    # One tenant, 50 databases: a tier with room for a pooled connection to each.
    tier = '[tiers.nap50]\nbase = "pro"\nrank = 10\nidle_before_sleep = "2s"\n'
    t = Tenant(unique("dl50"), tier="nap50", databases=names)
    with pg_gateway([t], backend_options="min_pool_size = 1", extra=tier + _lifecycle(),
                    plugins=_plugins()) as gw:

        async def touch_all(write: bool) -> list[int]:
            out = []
            for name in names:
                conn = await asyncpg.connect(**gw.asyncpg_kw(t, name), timeout=30)
                try:
                    if write:
                        await conn.execute(f"CREATE TABLE w AS SELECT {len(out)} AS v")
                    out.append(await conn.fetchval("SELECT v FROM w"))
                finally:
                    await conn.close()
            return out

        assert asyncio.run(touch_all(True)) == list(range(50))
        dbnames = [d.upstream["dbname"]
                   for d in gw.call(gw.context.store.list_databases(t.slug))]
        assert len(dbnames) == 50

        async def upstream_sessions() -> int:
            conn = await asyncpg.connect(pg_dsn())
            try:
                return await conn.fetchval("SELECT count(*) FROM pg_stat_activity "
                                           "WHERE datname = ANY($1::text[])", dbnames)
            finally:
                await conn.close()

        assert asyncio.run(upstream_sessions()) >= 25  # pooled connections, before sleep
        deadline = time.monotonic() + 60
        while gw.context.lifecycle.count("asleep") < 50:
            assert time.monotonic() < deadline, gw.context.lifecycle.count("asleep")
            time.sleep(0.2)
        assert sum(p.stats()["size"] for p in gw.pools().values()) == 0

        assert asyncio.run(upstream_sessions()) == 0
        assert gw.running.metric("ogelkit_databases", state="asleep") == 50
        assert asyncio.run(touch_all(False)) == list(range(50))  # every one woke, data intact


def test_a_wake_longer_than_the_login_timeout_is_still_served():
    """The handshake deadline (login_timeout) stops while a sleeping database wakes: the
    wake is bounded by [lifecycle] wake_timeout, not by the login's own limit."""
    tenant = Tenant(unique("dls"), tier="nap", backend="slowish")
    backends = (f'\n[backends.slowish]\ntype = "countingpg"\ndsn = "{pg_dsn()}"\n'
                f'name_prefix = "{PREFIX}"\nwake_delay = "2500ms"\nlogin_timeout = "1s"\n')
    with pg_gateway([tenant], backend_options='login_timeout = "1s"',
                    extra=TIER + _lifecycle(timeout="8s"), backends=backends,
                    plugins=_plugins()) as gw:
        try:
            _wait_state(gw, tenant, "asleep")

            async def connect():
                conn = await asyncpg.connect(**gw.asyncpg_kw(tenant), timeout=20)
                try:
                    return await conn.fetchval("SELECT 1")
                finally:
                    await conn.close()

            started = time.monotonic()
            assert asyncio.run(connect()) == 1
            assert time.monotonic() - started > 2.0  # it really was held for the wake
        finally:
            gw.call(_drop_counting(gw), timeout=60)
