"""A tiny line protocol front door used to test the core runtime without a database plugin.

Protocol (one command per line):
    AUTH <tenant> <password> <database>   -> "OK" or "ERR <reason> <message>"
    PING                                  -> "PONG"
    SLEEP <seconds>                       -> "SLEPT" after the delay (an operation)
It follows docs/dev/frontdoors.md step by step, so it also shows the core path works.
The backend's readiness check probes a real TCP server (``probe_host``/``probe_port``).
"""

from __future__ import annotations

import asyncio
import time

import anyio
import attrs

import ogelkit
from ogelkit.model import Operation, Reason, Reject, Session
from ogelkit.runtime import bind_host


@attrs.define(kw_only=True)
class LineOptions:
    probe_host: str = ogelkit.option("127.0.0.1", doc="Host the readiness probe connects to.")
    probe_port: int = ogelkit.option(0, doc="Port the readiness probe connects to (0: none).")


class LineConnection(asyncio.Protocol):
    def __init__(self, door: LineFrontDoor):
        self.door = door
        self.ctx = door.context
        self.buf = b""
        self.session: Session | None = None
        self.busy = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.session = Session("line", f"{peer[0]}:{peer[1]}")
        self.door.clients.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            asyncio.get_running_loop().create_task(self.handle(line.decode().split()))

    def reply(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text.encode() + b"\n")

    def refuse(self, rej: Reject) -> None:
        self.reply(f"ERR {rej.reason} {rej.message}")

    def close(self, rej: Reject | None = None) -> None:
        if rej is not None:
            self.refuse(rej)
        if self.transport is not None:
            self.transport.close()

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
        s, chain = self.session, self.ctx.chain
        s.user = slug
        entry = await self.ctx.directory.lookup(slug)
        if entry is not None:
            s.tenant = entry.tenant
        try:
            chain.auth(s)
            if entry is None or not await self.ctx.directory.check_password(entry, password):
                raise Reject(Reason.AUTH, f'password authentication failed for user "{slug}"')
            db = entry.databases.get(database)
            if db is None:
                raise Reject(Reason.UNKNOWN, f'database "{database}" does not exist')
            if entry.tenant.suspended:
                raise Reject(Reason.SUSPENDED, "tenant is suspended")
            s.tier, s.database, s.db = entry.tier, database, db
            s.backend = self.ctx.backends[db.backend]
            s.authenticated = True
            await chain.connect(s)
        except Reject as rej:
            s.rejection = s.rejection or rej
            self.ctx.metrics.connections.labels("line", "rejected").inc()
            self.close(rej)
            return
        self.ctx.sessions.add(s)
        s.closer = self.close
        self.ctx.metrics.connections.labels("line", "accepted").inc()
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
        except Reject as rej:
            op.rejection = op.rejection or rej
            self.refuse(rej)
        finally:
            op.ended = time.monotonic()
            self.ctx.chain.complete(op)
            self.busy = False
            if self.ctx.draining:
                self.close(Reject(Reason.SHUTDOWN, "the gateway is shutting down"))

    def connection_lost(self, exc):
        s = self.session
        self.door.clients.discard(self)
        if s is not None:
            s.closed_at = time.monotonic()
            self.ctx.sessions.discard(s)
            self.ctx.chain.disconnect(s)
        self.door.changed.set()


class LineFrontDoor(ogelkit.FrontDoor):
    protocol = "line"
    default_port = 7777

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clients: set[LineConnection] = set()
        self.server: asyncio.base_events.Server | None = None
        self.changed = asyncio.Event()

    async def start(self):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: LineConnection(self),
                                               host=bind_host(self.host), port=self.port)
        return [s.getsockname()[:2] for s in self.server.sockets]

    async def stop_accepting(self):
        if self.server is not None:
            self.server.close()

    async def drain(self):
        while self.clients:
            for c in list(self.clients):
                if not c.busy:
                    c.close(Reject(Reason.SHUTDOWN, "the gateway is shutting down"))
            self.changed.clear()
            await self.changed.wait()

    async def close(self, reason):
        for c in list(self.clients):
            c.close(reason)


class LineBackend(ogelkit.Backend):
    type_name = "line"
    protocol = "line"
    frontdoor = LineFrontDoor
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
