"""Fairness between tenants on a shared MongoDB upstream (issue 16): one tenant's big
commands running at once are bounded in bytes (``TENANT_INFLIGHT_BYTES``), so its inserts of
megabyte documents from many connections cannot keep the upstream too busy to answer another
tenant. Real gateway, real pymongo clients, the real upstream."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

from ogelkit_mongodb import connection as mconn
from ogelkit_mongodb.testing import read_reply
from ogelkit_mongodb.upstream import UpstreamPool

BIG = 3_000_000  # a document's string: four of them at once are 12 MB


class Inflight:
    """The bytes of big commands running upstream at once (submitted, not yet answered)."""

    def __init__(self, monkeypatch):
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()
        original = UpstreamPool.submit

        def submit(pool, parts, callback):
            size = sum(len(p) for p in parts)
            if size < 1_000_000:
                return original(pool, parts, callback)
            with self.lock:
                self.now += size
                self.most = max(self.most, self.now)

            def done(reply, err):
                with self.lock:
                    self.now -= size
                callback(reply, err)

            return original(pool, parts, done)

        monkeypatch.setattr(UpstreamPool, "submit", submit)


def test_one_tenants_big_inserts_run_within_its_share(make_gateway, monkeypatch):
    gw = make_gateway({"flood": {"tier": "pro"}, "other": {"tier": "pro"}})
    inflight = Inflight(monkeypatch)
    clients = [gw.client(gw.tenants["flood"]) for _ in range(4)]
    other = gw.client(gw.tenants["other"]).main.docs
    other.insert_one({"_id": 1, "v": "still here"})
    start = threading.Barrier(len(clients))
    errors: list[BaseException] = []

    def insert(client, k: int) -> None:
        coll = client.main[f"big{k}"]
        try:
            start.wait(30)
            for i in range(3):
                coll.insert_one({"_id": i, "blob": "z" * BIG})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(c, k)) for k, c in enumerate(clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):  # the other tenant is answered meanwhile
        assert other.find_one({"_id": 1}) == {"_id": 1, "v": "still here"}
        for t in threads:
            t.join(0.05)
    assert not errors, errors
    for k, client in enumerate(clients):
        assert client.main[f"big{k}"].count_documents({}) == 3
    assert inflight.most > BIG  # more than one ran at once: the share does not serialise
    # within the share, give or take the rewrite of the database name
    assert inflight.most <= mconn.TENANT_INFLIGHT_BYTES + 65536, inflight.most


def test_a_command_bigger_than_the_share_still_runs(make_gateway):
    # insert_many of three 3 MB documents is one 9 MB message, over the share: it runs alone
    gw = make_gateway({"flood": {"tier": "pro"}})
    coll = gw.client(gw.tenants["flood"]).main.huge
    docs = [{"_id": i, "blob": "y" * BIG} for i in range(3)]
    assert sum(len(d["blob"]) for d in docs) > mconn.TENANT_INFLIGHT_BYTES
    coll.insert_many(docs)
    assert coll.count_documents({}) == 3


def test_malformed_input_from_many_connections_is_logged_at_a_bounded_rate(make_gateway, caplog):
    # Once per connection was no bound for an attacker opening connection after connection
    # (mongo_flood: 700 log lines a second). 40 connections each send a bad header.
    gw = make_gateway()
    caplog.set_level(logging.INFO, logger="ogelkit.mongodb")
    started = time.monotonic()
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
            sock.sendall(struct.pack("<iiii", 18, 1, 0, 2013) + b"\x00\x00")
            reply = read_reply(sock)
            assert reply is not None and reply["ok"] == 0  # each is still answered
    elapsed = time.monotonic() - started
    time.sleep(0.2)
    mine = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ogelkit.mongodb" and "mongodb client" in r.getMessage()
    ]
    assert 1 <= len(mine) <= mconn.LOG_BURST * (int(elapsed) + 2), mine
    if elapsed < 1.0:
        assert len(mine) <= mconn.LOG_BURST
    time.sleep(1.0)  # a new second: the next line says how many were left out
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(struct.pack("<iiii", 18, 1, 0, 2013) + b"\x00\x00")
        read_reply(sock)
    time.sleep(0.2)
    last = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ogelkit.mongodb" and "mongodb client" in r.getMessage()
    ][-1]
    assert "more such lines suppressed" in last, last
