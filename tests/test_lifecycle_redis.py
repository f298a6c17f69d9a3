"""The lifecycle on the Redis backend: an idle tenant database's upstream connections are
closed when it sleeps, and its next client is served with its keys intact."""

from __future__ import annotations

import secrets
import time

import redis

from ogelkit.testing import gateway_thread, test_secret_key
from ogelkit.testing.services import redis_url


def _upstream_clients(user: str) -> int:
    admin = redis.Redis.from_url(redis_url())
    try:
        return sum(1 for c in admin.client_list() if c.get("user") == user)
    finally:
        admin.close()


def test_an_idle_redis_database_sleeps_and_wakes_on_the_next_command():
    slug, password = f"dlr{secrets.token_hex(3)}", "pw-" + secrets.token_hex(6)
    config = (f'[listen]\nhost = "127.0.0.1"\nhttp = 0\nredis = 0\n\n'
              f'[control]\nurl = "sqlite:///:memory:"\nsecret_key = "{test_secret_key()}"\n\n'
              f'[lifecycle]\ncheck_every = "200ms"\n\n'
              f'[tiers.nap]\nbase = "free"\nrank = 9\nidle_before_sleep = "2s"\n\n'
              f'[backends.r]\ntype = "redis"\nurl = "{redis_url()}"\n\n'
              f'[tenants.{slug}]\ntier = "nap"\npassword = "{password}"\n'
              f'databases.main.backend = "r"\n')
    acl_user = f"o7s:{slug}:main"
    try:
        with gateway_thread(config) as gw:
            client = redis.Redis(host="127.0.0.1", port=gw.port("redis"), username=slug,
                                 password=password)
            client.set("k", "kept")
            # A connected client, even an idle one, keeps its database awake: the door
            # registers it with the lifecycle at admission and releases it at the end.
            time.sleep(3)
            assert gw.context.lifecycle.state_of(slug, "main") != "asleep"
            assert client.get("k") == b"kept"
            client.close()
            assert _upstream_clients(acl_user) >= 1
            deadline = time.monotonic() + 20
            while gw.context.lifecycle.state_of(slug, "main") != "asleep":
                assert time.monotonic() < deadline, "never went to sleep"
                time.sleep(0.1)
            for _ in range(50):  # closed sockets take a moment to leave CLIENT LIST
                if _upstream_clients(acl_user) == 0:
                    break
                time.sleep(0.1)
            assert _upstream_clients(acl_user) == 0
            client = redis.Redis(host="127.0.0.1", port=gw.port("redis"), username=slug,
                                 password=password)
            assert client.get("k") == b"kept"  # served: the pools reopened, data intact
            assert _upstream_clients(acl_user) >= 1
            client.close()
    finally:
        admin = redis.Redis.from_url(redis_url())
        admin.acl_deluser(acl_user)
        for key in admin.scan_iter(match=f"t:{slug}:*"):
            admin.unlink(key)
        admin.close()
