"""Issue 16, items 5 and 8: the PostgreSQL control plane down and back.

The gateway reaches its control plane through a TCP proxy the test controls. While the
proxy is down (connections reset, new ones refused) or black-holed (nothing forwarded):
logins of tenants the gateway has not cached get a clean refusal (08006, "cannot reach its
control plane"), tenants it has cached keep being served, /readyz says 503 promptly. When
the proxy is back the gateway recovers by itself: no restart.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from ogelkit_postgres.testing import Tenant, pg_gateway, unique

from ogelkit.testing.services import scratch_pg_database

CACHE = 'cache_ttl = "300ms"\n'


class TcpProxy:
    """A byte-for-byte TCP proxy on a fixed local port that can be taken down (resets
    every connection, refuses new ones), black-holed (accepts, forwards nothing) and
    brought back on the same port."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.mode = "up"
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listen()

    def _listen(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            with self._lock:
                self._socks.add(client)
                mode = self.mode
            if mode == "down" or ls is not self._listener:
                self._kill(client)
                return
            if mode == "blackhole":
                continue  # held open, never answered
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._kill(client)
                continue
            with self._lock:
                self._socks.add(server)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.mode == "blackhole":
                    time.sleep(0.05)  # swallow time, forward nothing
                    if src.fileno() < 0:
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._kill(src)
            self._kill(dst)

    def _kill(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        except OSError:
            pass

    def down(self) -> None:
        """The server is gone: every connection reset, new ones refused."""
        self.mode = "down"
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            self._kill(s)

    def blackhole(self) -> None:
        """The network is gone: nothing is forwarded, nothing is refused."""
        self.mode = "blackhole"

    def up(self) -> None:
        if self.mode == "blackhole":
            self.down()
        self.mode = "up"
        self._listen()

    def close(self) -> None:
        self.down()


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def proxied_control():
    with scratch_pg_database("ogelkit_cpo") as url:
        parts = urlsplit(url)
        proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
        try:
            yield proxy, via(url, proxy.port)
        finally:
            proxy.close()


async def login(gw, tenant: Tenant) -> int:
    conn = await asyncpg.connect(**gw.asyncpg_kw(tenant), ssl=False, timeout=60)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def refused(gw, tenant: Tenant) -> tuple[asyncpg.PostgresError, float]:
    started = time.monotonic()
    with pytest.raises(asyncpg.PostgresError) as info:
        asyncio.run(login(gw, tenant))
    return info.value, time.monotonic() - started


def readyz(gw) -> tuple[int, dict, float]:
    started = time.monotonic()
    r = httpx.get(gw.running.url("/readyz"), timeout=30)
    return r.status_code, r.json(), time.monotonic() - started


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached in {timeout}s (last: {last!r})")


@pytest.mark.parametrize("outage", ["down", "blackhole"])
def test_control_plane_down_and_back(proxied_control, outage):
    proxy, control_url = proxied_control
    cached, cold = Tenant(unique("cpoc")), Tenant(unique("cpon"))
    with pg_gateway([cached, cold], extra=CACHE, control_url=control_url) as gw:
        try:
            run_outage(gw, proxy, outage, cached, cold)
        finally:
            if proxy.mode != "up":
                proxy.up()  # so the gateway's exit can drop the tenants' databases


def run_outage(gw, proxy: TcpProxy, outage: str, cached: Tenant, cold: Tenant) -> None:
    # Seeding at startup counts as a change; let the poller see it before caching.
    time.sleep(1.0)
    assert asyncio.run(login(gw, cached)) == 1  # now in the gateway's cache
    time.sleep(0.5)  # ...and past its TTL: the gateway will try the store first

    getattr(proxy, outage)()

    # A tenant the gateway never saw: a clean, prompt refusal.
    err, took = refused(gw, cold)
    assert err.sqlstate == "08006", err
    assert "control plane" in str(err)
    assert took < 20, f"refusal took {took:.1f}s"
    print(f"{outage}: uncached tenant refused with 08006 in {took:.2f}s")
    # A cached tenant keeps being served (its data plane is up), promptly.
    for _ in range(3):
        started = time.monotonic()
        assert asyncio.run(login(gw, cached)) == 1
        served = time.monotonic() - started
        print(f"{outage}: cached tenant served in {served:.2f}s")
        assert served < 20
    # Readiness tells, within its probe timeout.
    status, body, took = readyz(gw)
    assert status == 503 and body["checks"]["control"] != "ok", body
    assert took < 10
    print(f"{outage}: /readyz 503 in {took:.2f}s")

    proxy.up()
    back = time.monotonic()

    # Back without a restart: the cold tenant logs in, /readyz is 200, changes apply.
    wait_for(lambda: asyncio.run(login(gw, cold)) == 1, 30, "cold tenant login")
    wait_for(lambda: readyz(gw)[0] == 200, 30, "/readyz 200")
    print(f"{outage}: recovered (cold login and /readyz 200) {time.monotonic() - back:.2f}s "
          "after the server came back")
    store = gw.context.store
    assert gw.call(store.update_tenant(cached.slug, tier="free"), timeout=15).tier == "free"

    async def tier_of_new_session() -> str:
        conn = await asyncpg.connect(**gw.asyncpg_kw(cached), ssl=False, timeout=60)
        try:
            await conn.fetchval("SELECT 1")
            return {s.tier.name for s in gw.context.directory.sessions.of(cached.slug)}
        finally:
            await conn.close()
    wait_for(lambda: asyncio.run(tier_of_new_session()) == {"free"}, 15,
             "tier change seen by a new session")
