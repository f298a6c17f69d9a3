"""What redis-py users rely on, through the gateway (issue 16, client compatibility).

Cases modelled on what redis-py's own suite exercises (handshake, CLIENT subcommands, INFO
parsing, pipelines and transactions, pub/sub, scan iterators, health checks), written anew,
with real redis-py (sync and asyncio) against the real Redis behind the gateway.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
import redis.asyncio as aioredis
from redis_support import Gw, cleanup, config_text, gateway, new_tenants

from ogelkit.testing import running_gateway
from ogelkit.testing.services import redis_url

INTELLIGENCE = ('[[layers]]\ntype = "intelligence"\nstorm_threshold = 5\n'
                'storm_window = "1s"\n')


def rejected(gw: Gw) -> float:
    try:
        return gw.running.metric("ogelkit_operations_total", protocol="redis",
                                 outcome="rejected")
    except AssertionError:
        return 0.0


# -- handshake ------------------------------------------------------------------------------
def test_redis_py_handshake_sets_lib_info_and_costs_nothing(gw: Gw):
    before = rejected(gw)
    r = gw.client(gw.a, lib_name="ogel-test", lib_version="9.9")
    assert r.ping() is True
    info = r.client_info()
    assert info["lib-name"] == "ogel-test" and info["lib-ver"] == "9.9"
    assert r.execute_command("CLIENT SETINFO", "LIB-NAME", "other") in (True, b"OK")
    assert any(c.get("lib-name") == "other" for c in r.client_list())
    with pytest.raises(redis.ResponseError, match="Unrecognized option 'color'"):
        r.execute_command("CLIENT SETINFO", "color", "red")
    with pytest.raises(redis.ResponseError, match="cannot contain spaces"):
        r.execute_command("CLIENT SETINFO", "LIB-VER", "1 2")
    # redis-py 8's maintenance-notification probe: Redis 7.0's own unknown-subcommand answer.
    with pytest.raises(redis.ResponseError) as exc:
        r.execute_command("CLIENT MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "none")
    assert str(exc.value) == "unknown subcommand 'MAINT_NOTIFICATIONS'. Try CLIENT HELP."
    real = redis.Redis.from_url(redis_url())
    with pytest.raises(redis.ResponseError) as direct:
        real.execute_command("CLIENT MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "none")
    assert str(direct.value) == str(exc.value)
    real.close()
    time.sleep(1.3)  # metrics are flushed about once a second
    assert rejected(gw) == before  # neither the handshake nor the probe is a refusal
    r.close()


def test_client_subcommands_for_the_own_connection(gw: Gw):
    r = gw.client(gw.a, single_connection_client=True)
    assert r.client_setname("worker-1") is True and r.client_getname() == "worker-1"
    own = r.client_id()
    assert isinstance(own, int) and r.client_info()["id"] == own
    assert r.client_no_evict("on") in (True, b"OK")
    assert r.execute_command("CLIENT REPLY", "ON") in (True, b"OK")
    assert [c["id"] for c in r.client_list(client_id=[own])] == [str(own)]  # parsed as text
    r.close()


@pytest.mark.parametrize("arg", ["0_3", " 3", "+3", "03", "3.0"])
def test_hello_protover_is_read_like_redis(gw: Gw, arg: str):
    r = gw.client(gw.a)
    with pytest.raises(redis.ResponseError, match="Protocol version is not an integer"):
        r.execute_command("HELLO", arg)
    with pytest.raises(redis.ResponseError, match="NOPROTO"):
        r.execute_command("HELLO", "4")
    flat = r.execute_command("HELLO", "2")  # RESP2: a flat list of field, value
    assert dict(zip(flat[::2], flat[1::2], strict=True))[b"proto"] == 2
    r.close()


# -- policy refusals do not cascade ---------------------------------------------------------
def test_a_forbidden_loop_never_backs_off_the_tenants_gets():
    tenants = new_tenants(1)
    with gateway(tenants, layers=INTELLIGENCE) as gw:
        looping, reading = gw.client(gw.a), gw.client(gw.a)
        reading.set("k", "v")
        stop, failures = threading.Event(), []

        def read() -> None:
            while not stop.is_set():
                try:
                    assert reading.get("k") == b"v"
                except redis.ResponseError as exc:  # a back-off would show up here
                    failures.append(str(exc))

        t = threading.Thread(target=read)
        t.start()
        try:
            for _ in range(1000):
                with pytest.raises(redis.ResponseError, match="not allowed"):
                    looping.execute_command("CONFIG", "GET", "maxmemory")
        finally:
            stop.set()
            t.join()
        assert failures == []
        assert reading.get("k") == b"v" and looping.get("k") == b"v"


async def test_asyncio_handshake_and_forbidden_loop():
    tenants = new_tenants(1)
    try:
        async with running_gateway(config_text(tenants, layers=INTELLIGENCE)) as running:
            t = tenants[0]
            looping = aioredis.Redis(port=running.port("redis"), username=t.slug,
                                     password=t.password, lib_name="aio-test")
            reading = aioredis.Redis(port=running.port("redis"), username=t.slug,
                                     password=t.password, protocol=3)
            await reading.set("k", "v")
            assert (await looping.client_info())["lib-name"] == "aio-test"
            for _ in range(300):
                with pytest.raises(redis.ResponseError, match="not allowed"):
                    await looping.execute_command("CONFIG", "GET", "maxmemory")
                assert await reading.get("k") == b"v"
            await looping.aclose()
            await reading.aclose()
    finally:
        cleanup(tenants)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


test_asyncio_handshake_and_forbidden_loop = pytest.mark.anyio(
    test_asyncio_handshake_and_forbidden_loop)


# -- malformed input after good requests ------------------------------------------------------
@pytest.mark.parametrize("bad", [b"*2\r\n$3\r\nGET\r\n:5\r\n", b"*2\r\n$3\r\nGET\r\n$-5\r\n",
                                 b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\nk\r\n"])
def test_a_protocol_error_comes_after_the_replies_owed(gw: Gw, bad: bytes):
    """Like Redis: the requests before the bad one are answered, then the protocol error,
    then the connection closes (the gateway used to close at once: no reply at all)."""
    import socket
    t = gw.a
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"*3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(t.slug), t.slug.encode(), len(t.password), t.password.encode()))
        assert s.recv(100) == b"+OK\r\n"
        s.sendall(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n" * 5 + bad)
        got = b""
        while chunk := s.recv(65536):  # the gateway closes: recv returns b""
            got += chunk
    replies = got.split(b"\r\n")
    assert replies[:5] == [b"$-1"] * 5, got
    assert replies[5].startswith(b"-ERR Protocol error"), got
    assert gw.client(gw.b).ping()


# -- AUTH: no timing oracle, no blocked event loop --------------------------------------------
def _auth_frame(user: str, password: str) -> bytes:
    u, p = user.encode(), password.encode()
    return b"*3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(u), u, len(p), p)


def _timed_auth(sock, user: str, password: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    sock.sendall(_auth_frame(user, password))
    reply = sock.recv(1000)
    return time.perf_counter() - start, reply


def test_auth_takes_as_long_for_an_unknown_tenant_as_for_a_wrong_password(gw: Gw):
    """An unknown tenant pays the same key derivation as a known one with a wrong password:
    the answer's timing does not tell which tenants exist (issue 16, defect 11)."""
    import secrets
    import socket
    import statistics
    known, unknown = [], []
    padded = gw.running.metric("ogelkit_auth_failure_padding_seconds_count")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        for i in range(21):  # interleaved, so drift affects both alike; a failed AUTH may retry
            d, reply = _timed_auth(s, gw.a.slug, f"wrong-{i}")
            assert reply.startswith(b"-WRONGPASS"), reply
            known.append(d)
            d, reply = _timed_auth(s, f"nosuch{secrets.token_hex(4)}", f"wrong-{i}")
            assert reply.startswith(b"-WRONGPASS"), reply
            unknown.append(d)
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 <= ratio <= 2.0, (ratio, statistics.median(known), statistics.median(unknown))
    # every failure's padding is observed, for operators to see what the floor costs
    assert gw.running.metric("ogelkit_auth_failure_padding_seconds_count") - padded == 42


