"""A tiny line protocol front door used to test the core runtime without a database plugin.

Protocol (one command per line):
    AUTH <tenant> <password> <database>   -> "OK" or "ERR <reason> <message>"
    PING                                  -> "PONG"
    SLEEP <seconds>                       -> "SLEPT" after the delay (an operation)
It is the smallest door on the core machinery (``ogelkit.frontdoor``), so it also shows the
core path works, and it runs ``FrontDoorContract``.
The backend's readiness check probes a real TCP server (``probe_host``/``probe_port``).
"""

from __future__ import annotations

import asyncio
import time

import anyio
import attrs

import ogelkit
from ogelkit.frontdoor import Login, peer_address
from ogelkit.model import Operation, Reason, Reject, Session


@attrs.define(kw_only=True)
class LineOptions:
    probe_host: str = ogelkit.option("127.0.0.1", doc="Host the readiness probe connects to.")
    probe_port: int = ogelkit.option(0, doc="Port the readiness probe connects to (0: none).")


class LineConnection(asyncio.Protocol):
    """One client. The protocol-independent steps are ``ogelkit.frontdoor.Login``'s; this
    class owns only the framing, the reply format and the relay."""

    def __init__(self, door: LineFrontDoor):
        self.door = door
        self.ctx = door.context
        self.buf = b""
        self.session: Session | None = None
        self.login_steps: Login | None = None
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport
        self.session = Session("line", peer_address(transport))
        self.login_steps = self.door.login(self.session)
        self.door.clients.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.door.spawn(self.handle(line.decode(errors="replace").split()))

    def reply(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text.encode() + b"\n")

    def refuse(self, rej: Reject) -> None:
        self.reply(encode_reject(rej))

    def close(self, rej: Reject | None = None) -> None:
        if rej is not None:
            self.refuse(rej)
        if self.transport is not None:
            self.transport.close()

    # ClientSet's connection interface
    def is_idle(self) -> bool:
        return not self.busy

    def close_with(self, rej: Reject) -> None:
        self.close(rej)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def handle(self, words: list[str]) -> None:
        s = self.session
        assert s is not None
        if not words:
            return
        if words[0] == "AUTH" and len(words) == 4 and not s.authenticated:
            await self.login(*words[1:])
        elif not s.authenticated:
            self.close(Reject(Reason.AUTH, "authenticate first"))
        elif words[0] == "PING":
            self.reply("PONG")
        elif words[0] == "SLEEP" and len(words) == 2:
            await self.operation(float(words[1]))
        else:
            self.reply("ERR forbidden unknown command")

    async def login(self, slug: str, password: str, database: str) -> None:
        login = self.login_steps
        assert login is not None and self.session is not None
        self.session.user = slug
        try:
            entry = await login.lookup(slug)
            login.check_ban()
            if not await login.check_password(password) or entry is None:
                raise self.door.bad_credentials(login, slug)
            login.route(database, f'database "{database}" does not exist')
            await login.admit(self.close)
        except Reject as rej:
            self.close(rej)
            return
        self.reply("OK")

    async def operation(self, seconds: float) -> None:
        s = self.session
        op = Operation(s, "command", "SLEEP", f"SLEEP {seconds}")
        done = asyncio.get_running_loop().create_future()

        def cancel(rej: Reject) -> None:
            if not done.done():
                done.set_exception(rej)

        op.canceller = cancel
        self.busy = True
        try:
            pending = self.ctx.chain.admit(op)
            if pending is not None:
                await pending
            asyncio.get_running_loop().call_later(seconds, lambda: done.done() or done.set_result(1))
            await done
            self.reply("SLEPT")
            self.door.metrics.ok += 1
        except Reject as rej:
            op.rejection = op.rejection or rej
            self.door.metrics.rejected += 1
            self.refuse(rej)
        finally:
            op.ended = time.monotonic()
            self.ctx.chain.complete(op)
            self.busy = False
            self.door.clients.idle(self)

    def connection_lost(self, exc):
        self.door.clients.discard(self)
        if self.login_steps is not None:
            self.login_steps.end()


def encode_reject(rej: Reject) -> str:
    """The line protocol's error: ``ERR <reason> <message>``."""
    return f"ERR {rej.reason} {rej.message}"


class LineFrontDoor(ogelkit.FrontDoor):
    protocol = "line"
    default_port = 7777

    def new_connection(self) -> LineConnection:
        return LineConnection(self)

    @classmethod
    def sniff(cls, head: bytes) -> bool | None:
        """Every line-protocol client starts with a command word."""
        if len(head) < 4:
            return None if any(w.startswith(head) for w in (b"AUTH", b"PING")) else False
        return head[:4] in (b"AUTH", b"PING")

    def bad_credentials(self, login: Login, user: str) -> Reject:
        return login.bad_credentials(f'password authentication failed for user "{user}"')


class LineBackend(ogelkit.Backend):
    type_name = "line"
    protocol = "line"
    Config = LineOptions

    async def check(self):
        if self.config.probe_port:
            with anyio.fail_after(1):
                stream = await anyio.connect_tcp(self.config.probe_host, self.config.probe_port)
                await stream.aclose()

    async def provision(self, tenant, name, tier):
        return {"note": f"{tenant.slug}/{name}"}

    async def deprovision(self, tenant, db):
        return None

    def connection_string(self, tenant, db, password, host, port):
        return f"line://{tenant.slug}:{password or '<password>'}@{host}:{port}/{db.name}"


@ogelkit.hookimpl
def ogelkit_register_backends(register):
    register.backend(LineBackend)
    register.frontdoor(LineFrontDoor)
