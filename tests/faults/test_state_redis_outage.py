"""The ``[state]`` Redis killed in the middle of a load and started again, under a real
``ogelkit run``: the layers that keep their state there (gatekeeper leases, rate-limit
buckets, the intelligence layer's failure counts and bans) fail open as documented
(``state_down = "open"``, the default; docs/layers/ratelimit.md, gatekeeper.md,
intelligence.md "When Redis is down"), so no client sees an error, and the usage layer
meters every command the clients sent, exactly.

The state store is a private ``redis-server`` of the test's own (SIGKILLed: an outage, not a
shutdown); the tenant's data lives on the workspace's shared Redis, which stays up.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ogelkit.testing.redis_server import PrivateRedis
from ogelkit.testing.services import redis_url

from .conftest import FaultGateway, Tenant, fault_gateway, wait_for

PLUGINS = "redis,session,usage,gatekeeper,ratelimit,intelligence"
CLIENTS = 4
PER_CLIENT = 800  # commands of each steady client
CHURN = 300  # commands of the client that reconnects every CHURN_EVERY commands
CHURN_EVERY = 20

BODY = f"""[backends.r]
type = "redis"
url = "{redis_url()}"

# A tier with a rate limit (so every command consults the shared bucket) far above the load.
[tiers.load]
base = "pro"
rank = 9
ops_per_second = 100000
burst = 100000
connections = 50

[[layers]]
type = "session"

[[layers]]
type = "gatekeeper"

[[layers]]
type = "ratelimit"
state_retry = "200ms"
prefetch = "0s"

[[layers]]
type = "intelligence"

[[layers]]
type = "usage"
flush_interval = "300ms"
"""


class Load:
    """redis-py clients sending a known number of commands, paced, counting what they saw."""

    def __init__(self, gw: FaultGateway, tenant: Tenant):
        self.gw, self.tenant = gw, tenant
        self.sent = 0  # commands whose reply the client got (each sent exactly once)
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def client(self) -> redis.Redis:
        # No retries: a command is sent once, and an error is seen, never hidden.
        return redis.Redis(
            host="127.0.0.1",
            port=self.gw.port("redis"),
            username=self.tenant.slug,
            password=self.tenant.password,
            socket_timeout=10,
            retry=Retry(NoBackoff(), 0),
            single_connection_client=True,
        )

    def steady(self, n: int) -> None:
        r = self.client()
        try:
            self._commands(r, n, f"steady{threading.get_ident()}")
        finally:
            r.close()

    def churn(self, n: int, every: int) -> None:
        done = 0
        while done < n:
            r = self.client()  # a new connection: a login through every layer
            try:
                self._commands(r, min(every, n - done), "churn")
            finally:
                r.close()
            done += every

    def _commands(self, r: redis.Redis, n: int, key: str) -> None:
        for i in range(n):
            try:
                if i % 2 == 0:
                    assert r.set(f"{key}:{i % 10}", i) is True
                else:
                    assert int(r.incr(f"{key}:n")) > 0
            except Exception as exc:
                with self.lock:
                    self.errors.append(exc)
                return
            with self.lock:
                self.sent += 1
            time.sleep(0.004)

    def done(self) -> int:
        with self.lock:
            return self.sent


@pytest.mark.slow
def test_state_redis_down_and_back_during_load(tmp_path):
    tenant = Tenant("fst", tier="load", databases={"main": "r"})
    with (
        PrivateRedis() as state,
        fault_gateway(
            tmp_path, [tenant], BODY, plugins=PLUGINS, listen=("redis",), state_url=state.url
        ) as gw,
    ):
        load = Load(gw, tenant)
        threads = [threading.Thread(target=load.steady, args=(PER_CLIENT,)) for _ in range(CLIENTS)]
        threads.append(threading.Thread(target=load.churn, args=(CHURN, CHURN_EVERY)))
        total = CLIENTS * PER_CLIENT + CHURN
        for t in threads:
            t.start()
        wait_for(lambda: load.done() >= total // 4 or load.errors, 30, "a quarter of the load")
        assert state_keys(state) > 0, "the layers never wrote to the [state] Redis"
        state.stop()  # SIGKILL, mid-load
        killed_at = load.done()
        time.sleep(1.5)  # clients keep loading, logins included, with the state store gone
        during = load.done() - killed_at
        state.start()  # back, empty, on the same port
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)

        assert not load.errors, load.errors[:3]
        assert load.done() == total
        assert during > 100, f"only {during} commands ran while the state store was down"
        # The outage was seen (the layers failed open), and it ended.
        opened = sum(
            gw.metric("ogelkit_state_unavailable_total", layer=layer, policy="open")
            for layer in ("ratelimit", "gatekeeper")
            if has_metric(gw, layer)
        )
        assert opened > 0, "no layer noticed the state store was down"
        wait_for(lambda: gw.log_lines("shared state available again"), 15, "the state store seen back")
        # The layers use the restarted store again.
        wait_for(lambda: state_keys(state) > 0, 15, "the layers writing to the restarted store")

        main = wait_for(lambda: metered(gw, tenant, total), 20, "usage flushed")
        assert main["operations"] == total, (main["operations"], total)
        assert main["errors"] == 0 and main["rejected"] == 0, main
        assert not gw.log_lines("usage events dropped")
        print(f"{total} commands, {during} while [state] was down: all metered, no client error")


def state_keys(state: PrivateRedis) -> int:
    return int(redis.Redis(port=state.port, socket_timeout=2).dbsize())


def has_metric(gw: FaultGateway, layer: str) -> bool:
    try:
        gw.metric("ogelkit_state_unavailable_total", layer=layer, policy="open")
    except AssertionError:
        return False
    return True


def metered(gw: FaultGateway, tenant: Tenant, total: int) -> dict | None:
    main = gw.usage(tenant).get("main")
    return main if main and main["operations"] >= total else None