def test_a_login_storm_does_not_block_other_connections():
    """The key derivation runs off the event loop: while 20 AUTHs derive their keys, PINGs
    on another tenant's authenticated connection keep answering at once. (The tenant's
    verifier is made slow, 50,000 PBKDF2 iterations, so a derivation on the loop would
    show: each PING would wait for the rest of the derivation under way.)"""
    import socket
    import statistics

    from ogelkit.scram import make_verifier, verify_password
    tenants = new_tenants(2)
    with gateway(tenants) as gw:
        slow = make_verifier(gw.a.password, iterations=50_000)
        durations = []
        for _ in range(3):
            t0 = time.perf_counter()
            verify_password(slow, "wrong")
            durations.append(time.perf_counter() - t0)
        one = statistics.median(durations)
        import asyncio
        store = gw.running.context.store
        asyncio.run_coroutine_threadsafe(store.set_verifier(gw.a.slug, str(slow)),
                                         gw.running.loop).result(10)
        time.sleep(0.3)  # the directory's cache_ttl: the next lookup reads the new verifier
        other = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        assert _timed_auth(other, gw.b.slug, gw.b.password)[1] == b"+OK\r\n"
        storm = [socket.create_connection(("127.0.0.1", gw.port), timeout=10)
                 for _ in range(20)]
        pings = []
        try:
            for s in storm:
                s.sendall(_auth_frame(gw.a.slug, "wrong"))
            time.sleep(one / 2)  # the storm's first derivation is under way
            answered = 0
            for s in storm:
                s.setblocking(False)
            while answered < len(storm):
                start = time.perf_counter()
                other.sendall(b"*1\r\n$4\r\nPING\r\n")
                assert other.recv(100) == b"+PONG\r\n"
                pings.append(time.perf_counter() - start)
                for s in storm:
                    try:
                        if s.recv(1000).startswith(b"-WRONGPASS"):
                            answered += 1
                    except BlockingIOError:
                        pass
                assert len(pings) < 100_000
        finally:
            for s in storm:
                s.close()
            other.close()
    # On the loop, a PING would wait for the rest of the derivation under way (half of one
    # on average), for the whole storm (20 derivations).
    assert len(pings) > 20 and statistics.median(pings) < one / 4, (len(pings), one,
                                                                     statistics.median(pings))


