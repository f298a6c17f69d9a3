"""What psycopg's own test suite expects of a server, through the gateway (issue 16, item 7).

Cases written anew after the behaviours psycopg's suite checks (connection, transaction,
cursor, copy, pipeline, prepared statements, notifications, cancel), run with the real
psycopg against the gateway in both pooling modes. Where a mode cannot behave like
PostgreSQL by design (transaction pooling changes the server between transactions), the
test says so and checks what the gateway answers instead.
"""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
from ogelkit_postgres.testing import Tenant, pg_gateway, unique
from psycopg import sql
from psycopg.rows import dict_row

TX = Tenant(unique("pgcx"))
SS = Tenant(unique("pgcs"))


@pytest.fixture(scope="module")
def gws():
    with pg_gateway([TX]) as tx, pg_gateway([SS], mode="session") as ss:
        yield {"transaction": (tx, TX), "session": (ss, SS)}


@pytest.fixture(params=["transaction", "session"])
def mode(request):
    return request.param


@pytest.fixture
def connect(gws, mode):
    gw, tenant = gws[mode]
    opened: list[psycopg.Connection] = []

    def make(**kw) -> psycopg.Connection:
        conn = psycopg.connect(gw.conninfo(tenant, sslmode="disable"), **kw)
        opened.append(conn)
        return conn
    yield make
    for conn in opened:
        conn.close()


# -- connection ---------------------------------------------------------------------------

def test_connection_info(connect):
    conn = connect(autocommit=True)
    assert conn.info.server_version >= 150000
    assert conn.info.parameter_status("client_encoding") == "UTF8"
    assert conn.info.parameter_status("integer_datetimes") == "on"
    assert conn.info.dbname == "main"
    assert conn.info.status == psycopg.pq.ConnStatus.OK
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    conn.execute("SET TimeZone TO 'Europe/Rome'")
    assert str(conn.info.timezone) == "Europe/Rome"  # ParameterStatus reached the client


def test_broken_connection_in_session_mode(gws):
    """psycopg's test_broken: the server goes away under the client; the next command
    raises OperationalError and the connection is closed, not hung."""
    gw, tenant = gws["session"]
    with psycopg.connect(gw.conninfo(tenant, sslmode="disable"), autocommit=True) as conn, \
            psycopg.connect(gw.conninfo(tenant, sslmode="disable"), autocommit=True) as other:
        pid = conn.info.backend_pid
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.closed
        assert other.execute("SELECT 1").fetchone() == (1,)


def test_rollback_error_does_not_clobber_the_original_one(gws, caplog):
    """psycopg's test_context_inerror_rollback_no_clobber: the connection dies inside a
    transaction block; leaving the block raises the block's own exception, not the failed
    ROLLBACK's."""
    gw, tenant = gws["session"]
    with psycopg.connect(gw.conninfo(tenant, sslmode="disable")) as conn, \
            psycopg.connect(gw.conninfo(tenant, sslmode="disable"), autocommit=True) as other:
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute("SELECT 1")
            other.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
            1 / 0  # noqa: B018
        assert conn.closed or conn.broken


def test_error_keeps_the_connection_usable(connect):
    conn = connect()
    with pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute("SELECT * FROM no_such_table")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        conn.execute("SELECT 1")
    conn.rollback()
    assert conn.execute("SELECT 2").fetchone() == (2,)


# -- transactions -------------------------------------------------------------------------

