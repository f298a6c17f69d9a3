"""The MongoDB handshake: ``hello`` (also legacy ``isMaster`` over OP_QUERY) and SCRAM-SHA-256
through ``saslStart``/``saslContinue`` or ``speculativeAuthenticate`` inside ``hello``, on
the core's ``ogelkit.frontdoor.Login`` steps.

``hello`` works before authentication (drivers and their monitors call it first; monitor
connections never authenticate and never become sessions). The SCRAM user name is the
tenant. An unknown tenant runs the exchange against the directory's stable fake verifier,
so it fails exactly like a wrong password: the same ``AuthenticationFailed`` document.

A refusal of a *speculative* authentication (a ban, the control plane down) is not lost
with a closed connection: ``hello`` is answered, and the driver's explicit ``saslStart``
that follows gets the refusal's error document (pymongo then raises it), then the close.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ogelkit import Reason, Reject, Session
from ogelkit.scram import ScramError, ScramServer
from ogelkit_mongodb import errors

if TYPE_CHECKING:
    from ogelkit.frontdoor import Login
    from ogelkit_mongodb.connection import MongoConnection

log = logging.getLogger("ogelkit.mongodb")

Respond = Callable[[dict[str, Any]], object]

#: The one answer to a wrong password and to an unknown tenant (what MongoDB itself says).
AUTH_FAILED = "Authentication failed."


def scram_user(payload: bytes) -> str:
    """The user name of a SCRAM client-first-message (``n,,n=user,r=...``); never raises."""
    text = payload.decode("utf-8", "replace")
    for part in text.split(","):
        if part.startswith("n=") and len(part) > 2:
            return part[2:].replace("=2C", ",").replace("=3D", "=")
    return ""


class Handshake:
    """The authentication state of one connection (dropped once it is authenticated)."""

    __slots__ = ("conn", "done", "login", "refused", "scram", "skip_empty")

    def __init__(self, conn: MongoConnection):
        self.conn = conn
        self.login: Login | None = None
        self.scram: ScramServer | None = None
        self.done = False  # the proof was accepted; an empty saslContinue may follow
        self.skip_empty = False
        #: A refused speculative authentication: the next saslStart is answered with it.
        self.refused: dict[str, Any] | None = None

    # -- hello -----------------------------------------------------------------------------
    def hello(self, doc: dict[str, Any], name: str, respond: Respond) -> None:
        conn = self.conn
        reply: dict[str, Any] = {}
        if doc.get("helloOk"):
            reply["helloOk"] = True
        reply["isWritablePrimary" if name == "hello" else "ismaster"] = True
        reply.update(conn.door.server_limits())
        reply["localTime"] = datetime.datetime.now(datetime.UTC)
        reply["connectionId"] = conn.id
        reply["readOnly"] = False
        if "saslSupportedMechs" in doc:
            reply["saslSupportedMechs"] = ["SCRAM-SHA-256"]
        spec = doc.get("speculativeAuthenticate")
        if isinstance(spec, dict) and spec.get("saslStart") and not conn.authenticated \
                and self.login is None:
            db = spec.get("db")

            def finish(auth: dict[str, Any], close: bool = False) -> None:
                if auth.get("ok"):
                    auth.pop("ok", None)
                    reply["speculativeAuthenticate"] = auth
                elif close:
                    self.refused = auth  # told on the driver's own saslStart
                reply["ok"] = 1.0
                respond(reply)

            self.sasl("saslStart", spec, db if isinstance(db, str) else "admin", finish,
                      speculative=True)
            return
        reply["ok"] = 1.0
        respond(reply)

    # -- SASL ------------------------------------------------------------------------------
    def sasl(self, name: str, doc: dict[str, Any], db: str, respond: Callable[..., None], *,
             speculative: bool = False) -> None:
        conn = self.conn
        if self.refused is not None and not speculative:
            refused, self.refused = self.refused, None
            respond(refused)
            conn.close()
            return
        if conn.task is not None:
            respond(errors.error_doc(errors.BAD_VALUE, "an authentication is already running"))
            return
        conn.busy = True
        coro = self._start(doc, db) if name == "saslStart" else self._continue(doc)
        task = conn.task = asyncio.get_running_loop().create_task(coro)

        def done(task: asyncio.Task[tuple[dict[str, Any], bool]]) -> None:
            conn.task = None
            if task.cancelled() or conn.closed:
                return
            try:
                reply, close = task.result()
            except Exception as exc:  # a bug: answered, logged once, no traceback flood
                conn.malformed(f"authentication failed unexpectedly: {exc!r}")
                reply, close = errors.error_doc(errors.INTERNAL_ERROR, "internal error"), True
            conn.busy = False
            if speculative:
                respond(reply, close)  # hello is answered; a refusal waits for saslStart
                conn.became_idle()
                return
            respond(reply)
            if close:
                conn.close()
            else:
                conn.became_idle()

        task.add_done_callback(done)

    async def _start(self, doc: dict[str, Any], db: str) -> tuple[dict[str, Any], bool]:
        conn = self.conn
        if conn.authenticated or self.login is not None:
            return errors.error_doc(errors.AUTHENTICATION_FAILED,
                                    "this connection already authenticated; open a new one to "
                                    "change users"), False
        mech = doc.get("mechanism")
        if mech != "SCRAM-SHA-256":
            return errors.error_doc(errors.AUTHENTICATION_FAILED,
                                    f"mechanism {str(mech)[:40]} is not supported by the "
                                    "gateway; use SCRAM-SHA-256"), False
        payload = doc.get("payload")
        if not isinstance(payload, bytes):  # never bytes(<int>): that allocates the int
            return errors.error_doc(errors.TYPE_MISMATCH,
                                    "saslStart payload must be binary data"), False
        user = scram_user(payload)
        login = self.login = conn.door.login(Session("mongodb", conn.peer, user=user))
        conn.login = login
        conn.session = login.session
        conn.auth_db = db
        opts = doc.get("options")
        self.skip_empty = bool(isinstance(opts, dict) and opts.get("skipEmptyExchange"))
        try:
            await login.lookup(user)
            login.check_ban()
        except Reject as rej:
            return errors.reject_doc(rej), True
        self.scram = ScramServer(login.verifier())
        try:
            server_first = self.scram.first(payload.decode("utf-8"))
        except (ScramError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            return self._bad_credentials(str(exc)), True
        return {"conversationId": 1, "done": False, "payload": server_first.encode(),
                "ok": 1.0}, False

    def _bad_credentials(self, why: str) -> dict[str, Any]:
        login = self.login
        assert login is not None
        rej = login.bad_credentials(AUTH_FAILED)
        log.info("mongodb authentication failed", extra={
            "user": login.session.user, "client": self.conn.peer, "why": why[:200]})
        return errors.reject_doc(rej)

    async def _continue(self, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        conn = self.conn
        scram, login = self.scram, self.login
        if scram is None or login is None:
            return errors.error_doc(errors.PROTOCOL_ERROR,
                                    "no SASL conversation in progress"), False
        if self.done:
            self.scram = None
            conn.handshake = None
            return {"conversationId": 1, "done": True, "payload": b"", "ok": 1.0}, False
        payload = doc.get("payload")
        if not isinstance(payload, bytes):
            return self._bad_credentials("saslContinue payload is not binary data"), True
        try:
            server_final = scram.final(payload.decode("utf-8"))
        except (ScramError, ValueError) as exc:
            return self._bad_credentials(str(exc)), True
        entry = login.entry
        if entry is None:  # cannot pass the fake verifier; answered the same way regardless
            return self._bad_credentials("unknown tenant"), True
        reply = {"conversationId": 1, "done": self.skip_empty, "payload": server_final.encode(),
                 "ok": 1.0}
        door = conn.door
        dbs = {n: d for n, d in entry.databases.items()
               if d.kind == "mongodb" and d.backend in door.backend_ids}
        try:
            home = dbs.get(conn.auth_db) or (dbs[min(dbs)] if dbs else None)
            if home is None:
                raise login.refuse(Reject(
                    Reason.UNKNOWN, f'tenant "{entry.tenant.slug}" has no MongoDB database',
                    hint="Create one with `ogelkit databases create "
                         f"{entry.tenant.slug} main --kind mongodb`."))
            conn.set_databases(dbs)
            login.use(home, conn.ctx.backends[home.backend])
            await login.admit(conn.close_with)
        except Reject as rej:
            return errors.reject_doc(rej), True
        conn.authenticated_now()
        if self.skip_empty:
            self.scram = None
            conn.handshake = None
        else:
            self.done = True
        return reply, False