# -- re-AUTH on an open connection ------------------------------------------------------------
def test_reauth_as_the_same_tenant_database_is_accepted(gw: Gw):
    r = gw.client(gw.a, single_connection_client=True)
    r.set("mine", "1")
    assert r.auth(gw.a.password, gw.a.slug) is True
    assert r.auth(gw.a.password, f"{gw.a.slug}.{gw.a.db}") is True
    assert r.execute_command("HELLO", "3", "AUTH", gw.a.slug, gw.a.password)[b"proto"] == 3
    assert r.get("mine") == b"1"
    r.close()


def test_reauth_with_a_wrong_password_keeps_the_connection_as_it_was(gw: Gw):
    """Redis's behaviour: -WRONGPASS, and the connection stays authenticated as before."""
    r = gw.client(gw.a, single_connection_client=True)
    r.set("mine", "1")
    with pytest.raises(redis.AuthenticationError):
        r.auth("not-the-password", gw.a.slug)
    assert r.acl_whoami() == gw.a.slug and r.get("mine") == b"1"
    r.close()


@pytest.mark.parametrize("who", ["other", "unknown", "other-database"])
def test_reauth_as_another_tenant_is_refused_and_changes_nothing(gw: Gw, who: str):
    """No switch on an open connection (a new login would have to pass the layers again):
    a clear error, the same for a real tenant, an unknown one and another database, and the
    connection keeps its tenant."""
    r = gw.client(gw.a, single_connection_client=True)
    r.set("mine", "1")
    user, password = {"other": (gw.b.slug, gw.b.password),
                      "unknown": ("nosuchtenant", "whatever"),
                      "other-database": (f"{gw.a.slug}.elsewhere", gw.a.password)}[who]
    with pytest.raises(redis.ResponseError, match="does not switch tenant or database"):
        r.auth(password, user)
    assert r.acl_whoami() == gw.a.slug and r.get("mine") == b"1"
    r.close()


# -- CLIENT LIST / KILL over the tenant database's connections --------------------------------
CLIENT_FIELDS = ["id", "addr", "laddr", "fd", "name", "age", "idle", "flags", "db", "sub", "psub",
                 "ssub", "multi", "qbuf", "qbuf-free", "argv-mem", "multi-mem", "rbs", "rbp",
                 "obl", "oll", "omem", "tot-mem", "events", "cmd", "user", "redir", "resp",
                 "lib-name", "lib-ver"]


