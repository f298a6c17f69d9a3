"""Login through the gateway: TLS, SCRAM, tenant routing and every login error's SQLSTATE."""

from __future__ import annotations

import asyncio
import tempfile

import asyncpg
import psycopg
import pytest
from ogelkit_postgres import wire as pg
from ogelkit_postgres.testing import RawClient, Tenant, pg_gateway, self_signed_cert, unique

A = Tenant(unique("pgla"))
B = Tenant(unique("pglb"))  # gets suspended and resumed
TIERED = Tenant(unique("pglf"), tier="free")


@pytest.fixture(scope="module")
def gw():
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed_cert(tmp)
        with pg_gateway([A, B, TIERED], listen=f'tls_cert = "{cert}"\ntls_key = "{key}"',
                        backend_options='max_message_size = "1MB"') as gw:
            yield gw


def connect_error(gw, **kw) -> asyncpg.PostgresError:
    async def go():
        with pytest.raises(asyncpg.PostgresError) as info:
            conn = await asyncpg.connect(**{**gw.asyncpg_kw(A), "ssl": False, **kw})
            await conn.close()
        return info.value
    return asyncio.run(go())


# -- the three drivers --------------------------------------------------------------------

def test_psql_logs_in_and_queries(gw):
    out = gw.psql(A, "-c", "SELECT 40 + 2", "-c", "SELECT current_database()")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["42", gw.backend().names(A.slug, "main")[1]]


def test_asyncpg_logs_in_and_queries(gw):
    async def go():
        conn = await asyncpg.connect(**gw.asyncpg_kw(A), ssl=False)
        try:
            assert await conn.fetchval("SELECT $1::int * 2", 21) == 42
            assert conn.get_server_version().major == 15
            assert conn.get_settings().client_encoding == "UTF8"
        finally:
            await conn.close()
    asyncio.run(go())


def test_psycopg_logs_in_and_reports_parameters(gw):
    with psycopg.connect(gw.conninfo(A, sslmode="disable", application_name="myapp")) as conn:
        assert conn.execute("SELECT 'ok'").fetchone() == ("ok",)
        info = conn.info
        assert info.parameter_status("server_version").startswith("15")
        assert info.parameter_status("application_name") == "myapp"
        assert info.parameter_status("session_authorization") == A.slug
        assert info.backend_pid != 0  # the gateway's own BackendKeyData


# -- tenant identification ------------------------------------------------------------------

