"""Connection start: SSLRequest/TLS, StartupMessage, SCRAM-SHA-256, routing, admission.

This is the once-per-connection part of the front door, so it is a coroutine (the relay
afterwards runs on transport callbacks only). It follows docs/dev/frontdoors.md:
identify -> chain.auth -> SCRAM against the control plane's verifier -> route ->
chain.connect -> server checkout -> ParameterStatus/BackendKeyData/ReadyForQuery.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import TYPE_CHECKING

from ogelkit.model import Reason, Reject, Session
from ogelkit.scram import MECHANISM, ScramError, ScramServer
from ogelkit_postgres import protocol as pg
from ogelkit_postgres.client import CLOSED, RELAY
from ogelkit_postgres.errors import FEATURE_NOT_SUPPORTED, PROTOCOL_VIOLATION, reject_error
from ogelkit_postgres.pool import PoolTimeout
from ogelkit_postgres.server import UpstreamError, client_sqlstate

if TYPE_CHECKING:
    from ogelkit_postgres.client import ClientConnection

log = logging.getLogger("ogelkit.postgres")

_SLUG = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
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


async def _wait(conn: ClientConnection) -> None:
    if conn.phase == CLOSED:
        raise ClientGone()
    conn.swaiter = asyncio.get_running_loop().create_future()
    try:
        await conn.swaiter
    finally:
        conn.swaiter = None
    if conn.phase == CLOSED:
        raise ClientGone()


async def read_untyped(conn: ClientConnection) -> bytes:
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


async def read_typed(conn: ClientConnection, expected: int) -> bytes:
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


def fail(conn: ClientConnection, sqlstate: str, message: str, *, detail: str | None = None,
         hint: str | None = None, outcome: str = "error") -> None:
    conn.fd.count_connection(outcome)
    conn.fatal(sqlstate, message, detail=detail, hint=hint)
    raise LoginFailed(message)


def refuse(conn: ClientConnection, reject: Reject, outcome: str = "rejected") -> None:
    if conn.session is not None:
        conn.session.rejection = conn.session.rejection or reject
    conn.fd.count_connection(outcome)
    conn._write(reject_error(reject, fatal=True))
    conn.close()
    raise LoginFailed(reject.message)


async def login(conn: ClientConnection) -> None:
    try:
        async with asyncio.timeout(conn.fd.login_timeout):
            await _login(conn)
    except (LoginFailed, ClientGone):
        pass
    except TimeoutError:
        if conn.phase != CLOSED:
            conn.fd.count_connection("error")
            conn.fatal("57014", "canceling authentication due to timeout")
    except asyncio.CancelledError:
        if conn.phase != CLOSED:  # gateway shutting down
            conn.close()
        raise
    except Exception:
        log.exception("login failed unexpectedly", extra={"client": conn.peer})
        if conn.phase != CLOSED:
            conn.fd.count_connection("error")
            conn.fatal("XX000", "internal error in the gateway")
    finally:
        conn.login_task = None


async def _startup_packet(conn: ClientConnection) -> dict[str, str]:
    fd = conn.fd
    tls = False
    while True:
        body = await read_untyped(conn)
        code = pg.unpack_i32(body, 0)[0]
        if code == pg.SSL_REQUEST:
            if tls or conn.sbuf:  # bytes after SSLRequest could be injected in plain text
                fail(conn, PROTOCOL_VIOLATION, "unexpected data after SSLRequest")
            if fd.ssl_context is None:
                conn.transport.write(b"N")  # type: ignore[union-attr]
                continue
            conn.transport.write(b"S")  # type: ignore[union-attr]
            loop = asyncio.get_running_loop()
            transport = await loop.start_tls(conn.transport, conn, fd.ssl_context,  # type: ignore[arg-type]
                                             server_side=True)
            if transport is None:
                raise ClientGone()
            conn.transport = transport  # type: ignore[assignment]
            sslobj = transport.get_extra_info("ssl_object")
            conn.sni = getattr(sslobj, "o7s_sni", None)
            tls = True
            continue
        if code == pg.GSSENC_REQUEST:
            if conn.sbuf:
                fail(conn, PROTOCOL_VIOLATION, "unexpected data after GSSENCRequest")
            conn.transport.write(b"N")  # type: ignore[union-attr]
            continue
        if code == pg.CANCEL_REQUEST:
            if len(body) != 12:
                fail(conn, PROTOCOL_VIOLATION, "invalid length of cancel request")
            pid, secret = pg.unpack_i32(body, 4)[0], pg.unpack_i32(body, 8)[0]
            # Its own task: closing this connection cancels the login task, and a lookup in
            # the shared state (another replica's client) must outlive it.
            fd.spawn(fd.handle_cancel(pid, secret))
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
            conn.transport.write(pg.negotiate_protocol_version(0, unknown))  # type: ignore[union-attr]
        return {k: v for k, v in params.items() if not k.startswith("_pq_.")}


async def _pick_tenant(conn: ClientConnection, user: str, tenant_option: str | None) -> str:
    """options tenant= > user.tenant > SNI first label (when it names a tenant) > user."""
    if tenant_option:
        return tenant_option
    if "." in user:
        return user.rsplit(".", 1)[1]
    sni = conn.sni
    if sni:
        label = sni.split(".", 1)[0].lower()
        if label != user and _SLUG.match(label):
            try:
                if await conn.ctx.directory.lookup(label) is not None:
                    return label
            except Exception:
                pass  # the control plane lookup below reports the outage
    return user


async def _login(conn: ClientConnection) -> None:
    fd, ctx = conn.fd, conn.ctx
    params = await _startup_packet(conn)
    user = params.get("user", "")
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
    for name in settings:
        if not _GUC_NAME.match(name):
            fail(conn, PROTOCOL_VIOLATION, f"invalid startup parameter name {name!r}")

    slug = await _pick_tenant(conn, user, tenant_option)
    session = Session("postgres", conn.peer, user)
    conn.session = session
    entry = None
    if _SLUG.match(slug):
        try:
            entry = await ctx.directory.lookup(slug)
        except Exception as exc:
            log.warning("control plane lookup failed: %s", exc)
            refuse(conn, Reject(Reason.UNAVAILABLE, "the gateway cannot reach its control plane",
                                hint="Retry in a few seconds."), "error")
    if entry is not None:
        session.tenant = entry.tenant
        session.tier = entry.tier
    try:
        conn.chain.auth(session)
    except Reject as rej:
        refuse(conn, rej)

    # SCRAM-SHA-256 against the control plane's verifier; an unknown tenant goes through the
    # same exchange with a stable fake verifier, so the flow and timing do not tell.
    scram = ScramServer(ctx.directory.verifier_for(slug, entry))
    conn.transport.write(pg.auth_sasl([MECHANISM]))  # type: ignore[union-attr]
    body = await read_typed(conn, pg.T.PASSWORD)
    try:
        mechanism, i = pg.read_cstr(body, 0)
        length = pg.unpack_i32(body, i)[0]
        first = body[i + 4:i + 4 + length] if length >= 0 else b""
    except (ValueError, IndexError, Exception):
        fail(conn, PROTOCOL_VIOLATION, "malformed SASLInitialResponse message")
    if mechanism.decode(errors="replace") != MECHANISM:
        fail(conn, "28000", "client selected an invalid SASL authentication mechanism")
    try:
        conn.transport.write(pg.auth_sasl_continue(scram.first(first)))  # type: ignore[union-attr]
    except (ScramError, UnicodeDecodeError) as exc:
        fail(conn, PROTOCOL_VIOLATION, f"malformed SCRAM message: {exc}")
    body = await read_typed(conn, pg.T.PASSWORD)
    try:
        final = scram.final(body)
    except (ScramError, UnicodeDecodeError):
        if entry is None:
            # 3D000 for an unknown tenant (the contract), worded exactly like a
            # database a known tenant does not have: the text never names a tenant.
            refuse(conn, Reject(Reason.UNKNOWN, f'database "{database}" does not exist'))
        refuse(conn, Reject(Reason.AUTH, f'password authentication failed for user "{user}"'),
               "auth_failed")
    assert entry is not None  # a fake verifier never accepts a proof
    conn.transport.write(pg.auth_sasl_final(final) + pg.AUTH_OK)  # type: ignore[union-attr]

    # Route. The same error for a database that does not exist and one of another kind.
    db = entry.databases.get(database)
    backend = ctx.backends.get(db.backend) if db is not None else None
    if db is None or backend is None or backend not in fd.backends:
        refuse(conn, Reject(Reason.UNKNOWN, f'database "{database}" does not exist'))
    if entry.tenant.suspended:
        refuse(conn, Reject(Reason.SUSPENDED, f'tenant "{entry.tenant.slug}" is suspended',
                            hint="Contact the platform operator."))
    session.tier = entry.tier
    session.database = database
    session.db = db
    session.backend = backend
    session.authenticated = True
    try:
        await conn.chain.connect(session)
    except Reject as rej:
        refuse(conn, rej)
    ctx.sessions.add(session)
    session.closer = conn.close_with

    cfg = backend.config
    conn.cfg = cfg
    conn.session_mode = cfg.pool_mode == "session"
    conn.max_msg = cfg.max_message_size
    if not conn.session_mode:
        conn.parse_fifo = deque()
    pool = backend.pool_for(db)  # type: ignore[attr-defined]
    pool.set_tier(session.tier)
    conn.pool = pool
    conn.startup_settings = settings

    try:
        srv = await pool.acquire()
    except PoolTimeout:
        refuse(conn, conn._pool_exhausted())
    except UpstreamError as exc:
        fail(conn, client_sqlstate(exc), exc.message, detail=exc.detail, hint=exc.hint)
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
            fail(conn, "08006", exc.message)
        if error:  # e.g. an unknown parameter in the startup packet, as PostgreSQL says it
            fail(conn, error.get("C", "08006"), error.get("M", "invalid startup parameter"),
                 detail=error.get("D"), hint=error.get("H"))

    status = dict(srv.params)
    # Report the client's own view, not the gateway's upstream identity.
    status["application_name"] = settings.get("application_name", "")
    status["session_authorization"] = user
    status.pop("is_superuser", None)
    status["is_superuser"] = "off"
    pid, secret = fd.new_key(conn)
    conn.transport.write(  # type: ignore[union-attr]
        b"".join(pg.parameter_status(k, v) for k, v in status.items())
        + pg.backend_key_data(pid, secret) + pg.ready_for_query(b"I"))
    if not conn.session_mode:
        conn._release()
    conn.phase = RELAY
    fd.count_connection("accepted")
    fd.session_opened(conn)
    rest = bytes(conn.sbuf)
    conn.sbuf = bytearray()
    if rest:
        conn.data_received(rest)