def _no_retry(gw: Gw, tenant, **kw) -> redis.Redis:
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    return gw.client(tenant, single_connection_client=True, retry=Retry(NoBackoff(), 0), **kw)


def test_client_list_shows_the_tenant_databases_connections_only():
    tenants = new_tenants(2)
    with gateway(tenants) as gw:
        one, two = gw.client(gw.a, single_connection_client=True), _no_retry(gw, gw.a)
        stranger = gw.client(gw.b, single_connection_client=True)
        two.client_setname("second")
        stranger.client_setname("stranger")
        ids = {one.client_id(), two.client_id()}
        listed = one.client_list()
        assert {int(c["id"]) for c in listed} == ids
        assert list(listed[0]) == CLIENT_FIELDS  # Redis 7.2's fields, in its order
        mine = next(c for c in listed if int(c["id"]) == one.client_id())
        theirs = next(c for c in listed if c["name"] == "second")
        assert mine["cmd"] == "client|list" and mine["user"] == gw.a.slug
        assert theirs["lib-name"] == "redis-py" and theirs["flags"] == "N"
        assert mine["laddr"].endswith(f":{gw.port}") and int(mine["fd"]) > 0
        assert [c["id"] for c in stranger.client_list()] == [str(stranger.client_id())]
        # CLIENT LIST ID: the tenant's own ids; another tenant's id is like one that does
        # not exist (Redis lists nothing for it).
        assert [c["name"] for c in one.client_list(client_id=[two.client_id()])] == ["second"]
        assert one.client_list(client_id=[stranger.client_id()]) == []
        assert {c["name"] for c in one.client_list(_type="normal")} == {"", "second"}
        assert one.client_list(_type="pubsub") == []
        with pytest.raises(redis.ResponseError, match="Invalid client ID"):
            one.execute_command("CLIENT LIST", "ID", "x")
        with pytest.raises(redis.ResponseError, match="Unknown client type"):
            one.execute_command("CLIENT LIST", "TYPE", "bogus")
        # CLIENT KILL ID: another tenant's connection is out of reach (0 killed, as Redis
        # answers for an id that does not exist), and stays up.
        assert one.client_kill_filter(_id=stranger.client_id()) == 0
        assert stranger.ping() is True
        with pytest.raises(redis.ResponseError, match="No such client"):
            one.client_kill(stranger.client_info()["addr"])  # the old form: an error
        assert stranger.ping() is True
        # ... the tenant's own other connection is killed: its next command fails.
        assert one.client_kill_filter(_id=two.client_id()) == 1
        with pytest.raises(redis.ConnectionError):
            two.ping()
        assert [int(c["id"]) for c in one.client_list()] == [one.client_id()]
        for c in (one, two, stranger):
            c.close()


def test_client_kill_by_addr_and_user_acts_on_the_own_tenant_only():
    tenants = new_tenants(2)
    with gateway(tenants) as gw:
        me, victim, stranger = (_no_retry(gw, gw.a), _no_retry(gw, gw.a),
                                _no_retry(gw, gw.b))
        addr = victim.client_info()["addr"]
        assert me.client_kill(addr) is True  # the old form: +OK
        with pytest.raises(redis.ConnectionError):
            victim.ping()
        victim = _no_retry(gw, gw.a)
        assert victim.ping()
        with pytest.raises(redis.ResponseError, match="No such user"):
            me.client_kill_filter(user=gw.b.slug)
        # USER: every other connection of the tenant database (SKIPME yes by default).
        assert me.client_kill_filter(user=gw.a.slug) == 1
        with pytest.raises(redis.ConnectionError):
            victim.ping()
        assert me.ping() is True and stranger.ping() is True
        # ADDR filter, and SKIPME no: the connection kills itself after the reply.
        own = me.client_info()["addr"]
        assert me.client_kill_filter(addr=own, skipme=False) == 1
        with pytest.raises(redis.ConnectionError):
            me.ping()
        assert stranger.ping() is True
        for c in (me, victim, stranger):
            c.close()


