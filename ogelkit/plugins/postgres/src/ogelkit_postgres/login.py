"""Connection start: SSLRequest/TLS, StartupMessage, SCRAM-SHA-256, routing, admission.

This is the once-per-connection part of the front door, so it is a coroutine (the relay
afterwards runs on transport callbacks only). The protocol-independent steps are the
core's ``ogelkit.frontdoor.Login`` (docs/dev/frontdoors.md): identify -> ``lookup`` ->
``check_ban`` -> SCRAM against ``verifier()`` (``bad_credentials`` for a wrong proof and
an unknown tenant alike) -> ``route`` -> ``admit`` -> server checkout ->
ParameterStatus/BackendKeyData/ReadyForQuery; ``end`` runs when the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import TYPE_CHECKING, NoReturn

from ogelkit import Reason, Reject, Session
from ogelkit.frontdoor import SLUG, Login
from ogelkit.scram import MECHANISM, ScramError, ScramServer
from ogelkit_postgres import wire as pg
from ogelkit_postgres.connection import CLOSED, RELAY
from ogelkit_postgres.errors import (
    FEATURE_NOT_SUPPORTED,
    PROTOCOL_VIOLATION,
    SQLSTATE,
    reject_error,
)
from ogelkit_postgres.pool import PoolTimeout
from ogelkit_postgres.upstream import UpstreamError, client_sqlstate

if TYPE_CHECKING:
    from ogelkit_postgres.connection import PostgresConnection

log = logging.getLogger("ogelkit.postgres")

_GUC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.$]*$")
#: Startup-options names that carry the tenant (ours; Supavisor's; Neon's).
TENANT_OPTIONS = ("tenant", "reference", "endpoint")
#: Startup parameters that are not session settings.
NOT_SETTINGS = frozenset({"user", "database", "options", "replication"})


class LoginFailed(Exception):
    """Ends the login; the client has been told why."""


class ClientGone(Exception):
    pass


def parse_options(text: str) -> tuple[str | None, dict[str, str]]:
    """The ``options`` startup parameter: ``-c name=value``, ``--name=value`` or
    ``name=value`` items separated by spaces (backslash escapes a space), as libpq sends.
    Returns (tenant, other settings)."""
    tokens: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        tokens.append("".join(current))
    tenant = None
    settings: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "-c" and i + 1 < len(tokens):
            item, i = tokens[i + 1], i + 2
        elif tok.startswith("-c") or tok.startswith("--"):
            item, i = tok[2:], i + 1
        else:
            item, i = tok, i + 1
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"invalid command-line option {tok!r} in the options parameter")
        name = name.replace("-", "_") if tok.startswith("--") else name
        if name in TENANT_OPTIONS:
            tenant = value
        else:
            settings[name] = value
    return tenant, settings


async def _wait(conn: PostgresConnection) -> None:
    if conn.phase == CLOSED:
        raise ClientGone()
    conn.swaiter = asyncio.get_running_loop().create_future()
    try:
        await conn.swaiter
    finally:
        conn.swaiter = None
    if conn.phase == CLOSED:
        raise ClientGone()


async def read_untyped(conn: PostgresConnection) -> bytes:
    """The next length-prefixed startup-phase packet (body after the length)."""
    while True:
        buf = conn.sbuf
        if len(buf) >= 4:
            length = pg.unpack_len(buf, 0)[0]
            if length < 8 or length > pg.MAX_STARTUP_PACKET:
                fail(conn, PROTOCOL_VIOLATION, "invalid length of startup packet")
            if len(buf) >= length:
                body = bytes(buf[4:length])
                del buf[:length]
                return body
        await _wait(conn)


async def read_typed(conn: PostgresConnection, expected: int) -> bytes:
    while True:
        buf = conn.sbuf
        if len(buf) >= 5:
            kind = buf[0]
            length = pg.unpack_len(buf, 1)[0]
            if kind != expected:
                fail(conn, PROTOCOL_VIOLATION,
                     f"expected password response, got message type {chr(kind)!r}")
            if length < 4 or length > pg.MAX_STARTUP_PACKET:
                fail(conn, PROTOCOL_VIOLATION, "invalid message length")
            if len(buf) >= length + 1:
                body = bytes(buf[5:length + 1])
                del buf[:length + 1]
                return body
        await _wait(conn)


def start_login(conn: PostgresConnection, user: str = "") -> Login:
    """The core's ``Login`` of this connection (created once the user name is known, or at
    the first refusal before it)."""
    login = conn.login
    if login is None:
        login = conn.login = conn.door.login(Session("postgres", conn.peer, user))
        conn.session = login.session
    elif user and not login.session.user:
        login.session.user = user
    return login


def fail(conn: PostgresConnection, sqlstate: str, message: str, *, detail: str | None = None,
         hint: str | None = None, outcome: str = "error") -> NoReturn:
    """A protocol-level refusal (no ``Reason`` fits: malformed packets, unsupported
    features): counted as ``outcome``, answered with ``sqlstate``."""
    start_login(conn)
    conn.metrics.connection(outcome)
    conn.fatal(sqlstate, message, detail=detail, hint=hint)
    raise LoginFailed(message)


def answer(conn: PostgresConnection, reject: Reject) -> None:
    """A ``Reject`` raised by a login step (already recorded and counted by ``Login``)."""
    conn._write(reject_error(reject, fatal=True))
    conn.close()


async def run_login(conn: PostgresConnection) -> None:
    try:
        async with asyncio.timeout(conn.door.handshake_timeout) as deadline:
            await _login(conn, deadline)
    except (LoginFailed, ClientGone):
        pass
    except Reject as rej:
        if conn.phase != CLOSED:
            answer(conn, rej)
    except TimeoutError:
        if conn.phase != CLOSED:
            login = start_login(conn)
            refused = login.refuse(
                Reject(Reason.TIMEOUT, "canceling authentication due to timeout"), "error")
            conn.fatal(SQLSTATE[refused.reason], refused.message)
    except asyncio.CancelledError:
        if conn.phase != CLOSED:  # gateway shutting down
            conn.close()
        raise
    except Exception:
        log.exception("login failed unexpectedly", extra={"client": conn.peer})
        if conn.phase != CLOSED:
            conn.metrics.connection("error")
            conn.fatal("XX000", "internal error in the gateway")
    finally:
        conn.login_task = None


async def _startup_packet(conn: PostgresConnection) -> dict[str, str]:
    door = conn.door
    tls = False
    while True:
        body = await read_untyped(conn)
        code = pg.unpack_i32(body, 0)[0]
        if code == pg.SSL_REQUEST:
            if tls or conn.sbuf:  # bytes after SSLRequest could be injected in plain text
                fail(conn, PROTOCOL_VIOLATION, "unexpected data after SSLRequest")
            if door.ssl_context is None:
                conn._write(b"N")
                continue
            conn._write(b"S")
            loop = asyncio.get_running_loop()
            transport = await loop.start_tls(conn.transport, conn, door.ssl_context,  # type: ignore[arg-type]
                                             server_side=True)
            if transport is None:
                raise ClientGone()
            conn.transport = transport
            sslobj = transport.get_extra_info("ssl_object")
            conn.sni = getattr(sslobj, "o7s_sni", None)
            tls = True
            continue
        if code == pg.GSSENC_REQUEST:
            if conn.sbuf:
                fail(conn, PROTOCOL_VIOLATION, "unexpected data after GSSENCRequest")
            conn._write(b"N")
            continue
        if code == pg.CANCEL_REQUEST:
            if len(body) != 12:
                fail(conn, PROTOCOL_VIOLATION, "invalid length of cancel request")
            pid, secret = pg.unpack_i32(body, 4)[0], pg.unpack_i32(body, 8)[0]
            # Its own task: closing this connection cancels the login task, and a lookup in
            # the shared state (another replica's client) must outlive it.
            door.spawn(door.handle_cancel(pid, secret))
            conn.close()
            raise LoginFailed("cancel request")
        if code >> 16 != 3:
            fail(conn, FEATURE_NOT_SUPPORTED,
                 f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports "
                 "3.0 to 3.0")
        try:
            _, params = pg.parse_startup(body)
        except ValueError as exc:
            fail(conn, PROTOCOL_VIOLATION, f"invalid startup packet layout: {exc}")
        unknown = [k for k in params if k.startswith("_pq_.")]
        if code & 0xFFFF or unknown:
            conn._write(pg.negotiate_protocol_version(0, unknown))
        return {k: v for k, v in params.items() if not k.startswith("_pq_.")}


async def _pick_tenant(conn: PostgresConnection, user: str, tenant_option: str | None) -> str:
    """options tenant= > user.tenant > SNI first label (when it names a tenant) > user."""
    if tenant_option:
        return tenant_option
    if "." in user:
        return user.rsplit(".", 1)[1]
    sni = conn.sni
    if sni:
        label = sni.split(".", 1)[0].lower()
        if label != user and SLUG.match(label):
            try:
                if await conn.ctx.directory.lookup(label) is not None:
                    return label
            except Exception:
                pass  # the control plane lookup below reports the outage
    return user


async def _login(conn: PostgresConnection, deadline: asyncio.Timeout | None = None) -> None:
    door = conn.door
    params = await _startup_packet(conn)
    user = params.get("user", "")
    login = start_login(conn, user)
    if not user:
        fail(conn, "28000", "no PostgreSQL user name specified in startup packet")
    database = params.get("database") or user
    try:
        tenant_option, option_settings = parse_options(params.get("options", ""))
    except ValueError as exc:
        fail(conn, PROTOCOL_VIOLATION, str(exc))
    if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
        fail(conn, FEATURE_NOT_SUPPORTED, "replication connections are not supported by the "
                                          "gateway")
    settings = {k: v for k, v in params.items() if k not in NOT_SETTINGS}
    settings.update(option_settings)
    # Upstream, application_name is exactly the client's (empty when it set none), as
    # SHOW application_name and pg_stat_activity would say on PostgreSQL itself.
    settings.setdefault("application_name", "")
    for name in settings:
        if not _GUC_NAME.match(name):
            fail(conn, PROTOCOL_VIOLATION, f"invalid startup parameter name {name!r}")

    slug = await _pick_tenant(conn, user, tenant_option)
    entry = await login.lookup(slug)  # Reject(UNAVAILABLE) when the control plane is down
    login.check_ban()

    # SCRAM-SHA-256 against the control plane's verifier; an unknown tenant goes through the
    # same exchange with a stable fake verifier, and gets the same answer as a wrong
    # password (as PostgreSQL answers for a role that does not exist).
    scram = ScramServer(login.verifier())
    conn._write(pg.auth_sasl([MECHANISM]))
    body = await read_typed(conn, pg.T.PASSWORD)
    first = parse_sasl_initial(body)
    if first is None:
        fail(conn, PROTOCOL_VIOLATION, "malformed SASLInitialResponse message")
    mechanism, first_msg = first
    if mechanism != MECHANISM:
        fail(conn, "28000", "client selected an invalid SASL authentication mechanism")
    try:
        conn._write(pg.auth_sasl_continue(scram.first(first_msg)))
    except (ScramError, UnicodeDecodeError, ValueError) as exc:
        fail(conn, PROTOCOL_VIOLATION, f"malformed SCRAM message: {exc}")
    body = await read_typed(conn, pg.T.PASSWORD)
    try:
        final = scram.final(body)
    except (ScramError, UnicodeDecodeError, ValueError):
        raise login.bad_credentials(
            f'password authentication failed for user "{user}"') from None
    assert entry is not None  # a fake verifier never accepts a proof
    conn._write(pg.auth_sasl_final(final) + pg.AUTH_OK)

    # Route: the same error for a database that does not exist and one of another kind.
    db = login.route(database, f'database "{database}" does not exist')
    backend = login.session.backend
    up = db.upstream
    pairs = [(str(up.get("dbname") or ""), database), (str(up.get("role") or ""), user)]
    conn.hide = sorted(((o.encode(), n.encode()) for o, n in pairs if o and o != n),
                       key=lambda pair: -len(pair[0]))
    # Admission has bounds of its own (the gatekeeper's queue wait, the lifecycle's
    # wake_timeout): the handshake deadline stops while a sleeping database wakes.
    loop = asyncio.get_running_loop()
    when = deadline.when() if deadline is not None else None
    left = when - loop.time() if when is not None else None
    if deadline is not None:
        deadline.reschedule(None)
    await login.admit(conn.close_with)
    if deadline is not None and left is not None:
        deadline.reschedule(loop.time() + max(left, 1.0))
    session = login.session

    cfg = backend.config  # type: ignore[union-attr]
    conn.cfg = cfg
    conn.session_mode = cfg.pool_mode == "session"
    conn.max_msg = cfg.max_message_size
    if not conn.session_mode:
        conn.parse_fifo = deque()
    pool = backend.pool_for(db)  # type: ignore[union-attr]
    pool.set_tier(session.tier)
    conn.pool = pool
    conn.startup_settings = settings

    # Admitted (and counted) already: what fails from here is told to the client and
    # recorded on the session, not counted a second time.
    try:
        srv = await pool.acquire()
    except PoolTimeout:
        late_refusal(conn, conn._pool_exhausted())
    except UpstreamError as exc:
        conn.fatal(client_sqlstate(exc), conn.hide_names(exc.message) or "upstream error",
                   detail=conn.hide_names(exc.detail), hint=conn.hide_names(exc.hint))
        raise LoginFailed(exc.message) from None
    if conn.phase == CLOSED:
        pool.checkin(srv)
        raise ClientGone()
    conn._attach(srv)
    if conn.swallow_z:
        capture = asyncio.get_running_loop().create_future()
        conn.capture = capture
        try:
            error = await capture
        except UpstreamError as exc:
            conn.fatal("08006", exc.message)
            raise LoginFailed(exc.message) from None
        if error:  # e.g. an unknown parameter in the startup packet, as PostgreSQL says it
            conn.fatal(error.get("C", "08006"),
                       conn.hide_names(error.get("M")) or "invalid startup parameter",
                       detail=conn.hide_names(error.get("D")), hint=conn.hide_names(error.get("H")))
            raise LoginFailed(error.get("M", ""))

    status = dict(srv.params)
    # Report the client's own view, not the gateway's upstream identity.
    status["application_name"] = settings.get("application_name", "")
    status["session_authorization"] = user
    status.pop("is_superuser", None)
    status["is_superuser"] = "off"
    # Session mode: the client's server for its whole session, so the client is told that
    # server's real pid (NOTIFY's pid, pg_stat_activity, pg_terminate_backend agree), with
    # a secret of the gateway's: a CancelRequest still comes through the gateway.
    pid, secret = door.new_key(conn, srv.pid if conn.session_mode else None)
    conn.transport.write(  # type: ignore[union-attr]
        b"".join(pg.parameter_status(k, v) for k, v in status.items())
        + pg.backend_key_data(pid, secret) + pg.ready_for_query(b"I"))
    if not conn.session_mode:
        conn._release()
    conn.share = door.turns.share(session.tenant_slug)  # fairness between tenants
    conn.phase = RELAY
    rest = bytes(conn.sbuf)
    conn.sbuf = bytearray()
    if rest:
        conn.data_received(rest)
    elif conn.clients.draining is not None:
        conn.clients.idle(conn)


def late_refusal(conn: PostgresConnection, reject: Reject) -> NoReturn:
    """A refusal after admission (no server connection in time): the session records it,
    the connection outcome was counted at admission."""
    session = conn.session
    if session is not None and session.rejection is None:
        session.rejection = reject
    answer(conn, reject)
    raise LoginFailed(reject.message)


def parse_sasl_initial(body: bytes) -> tuple[str, bytes] | None:
    """SASLInitialResponse: mechanism name (NUL-terminated), int32 length (-1: none), data.
    None when malformed."""
    nul = body.find(b"\0")
    if nul < 0 or len(body) < nul + 5:
        return None
    mechanism = body[:nul].decode("utf-8", "replace")
    length = pg.unpack_i32(body, nul + 1)[0]
    data = body[nul + 5:]
    if length < 0:
        return mechanism, b""
    if length != len(data):
        return None
    return mechanism, data