def test_transaction_blocks_and_savepoints(connect):
    conn = connect(autocommit=True)
    conn.execute("DROP TABLE IF EXISTS compat_tx; CREATE TABLE compat_tx (v int)")
    with conn.transaction():
        conn.execute("INSERT INTO compat_tx VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute("INSERT INTO compat_tx VALUES (2)")
            conn.execute("CREATE UNIQUE INDEX ON compat_tx (v)")
            conn.execute("INSERT INTO compat_tx VALUES (2)")
        with conn.transaction() as inner:  # psycopg.Rollback: leave the block rolled back
            conn.execute("INSERT INTO compat_tx VALUES (3)")
            raise psycopg.Rollback(inner)
        conn.execute("INSERT INTO compat_tx VALUES (4)")
    assert conn.execute("SELECT array_agg(v ORDER BY v) FROM compat_tx").fetchone() == ([1, 4],)
    with pytest.raises(RuntimeError), conn.transaction():
        conn.execute("INSERT INTO compat_tx VALUES (5)")
        raise RuntimeError
    assert conn.execute("SELECT count(*) FROM compat_tx WHERE v = 5").fetchone() == (0,)


def test_read_only_deferrable_transaction(connect):
    conn = connect()
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
    assert conn.execute("SHOW transaction_isolation").fetchone() == ("serializable",)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("CREATE TEMP TABLE nope (v int)")
    conn.rollback()


# -- cursors, types -----------------------------------------------------------------------

def test_types_round_trip_in_text_and_binary(connect):
    conn = connect(autocommit=True)
    values = (b"\x00\xffbytes", [1, 2, None], {"a": [1, "b"]}, "ünïcødé", 12345678901234,
              3.5, None, True)
    query = "SELECT %s::bytea, %s::int[], %s::jsonb, %s::text, %s::int8, %s::float8, " \
            "%s::text, %s::bool"
    args = (values[0], values[1], psycopg.types.json.Jsonb(values[2]), *values[3:])
    for binary in (False, True):
        row = conn.cursor(binary=binary).execute(query, args).fetchone()
        assert row == values


def test_executemany_returning_and_rowcount(connect):
    conn = connect(autocommit=True)
    conn.execute("DROP TABLE IF EXISTS compat_many; CREATE TABLE compat_many "
                 "(id serial, v text)")
    cur = conn.cursor()
    cur.executemany("INSERT INTO compat_many (v) VALUES (%s) RETURNING id",
                    [(f"v{i}",) for i in range(5)], returning=True)
    ids = []
    while True:
        ids.append(cur.fetchone()[0])
        if not cur.nextset():
            break
    assert ids == [1, 2, 3, 4, 5]
    cur.execute("UPDATE compat_many SET v = v || '!' WHERE id > 2")
    assert cur.rowcount == 3
    assert cur.statusmessage == "UPDATE 3"


def test_server_side_cursor_inside_a_transaction(connect):
    conn = connect()
    with conn.cursor(name="compat_ssc", row_factory=dict_row) as cur:
        cur.itersize = 7
        cur.execute("SELECT g AS n FROM generate_series(1, 50) g")
        assert [r["n"] for r in cur] == list(range(1, 51))
    conn.commit()


def test_prepared_statements_survive_server_changes(connect, mode):
    """prepare_threshold=0 makes psycopg prepare every statement by name; in transaction
    pooling consecutive transactions may run on different servers."""
    conn = connect(autocommit=True, prepare_threshold=0)
    for i in range(30):
        assert conn.execute("SELECT %s::int * 2", [i]).fetchone() == (i * 2,)
        assert conn.execute(sql.SQL("SELECT {}::text").format(sql.Literal(str(i)))
                            ).fetchone() == (str(i),)
    conn.execute("DEALLOCATE ALL")
    assert conn.execute("SELECT %s::int", [7]).fetchone() == (7,)


def test_pipeline_mode(connect):
    conn = connect(autocommit=True)
    with conn.pipeline() as pipe:
        curs = [conn.execute("SELECT %s::int", [i]) for i in range(20)]
        pipe.sync()
        assert [c.fetchone()[0] for c in curs] == list(range(20))
    with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
        conn.execute("SELECT 1")
        conn.execute("SELECT 1/0")
        conn.execute("SELECT 2")
    assert conn.execute("SELECT 'after'").fetchone() == ("after",)


def test_copy_in_and_out(connect):
    conn = connect(autocommit=True)
    conn.execute("DROP TABLE IF EXISTS compat_copy; CREATE TABLE compat_copy "
                 "(id int, doc jsonb)")
    rows = [(i, json.dumps({"i": i, "s": "x" * (i % 50)})) for i in range(2000)]
    with conn.cursor().copy("COPY compat_copy FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    out = []
    with conn.cursor().copy("COPY (SELECT id, doc FROM compat_copy ORDER BY id) TO STDOUT"
                            ) as copy:
        copy.set_types(["int4", "jsonb"])
        out = [tuple(r) for r in copy.rows()]
    assert [r[0] for r in out] == list(range(2000))
    assert out[7][1] == {"i": 7, "s": "x" * 7}
    with pytest.raises(psycopg.errors.InvalidTextRepresentation), \
            conn.cursor().copy("COPY compat_copy (id) FROM STDIN") as copy:
        copy.write(b"not-a-number\n")
    assert conn.execute("SELECT count(*) FROM compat_copy").fetchone() == (2000,)


# -- notifications, cancel ----------------------------------------------------------------

def test_notifies_in_session_mode(gws):
    gw, tenant = gws["session"]
    with psycopg.connect(gw.conninfo(tenant, sslmode="disable"), autocommit=True) as conn, \
            psycopg.connect(gw.conninfo(tenant, sslmode="disable"), autocommit=True) as other:
        conn.execute("LISTEN compat_chan")
        other.execute("SELECT pg_notify('compat_chan', 'hello')")
        other.execute("NOTIFY compat_chan, 'again'")
        got = []
        for n in conn.notifies(timeout=5, stop_after=2):
            got.append((n.channel, n.payload, n.pid))
        assert got == [("compat_chan", "hello", other.info.backend_pid),
                       ("compat_chan", "again", other.info.backend_pid)]


def test_listen_in_transaction_mode_is_refused_in_words(gws):
    gw, tenant = gws["transaction"]
    with psycopg.connect(gw.conninfo(tenant, sslmode="disable"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
            conn.execute("LISTEN compat_chan")
        assert "session" in str(info.value).lower()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_stops_the_running_statement(connect):
    conn = connect(autocommit=True)
    # cancel_safe: the blocking PQcancel would hold the GIL the in-process gateway needs.
    threading.Timer(0.5, conn.cancel_safe).start()
    started = time.monotonic()
    with pytest.raises(psycopg.errors.QueryCanceled):
        conn.execute("SELECT pg_sleep(10)")
    assert time.monotonic() - started < 5
    assert conn.execute("SELECT 3").fetchone() == (3,)


def test_statement_timeout_set_by_the_client(gws, mode):
    """Session mode keeps a session-level SET like PostgreSQL; transaction mode keeps
    SET LOCAL and startup options (a bare SET lasts for its own transaction: documented)."""
    gw, tenant = gws[mode]
    info = gw.conninfo(tenant, sslmode="disable")
    with psycopg.connect(info, autocommit=True) as conn:
        if mode == "session":
            conn.execute("SET statement_timeout = '200ms'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(2)")
            conn.execute("RESET statement_timeout")
        with pytest.raises(psycopg.errors.QueryCanceled), conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '200ms'")
            conn.execute("SELECT pg_sleep(2)")
        assert conn.execute("SELECT 4").fetchone() == (4,)
    with psycopg.connect(info, autocommit=True, options="-c statement_timeout=200") as conn:
        for _ in range(3):  # every checkout, whichever server
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(2)")