# -- INFO -------------------------------------------------------------------------------------
def test_info_has_the_standard_fields_with_the_tenants_values():
    tenants = new_tenants(2)
    with gateway(tenants) as gw:
        one, two = (gw.client(gw.a, single_connection_client=True),
                    gw.client(gw.a, single_connection_client=True))
        stranger = gw.client(gw.b, single_connection_client=True)
        for i in range(3):
            stranger.set(f"s{i}", i)  # another tenant's keys, commands and connection
        one.set("k", "v")
        two.set("e", "v", ex=100)
        info = one.info()
        for field in ("redis_version", "redis_mode", "os", "arch_bits", "process_id",
                      "tcp_port", "uptime_in_seconds", "connected_clients",
                      "total_connections_received", "total_commands_processed",
                      "instantaneous_ops_per_sec", "used_memory", "used_memory_human",
                      "role", "maxclients", "loading", "cluster_enabled"):
            assert field in info, field
        assert info["redis_mode"] == "standalone" and info["role"] == "master"
        assert info["arch_bits"] in (32, 64) and info["tcp_port"] == gw.port
        assert info["connected_clients"] == 2  # the tenant's two, not the stranger's
        assert info["total_connections_received"] == 2
        assert info["db0"] == {"keys": 2, "expires": 1, "avg_ttl": 0}
        before = one.info("stats")["total_commands_processed"]
        for _ in range(10):
            two.get("k")
        after = one.info("stats")["total_commands_processed"]
        assert after - before >= 10
        assert set(one.info("clients")) >= {"connected_clients", "blocked_clients"}
        assert "redis_version" not in one.info("clients")
        two.close()
        deadline = time.monotonic() + 5
        while one.info("clients")["connected_clients"] != 1:  # the close reaches the gateway
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert one.info("stats")["total_connections_received"] == 2
        assert one.info("stats")["total_commands_processed"] >= after  # the closed one's too
        assert stranger.info()["connected_clients"] == 1
        one.close()
        stranger.close()


def test_reauth_as_another_tenant_does_not_time_whether_it_exists(gw: Gw):
    """The refusal is decided on the name alone: a real tenant (cached) and an unknown one
    (which would cost a control-plane lookup) are refused in the same time."""
    import secrets
    import socket
    import statistics
    known, unknown = [], []
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        assert _timed_auth(s, gw.a.slug, gw.a.password)[1] == b"+OK\r\n"
        for _ in range(41):
            for user, times in ((gw.b.slug, known), (f"nosuch{secrets.token_hex(4)}", unknown)):
                d, reply = _timed_auth(s, user, "whatever")
                assert reply.startswith(b"-ERR the gateway does not switch"), reply
                times.append(d)
        hello = (b"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$1\r\nx\r\n"
                 % (len(gw.b.slug), gw.b.slug.encode()))
        s.sendall(hello)
        assert s.recv(1000).startswith(b"-ERR the gateway does not switch")
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert s.recv(100) == b"+PONG\r\n"  # still RESP2, still the tenant's connection
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 <= ratio <= 2.0, (ratio, statistics.median(known), statistics.median(unknown))


def test_client_list_reply_types_are_redis_own(gw: Gw):
    """RESP3: CLIENT LIST and CLIENT INFO are verbatim strings (``=...txt:``), as from Redis;
    RESP2: bulk strings; an id listing nothing is the empty text."""
    import socket
    from urllib.parse import urlsplit
    parts = urlsplit(redis_url())
    answers = []
    for port, auth in ((gw.port, (gw.a.slug, gw.a.password)), (parts.port or 6379, None)):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            if auth is not None:
                assert _timed_auth(s, *auth)[1] == b"+OK\r\n"
            got = []
            for req in (b"HELLO 3\r\n", b"CLIENT LIST ID 999999999\r\n", b"CLIENT LIST\r\n",
                        b"HELLO 2\r\n", b"CLIENT LIST\r\n"):
                s.sendall(req)
                time.sleep(0.1)
                got.append(s.recv(65536))
            answers.append(got)
    ours, theirs = answers
    assert ours[1] == theirs[1] == b"=4\r\ntxt:\r\n"
    assert ours[2][:1] == theirs[2][:1] == b"=" and b"txt:id=" in ours[2]
    assert ours[4][:1] == theirs[4][:1] == b"$" and b"\r\nid=" in ours[4]
