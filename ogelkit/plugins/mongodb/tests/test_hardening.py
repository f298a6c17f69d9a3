"""Issue 16 regressions on raw sockets and with pymongo: pre-auth memory and size bounds,
the handshake timeout, total parsers (no exception reaches asyncio, one log line per
connection, no traceback), a banned pymongo client told why, code 91 during a drain."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import bson
import pymongo
import pytest
from mongo_support import PASSWORD
from ogelkit_mongodb.testing import op_msg, op_query, read_reply, scram_login
from pymongo.errors import OperationFailure

import ogelkit
from ogelkit import Layer, Reason, Reject
from ogelkit.testing import isolated_plugins


def _doc(elements: bytes) -> bytes:
    """A BSON document around raw ``elements`` (which may be malformed inside)."""
    return struct.pack("<i", len(elements) + 5) + elements + b"\x00"


def _bad_kill_cursors(request_id: int = 5) -> bytes:
    """killCursors whose cursors array holds a truncated int64 (the top level indexes)."""
    bad_array = b"\x0c\x00\x00\x00\x12\x30\x00\x01\x00\x00\x00\x00"
    doc = _doc(b"\x02killCursors\x00\x02\x00\x00\x00c\x00" + b"\x04cursors\x00" + bad_array
               + b"\x02$db\x00\x05\x00\x00\x00main\x00")
    return struct.pack("<iiiiI", 21 + len(doc), request_id, 0, 2013, 0) + b"\x00" + doc


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _raw(gw: Any) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=5)


def _closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.fixture
def watched(make_gateway: Any) -> Iterator[tuple[Any, list[Any]]]:
    """A gateway whose loop exception handler and 'ogelkit' log records are captured."""
    gw = make_gateway()
    problems: list[Any] = []
    gw.running.loop.call_soon_threadsafe(
        gw.running.loop.set_exception_handler, lambda _loop, ctx: problems.append(ctx))

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info or record.levelno >= logging.ERROR:
                problems.append(record)

    handler = Catch()
    logger = logging.getLogger("ogelkit")
    logger.addHandler(handler)
    try:
        yield gw, problems
    finally:
        logger.removeHandler(handler)


# -- defect 4: pre-auth memory ---------------------------------------------------------------

def test_sasl_payload_of_the_wrong_type_allocates_nothing(watched):
    gw, problems = watched
    before = _rss()
    with _raw(gw) as sock:
        msg = op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256",
                      "payload": bson.Int64(1_000_000_000), "$db": "admin"})
        assert len(msg) < 120
        sock.sendall(msg)
        reply = read_reply(sock)
        assert reply["ok"] == 0 and reply["code"] == 14 and "binary" in reply["errmsg"]
        sock.sendall(op_msg({"ping": 1, "$db": "admin"}))  # still answered
        assert read_reply(sock)["ok"] == 1.0
    assert _rss() - before < 100 * 1024 * 1024
    assert not problems


def test_messages_over_64k_before_authentication_are_refused(watched):
    gw, problems = watched
    with _raw(gw) as sock:
        sock.sendall(struct.pack("<iiii", 47_000_000, 9, 0, 2013))  # a partial 47 MB message
        reply = read_reply(sock)
        assert reply["code"] == 10334 and "before authentication" in reply["errmsg"]
        assert _closed(sock)
    with _raw(gw) as sock:
        sock.sendall(op_msg({"ping": 1, "$db": "admin", "pad": "x" * 70_000}))
        assert read_reply(sock)["code"] == 10334
        assert _closed(sock)
    client = gw.client(gw.tenants["a"])  # after authentication the big limit applies
    client.main.c.insert_one({"big": "x" * 200_000})
    assert len(client.main.c.find_one()["big"]) == 200_000
    assert not problems


# -- defect 5: handshake timeout -------------------------------------------------------------

def test_unauthenticated_connections_are_closed_after_the_handshake_timeout(make_gateway):
    gw = make_gateway(backend_extra='handshake_timeout = "1s"')
    silent, partial, monitor = _raw(gw), _raw(gw), _raw(gw)
    partial.sendall(op_msg({"ping": 1, "$db": "admin"})[:10])
    client = gw.client(gw.tenants["a"])
    client.main.c.insert_one({"x": 1})
    started = time.monotonic()
    for _ in range(4):  # a monitor sending hello more often than the timeout stays
        monitor.sendall(op_msg({"hello": 1, "$db": "admin"}))
        assert read_reply(monitor)["ok"] == 1.0
        time.sleep(0.5)
    assert _closed(silent, 5) and _closed(partial, 5)
    assert time.monotonic() - started < 10
    monitor.sendall(op_msg({"ping": 1, "$db": "admin"}))
    assert read_reply(monitor)["ok"] == 1.0
    time.sleep(1.5)
    assert client.main.c.count_documents({}) == 1  # authenticated clients are not bounded
    for s in (silent, partial, monitor):
        s.close()


# -- defect 9: every parser total ------------------------------------------------------------

@pytest.mark.parametrize("frame", [
    struct.pack("<iiii", 16, 1, 0, 2013),
    struct.pack("<iiii", 18, 1, 0, 2013) + b"\x00\x00",
    struct.pack("<iiii", 20, 1, 0, 2013) + b"\x00" * 4,
    struct.pack("<iiii", 16, 1, 0, 2004),
    struct.pack("<iiii", 19, 1, 0, 2004) + b"abc",
    # hello whose nested document is malformed: the top level indexes, bson.decode fails
    struct.pack("<iiiiI", 0, 1, 0, 2013, 0) + b"\x00" + _doc(
        b"\x03hello\x00\x07\x00\x00\x00\x02\x00\x00" + b"\x02$db\x00\x06\x00\x00\x00admin\x00"),
    op_msg({"hello": 1, "$db": "admin"})[:-1] + b"\x01",
], ids=["16", "18", "20", "query16", "query19", "nested-bad-bson", "bad-terminator"])
def test_malformed_frames_are_answered_or_closed_without_exceptions(watched, frame):
    gw, problems = watched
    frame = struct.pack("<i", len(frame)) + frame[4:]
    with _raw(gw) as sock:
        sock.sendall(frame)
        reply = read_reply(sock)
        assert reply is None or (reply.get("ok") == 0 and reply.get("code") in (9, 10334, 352))
        assert _closed(sock)
    assert gw.client(gw.tenants["a"]).main.command("ping")["ok"] == 1.0
    assert not problems, problems


@pytest.mark.parametrize("payload", [b"\xff\xfe\xfd", "n,,n=x,r=abc", 42, None])
def test_scram_payloads_not_utf8_or_not_binary(watched, payload):
    gw, problems = watched
    with _raw(gw) as sock:
        sock.sendall(op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": payload,
                             "$db": "admin"}))
        reply = read_reply(sock)
        assert reply is not None and reply["ok"] == 0 and reply["code"] in (14, 18)
    with _raw(gw) as sock:  # a good start, then a bad continue
        sock.sendall(op_msg({"saslStart": 1, "mechanism": "SCRAM-SHA-256",
                             "payload": f"n,,n={gw.tenants['a']},r=abcdef".encode(),
                             "$db": "admin"}))
        assert read_reply(sock)["ok"] == 1.0
        sock.sendall(op_msg({"saslContinue": 1, "conversationId": 1, "payload": payload,
                             "$db": "admin"}))
        reply = read_reply(sock)
        assert reply["ok"] == 0 and reply["code"] == 18
        assert _closed(sock)
    assert not problems, problems


def test_cursor_ids_and_explain_of_the_wrong_type(watched):
    gw, problems = watched
    db = gw.client(gw.tenants["a"]).main
    db.c.insert_one({"x": 1})
    for command in ({"killCursors": "c", "cursors": ["abc", 1.5]},
                    {"killCursors": "c", "cursors": [{"a": 1}]},
                    {"getMore": "abc", "collection": "c"},
                    {"getMore": float("nan"), "collection": "c"},
                    {"getMore": float("inf"), "collection": "c"},
                    {"explain": 1},
                    {"explain": "find"}):
        with pytest.raises(OperationFailure) as err:
            db.command(command)
        assert err.value.code in (14, 43), (command, err.value)
    assert db.c.find_one()["x"] == 1  # the same connection still serves
    assert not problems, problems


def test_malformed_content_after_authentication_is_answered(watched):
    gw, problems = watched
    with _raw(gw) as sock:
        assert scram_login(sock, gw.tenants["a"], PASSWORD, "main")["ok"] == 1.0
        # a pipeline array whose elements are not documents, then a killCursors whose
        # array holds malformed BSON (the top level still indexes)
        sock.sendall(op_msg({"aggregate": "c", "pipeline": [1, "x"], "cursor": {},
                             "$db": "main"}))
        assert read_reply(sock) is not None
        sock.sendall(_bad_kill_cursors())
        reply = read_reply(sock)
        assert reply is not None and reply["ok"] == 0
        sock.sendall(op_msg({"ping": 1, "$db": "main"}))
        assert read_reply(sock)["ok"] == 1.0
    assert not problems, problems


def test_non_utf8_names_quoted_in_errors_are_answered(watched):
    """Found by bench/fuzz_mongodb.py: an error document quoting a client's non-UTF-8 name
    failed to encode inside a task (a Task exception, and the client waited forever)."""
    gw, problems = watched
    frame = bytes.fromhex(
        "550000000100000000000000dd0700000000000000400000000272656e616d65436f6c6c656374696f"
        "6e00070000006d61696e2e610002746f00070000006d6169ffffffff02246462000600000061646d69"
        "6e0000")
    with _raw(gw) as sock:
        assert scram_login(sock, gw.tenants["a"], PASSWORD, "main")["ok"] == 1.0
        sock.sendall(frame)
        reply = read_reply(sock)
        assert reply is not None and reply["code"] == 13 and "\ufffd" in reply["errmsg"]
        sock.sendall(op_msg({"ping": 1, "$db": "main"}))
        assert read_reply(sock)["ok"] == 1.0
    assert not problems, problems


def test_malformed_input_is_logged_once_per_connection_without_traceback(make_gateway, caplog):
    gw = make_gateway()
    caplog.set_level(logging.INFO, logger="ogelkit.mongodb")
    with _raw(gw) as sock:
        assert scram_login(sock, gw.tenants["a"], PASSWORD, "main")["ok"] == 1.0
        for i in range(3):
            sock.sendall(_bad_kill_cursors(10 + i))
            assert read_reply(sock)["ok"] == 0
        sock.sendall(struct.pack("<iiii", 18, 1, 0, 2013) + b"\x00\x00")
        read_reply(sock)
        assert _closed(sock)
    time.sleep(0.2)
    mine = [r for r in caplog.records if r.name == "ogelkit.mongodb"
            and "mongodb client" in r.getMessage()]
    assert len(mine) == 1, [r.getMessage() for r in mine]
    assert not any(r.exc_info for r in caplog.records)


# -- defect 10: a banned pymongo client is told why ------------------------------------------

class Banner(Layer):
    type_name = "test_banner"
    Config = ogelkit.NoOptions

    def on_auth(self, session):
        raise Reject(Reason.BANNED, "too many failed logins from your address",
                     hint="Wait 5 minutes.", layer=self.name)


class _BanPlugin:
    @ogelkit.hookimpl
    def ogelkit_register_layers(self, register):
        register.layer(Banner)


def test_banned_pymongo_client_gets_the_ban_document(make_gateway):
    plugins = isolated_plugins(("test_banner", _BanPlugin()), entry_points=True)
    gw = make_gateway(layers='[[layers]]\ntype = "test_banner"\n', plugins=plugins)
    client = gw.client(gw.tenants["a"])  # pymongo authenticates speculatively inside hello
    with pytest.raises(OperationFailure) as err:
        client.main.c.find_one()
    assert err.value.code == 13 and "too many failed logins" in str(err.value)
    assert err.value.details.get("reason") == "banned"


# -- defect 13: code 91 during the drain -----------------------------------------------------

def test_commands_during_the_drain_get_shutdown_in_progress(make_gateway):
    gw = make_gateway()
    with _raw(gw) as authed, _raw(gw) as anonymous:
        assert scram_login(authed, gw.tenants["a"], PASSWORD, "main")["ok"] == 1.0
        anonymous.sendall(op_query({"isMaster": 1}))
        assert read_reply(anonymous)["ok"] == 1.0
        gw.running.loop.call_soon_threadsafe(gw.running.gateway.request_stop)
        time.sleep(0.3)
        authed.sendall(op_msg({"find": "c", "$db": "main"}, request_id=9))
        reply = read_reply(authed)
        assert reply is not None and reply["code"] == 91, reply
        assert reply["codeName"] == "ShutdownInProgress"
        anonymous.sendall(op_msg({"hello": 1, "$db": "admin"}))
        reply = read_reply(anonymous)
        assert reply is not None and reply["code"] == 91
        assert _closed(authed) and _closed(anonymous)


def test_pymongo_during_the_drain_sees_91_not_a_reset(make_gateway):
    gw = make_gateway()
    client = pymongo.MongoClient(gw.url(gw.tenants["a"]), maxPoolSize=1, retryReads=False,
                                 serverSelectionTimeoutMS=2000)
    try:
        client.main.c.find_one()
        gw.running.loop.call_soon_threadsafe(gw.running.gateway.request_stop)
        time.sleep(0.3)
        with pytest.raises(pymongo.errors.PyMongoError) as err:  # NotPrimaryError: retryable
            client.main.c.find_one()
        assert err.value.details["code"] == 91 and "shutting down" in str(err.value)
    finally:
        client.close()
