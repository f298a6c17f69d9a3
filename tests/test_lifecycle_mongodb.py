"""The lifecycle on the MongoDB backend (FerretDB upstream): when an idle database sleeps and
no client of the backend is left, the shared upstream pool closes; the next client is served
with its documents."""

from __future__ import annotations

import secrets
import time

import pymongo

from ogelkit.testing import gateway_thread, minimal_config
from ogelkit.testing.services import ferretdb_url


def test_an_idle_mongodb_database_sleeps_and_its_next_client_is_served():
    slug, password = f"dlm{secrets.token_hex(3)}", "pw-" + secrets.token_hex(6)
    config = minimal_config().replace('http = 0\n', 'http = 0\nmongodb = 0\n', 1) + (
        '[lifecycle]\ncheck_every = "200ms"\n\n'
        '[tiers.nap]\nbase = "free"\nrank = 9\nidle_before_sleep = "2s"\n\n'
        f'[backends.mongo]\ntype = "mongodb"\nurl = "{ferretdb_url()}"\n\n'
        f'[tenants.{slug}]\ntier = "nap"\npassword = "{password}"\n'
        f'[tenants.{slug}.databases.main]\nbackend = "mongo"\n')
    try:
        with gateway_thread(config) as gw:
            url = f"mongodb://{slug}:{password}@127.0.0.1:{gw.port('mongodb')}/"
            with pymongo.MongoClient(url, serverSelectionTimeoutMS=5000) as client:
                client.main.things.insert_one({"v": 1})
            backend = gw.context.backends["mongo"]
            assert backend._pool is not None and backend._pool.stats()["live"] >= 1
            deadline = time.monotonic() + 20
            while gw.context.lifecycle.state_of(slug, "main") != "asleep":
                assert time.monotonic() < deadline, "never went to sleep"
                time.sleep(0.1)
            assert backend._pool is None  # closed: no upstream connection is left
            with pymongo.MongoClient(url, serverSelectionTimeoutMS=5000) as client:
                assert client.main.things.find_one({}, {"_id": 0}) == {"v": 1}
                assert gw.context.lifecycle.state_of(slug, "main") == "active"
    finally:
        with pymongo.MongoClient(ferretdb_url(), serverSelectionTimeoutMS=5000) as upstream:
            for name in upstream.list_database_names():
                if slug.replace("-", "_") in name or slug in name:
                    upstream.drop_database(name)