def test_tenant_from_user_suffix(gw):
    with psycopg.connect(gw.conninfo(A, sslmode="disable", user=f"reporting.{A.slug}")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_tenant_from_options_and_other_options_become_settings(gw):
    opts = f"-c tenant={A.slug} -c work_mem=5MB --search-path=public"
    with psycopg.connect(gw.conninfo(A, sslmode="disable", user="app"), options=opts) as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("5MB",)
        assert conn.execute("SHOW search_path").fetchone() == ("public",)


def test_tenant_from_tls_sni_first_label(gw):
    # libpq sends SNI for host names only; hostaddr skips DNS.
    info = (f"host={A.slug}.db.test hostaddr=127.0.0.1 port={gw.port} user=someone "
            f"password={A.password} dbname=main sslmode=require")
    with psycopg.connect(info) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 7").fetchone() == (7,)


def test_tls_is_optional_when_configured(gw):
    with psycopg.connect(gw.conninfo(A, sslmode="prefer")) as conn:
        assert conn.pgconn.ssl_in_use
    with psycopg.connect(gw.conninfo(A, sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use


def test_startup_parameters_are_passed_on(gw):
    async def go():
        conn = await asyncpg.connect(**gw.asyncpg_kw(A), ssl=False,
                                     server_settings={"search_path": "pg_catalog",
                                                      "DateStyle": "German"})
        try:
            assert await conn.fetchval("SHOW search_path") == "pg_catalog"
            assert (await conn.fetchval("SHOW DateStyle")).startswith("German")
        finally:
            await conn.close()
    asyncio.run(go())


# -- errors ---------------------------------------------------------------------------------

def test_wrong_password_is_28P01(gw):
    err = connect_error(gw, password="not-the-password")
    assert err.sqlstate == "28P01"
    assert "password authentication failed" in str(err)


def test_unknown_tenant_answers_exactly_like_a_wrong_password(gw):
    """An unknown tenant goes through the same SCRAM exchange and gets 28P01 with the words
    PostgreSQL uses for a wrong password (and for a role that does not exist), byte for
    byte the ErrorResponse a known tenant gets for a wrong password."""
    unknown = connect_error(gw, user="no-such-tenant-xyz", password="nope")
    wrong = connect_error(gw, user=A.slug, password="nope")
    assert unknown.sqlstate == wrong.sqlstate == "28P01"
    assert str(unknown) == 'password authentication failed for user "no-such-tenant-xyz"'
    assert str(wrong) == f'password authentication failed for user "{A.slug}"'

    def raw_answer(user: str) -> bytes:
        raw = RawClient(gw.port)
        try:
            msgs = raw.login(user, "nope", database="main")
            kind, body = msgs[-1]
            return kind + body.replace(user.encode(), b"<user>")
        finally:
            raw.close()
    assert raw_answer("no-such-tenant-xyz") == raw_answer(A.slug)
    # Even naming a database that does not exist: the credentials are checked first.
    assert connect_error(gw, user="no-such-tenant-xyz", database="nope").sqlstate == "28P01"


def test_unknown_database_is_3D000(gw):
    err = connect_error(gw, database="nope")
    assert err.sqlstate == "3D000"
    assert str(err) == 'database "nope" does not exist'


def test_other_tenants_database_is_3D000_with_the_same_message(gw):
    """B names A's database while authenticated as B: indistinguishable from a typo."""
    own = connect_error(gw, user=B.slug, password=B.password, database="elsewhere")
    other = connect_error(gw, user=B.slug, password=B.password, database="main-of-a")
    assert own.sqlstate == other.sqlstate == "3D000"


def test_suspended_tenant_is_57P03_and_live_sessions_are_closed(gw):
    async def go():
        conn = await asyncpg.connect(**gw.asyncpg_kw(B), ssl=False)
        store = gw.context.store
        try:
            gw.call(store.update_tenant(B.slug, status="suspended"))
            gw.context.directory.invalidate(B.slug)
            with pytest.raises(asyncpg.PostgresError) as info:
                await asyncpg.connect(**gw.asyncpg_kw(B), ssl=False)
            assert info.value.sqlstate == "57P03"
            # The open session is closed with the same error within the cache TTL.
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError,
                                ConnectionError)) as closed:
                for _ in range(50):
                    await conn.fetchval("SELECT 1")
                    await asyncio.sleep(0.1)
            assert getattr(closed.value, "sqlstate", "57P03") == "57P03"
        finally:
            gw.call(store.update_tenant(B.slug, status="active"))
            gw.context.directory.invalidate(B.slug)
        conn = await asyncpg.connect(**gw.asyncpg_kw(B), ssl=False)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    asyncio.run(go())


def test_unknown_startup_parameter_is_the_servers_error(gw):
    err = connect_error(gw, server_settings={"no_such_setting": "1"})
    assert err.sqlstate == "42704"


def test_replication_connections_are_refused(gw):
    raw = RawClient(gw.port)
    try:
        msgs = raw.login(A.slug, A.password, replication="database")
        assert raw.error(msgs)["C"] == "0A000"
    finally:
        raw.close()


def test_gssenc_request_is_refused_then_login_proceeds(gw):
    raw = RawClient(gw.port)
    try:
        raw.send(pg.pack_i32(8) + pg.pack_i32(pg.GSSENC_REQUEST))
        assert raw.recv_exact(1) == b"N"
        msgs = raw.login(A.slug, A.password)
        assert msgs[-1] == (b"Z", b"I")
        kinds = {k for k, _ in msgs}
        assert {b"S", b"K"} <= kinds
    finally:
        raw.close()


def test_ssl_request_without_certificate_gets_N():
    with pg_gateway([]) as plain:
        raw = RawClient(plain.port)
        try:
            raw.send(pg.pack_i32(8) + pg.pack_i32(pg.SSL_REQUEST))
            assert raw.recv_exact(1) == b"N"
        finally:
            raw.close()


def test_unsupported_protocol_version_is_0A000(gw):
    raw = RawClient(gw.port)
    try:
        raw.send(pg.pack_i32(9) + pg.pack_i32(2 << 16) + b"\0")
        kind, body = raw.message()
        assert kind == b"E" and pg.error_fields(body)["C"] == "0A000"
        assert raw.closed()
    finally:
        raw.close()


def test_oversized_startup_packet_is_08P01(gw):
    raw = RawClient(gw.port)
    try:
        raw.send(pg.pack_i32(100_000) + pg.pack_i32(pg.PROTOCOL_3))
        kind, body = raw.message()
        assert kind == b"E" and pg.error_fields(body)["C"] == "08P01"
        assert raw.closed()
    finally:
        raw.close()


def test_malformed_message_is_08P01_and_closes_only_that_client(gw):
    async def go():
        bystander = await asyncpg.connect(**gw.asyncpg_kw(A), ssl=False)
        try:
            for bad in (b"Q" + pg.pack_i32(2),  # length below 4
                        b"?" + pg.pack_i32(4)):  # no such message type
                raw = RawClient(gw.port)
                try:
                    assert raw.login(A.slug, A.password)[-1] == (b"Z", b"I")
                    raw.send(bad)
                    kind, body = raw.message()
                    fields = pg.error_fields(body)
                    assert kind == b"E" and fields["C"] == "08P01" and fields["S"] == "FATAL"
                    assert raw.closed()
                finally:
                    raw.close()
            assert await bystander.fetchval("SELECT 'still here'") == "still here"
        finally:
            await bystander.close()
    asyncio.run(go())


def test_oversized_message_is_08P01(gw):
    raw = RawClient(gw.port)
    try:
        assert raw.login(A.slug, A.password)[-1] == (b"Z", b"I")
        raw.send(pg.query("SELECT '" + "x" * (2 * 1024 * 1024) + "'"))
        kind, body = raw.message()
        fields = pg.error_fields(body)
        assert kind == b"E" and fields["C"] == "08P01" and "limit" in fields["M"]
        assert raw.closed()
    finally:
        raw.close()

    async def go():
        # asyncpg reports a FATAL error mid-query as a lost connection carrying the text.
        conn = await asyncpg.connect(**gw.asyncpg_kw(A), ssl=False)
        with pytest.raises(asyncpg.PostgresError, match="gateway's limit"):
            await conn.execute("SELECT '" + "x" * (2 * 1024 * 1024) + "'")
        conn.terminate()
        again = await asyncpg.connect(**gw.asyncpg_kw(A), ssl=False)
        assert await again.fetchval("SELECT length($1::text)", "y" * 500_000) == 500_000
        await again.close()
    asyncio.run(go())


def test_garbage_sasl_response_is_08P01(gw):
    raw = RawClient(gw.port)
    try:
        raw.send(pg.startup_message({"user": A.slug, "database": "main"}))
        assert raw.message()[0] == b"R"
        raw.send(pg.sasl_initial_response("SCRAM-SHA-256", b"garbage"))
        kind, body = raw.message()
        assert kind == b"E" and pg.error_fields(body)["C"] == "08P01"
    finally:
        raw.close()


def test_cancel_request_with_unknown_key_is_ignored(gw):
    raw = RawClient(gw.port)
    try:
        raw.send(pg.cancel_request(12345, 678))
        assert raw.closed()
    finally:
        raw.close()
    assert gw.psql(A, "-c", "SELECT 1").stdout.strip() == "1"
