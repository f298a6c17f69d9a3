"""``[gateway] workers = 2`` (issue 15, "every core used"), proven on a real ``ogelkit run``.

One gateway process forks two workers that share the Postgres and HTTP ports through
SO_REUSEPORT; the gatekeeper and ratelimit layers share their state through the ``[state]``
Redis (a key prefix of this run), the control plane is a SQLite file (shared by the
workers through WAL). Which worker holds a client connection is read from the kernel: the
accepted socket of ``/proc/net/tcp`` whose peer is the client's port, and the worker whose
``/proc/<pid>/fd`` holds that socket. Proven:

(a) new connections land on both workers (Postgres and the one port by socket owner, HTTP
    by the gateway id ``/healthz`` answers), each worker's own ``worker_http`` port serves
    its metrics, and one worker leads the lifecycle scheduler;
(b) the free tier's connection cap (5) holds across the workers;
(c) the rate limit (free: 10/s, burst 20) holds across the workers;
(d) a CancelRequest that lands on the other worker cancels the query;
(e) a worker killed with SIGKILL is restarted while the port keeps serving;
(f) SIGTERM to the parent: in-flight queries on both workers finish, every process exits
    0 within the drain;
(g) the config check refuses workers > 1 without [state] or with an in-memory SQLite;
and ``POST /admin/reload`` through one worker reaches both; workers = 1 is one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from ogelkit.config import ConfigErrors, parse_config
from ogelkit.testing import GatewayProcess, test_secret_key
from ogelkit.testing.gateway import metric_value
from ogelkit.testing.services import pg_dsn, redis_url
from ogelkit.testing.shared_limits import check_shared_rate_limit, close_all

pytestmark = pytest.mark.anyio

PLUGINS = "postgres,gatekeeper,ratelimit"
RUN = uuid.uuid4().hex[:6]
ADMIN = "workers-admin-token"
PREFIX = f"o7s-test-workers-{RUN}:"
TENANTS = {
    "cap": "free",
    "rate": "free",
    "spread": "enterprise",
    "cxl": "pro",
    "kill": "enterprise",
    "term": "enterprise",
}


def slug(name: str) -> str:
    return f"wrk{name}-{RUN}"


def password(name: str) -> str:
    return f"pw-{name}-{RUN}"


def config(control_url: str, *, workers: int | str = 2, drain: str = "10s") -> str:
    tenants = "".join(
        f'\n[tenants.{slug(n)}]\ntier = "{tier}"\npassword = "{password(n)}"\n'
        f'[tenants.{slug(n)}.databases.main]\nbackend = "pg"\n'
        for n, tier in TENANTS.items()
    )
    return f"""[listen]
host = "127.0.0.1"
http = 0
postgres = 0
port = 0
worker_http = 0

[gateway]
workers = {json.dumps(workers)}
drain_timeout = "{drain}"
admin_token = "{ADMIN}"

[control]
url = "{control_url}"
secret_key = "{test_secret_key()}"

[state]
url = "{redis_url()}"

[backends.pg]
type = "postgres"
dsn = "{pg_dsn()}"
name_prefix = "o7sw_"

[[layers]]
type = "gatekeeper"
key_prefix = "{PREFIX}"
lease_ttl = "1500ms"

[[layers]]
type = "ratelimit"
key_prefix = "{PREFIX}"
{tenants}"""


class Workers:
    """The running gateway: its parent process, ports and workers."""

    def __init__(self, proc: GatewayProcess):
        self.proc = proc
        self.ports = proc.ports()

    @property
    def pg_port(self) -> int:
        return self.ports["postgres"]

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    def ready_line(self) -> dict[str, Any]:
        for line in reversed(self.proc.log().splitlines()):
            if '"msg": "ready"' in line:
                return json.loads(line)
        raise AssertionError("no ready line")

    def pids(self) -> list[int]:
        """The live worker processes (children of the parent)."""
        assert self.proc.proc is not None
        parent = self.proc.proc.pid
        path = Path(f"/proc/{parent}/task/{parent}/children")
        return [int(p) for p in path.read_text().split()]

    def worker_http(self) -> list[str]:
        """Each worker's own HTTP address, from the latest log line that names it."""
        out: dict[int, str] = {}
        for line in self.proc.log().splitlines():
            if '"worker_http"' not in line or '"logger": "ogelkit.workers"' not in line:
                continue
            rec = json.loads(line)
            if rec["msg"] == "ready":
                out.update({i: a for i, a in enumerate(rec["worker_http"]) if a})
            elif rec["msg"] in ("worker ready", "worker restarted") and rec["worker_http"]:
                out[rec["worker"]] = rec["worker_http"][0]
        return [out[i] for i in sorted(out)]


def start(control_url: str, **kw: Any) -> Workers:
    proc = GatewayProcess(config(control_url, **kw), env={"OGELKIT_LOAD_PLUGINS": PLUGINS})
    proc.start(wait_ready=120)
    return Workers(proc)


@pytest.fixture(scope="module")
def control_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('workers')}/control.db"


@pytest.fixture(scope="module")
def gw(control_url) -> Iterator[Workers]:
    w = start(control_url)
    try:
        yield w
    finally:
        w.proc.kill()
        env = {**os.environ, "OGELKIT_LOAD_PLUGINS": PLUGINS, "OGELKIT_CONFIG": str(w.proc.config_path)}
        deletes = [
            subprocess.Popen(
                [sys.executable, "-m", "ogelkit", "tenants", "delete", slug(name), "--yes"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name in TENANTS
        ]
        for p in deletes:
            p.wait(120)
        client = redis.Redis.from_url(redis_url())
        try:
            keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


# -- which worker holds a connection ----------------------------------------------------


def _server_inodes(server_port: int, client_port: int) -> set[str]:
    """Inodes of the accepted sockets on ``server_port`` whose peer is ``client_port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if (
                    int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                    and inode != "0"
                ):
                    out.add(inode)
    return out


def owner(gw: Workers, client_port: int, server_port: int | None = None) -> int:
    """The pid of the worker that accepted the connection from ``client_port``."""
    deadline = time.monotonic() + 5
    while True:
        inodes = _server_inodes(server_port or gw.pg_port, client_port)
        for pid in gw.pids():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if target.startswith("socket:[") and target[8:-1] in inodes:
                            return pid
        assert time.monotonic() < deadline, f"no worker holds the connection from :{client_port}"
        time.sleep(0.02)


def conn_owner(gw: Workers, conn: asyncpg.Connection) -> int:
    return owner(gw, conn._transport.get_extra_info("sockname")[1])


async def connect(gw: Workers, name: str, port: int | None = None) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1",
        port=port or gw.pg_port,
        user=slug(name),
        password=password(name),
        database="main",
        ssl=False,
        timeout=30,
    )


async def connect_on(gw: Workers, name: str, pid: int, tries: int = 60) -> asyncpg.Connection:
    """A connection of ``name`` that landed on worker ``pid`` (new ones until one does)."""
    for _ in range(tries):
        conn = await connect(gw, name)
        if conn_owner(gw, conn) == pid:
            return conn
        await conn.close()
    raise AssertionError(f"no connection landed on worker {pid} in {tries} tries")


async def refused(gw: Workers, name: str) -> asyncpg.PostgresError:
    try:
        conn = await connect(gw, name)
    except asyncpg.PostgresError as exc:
        return exc
    await conn.close()
    raise AssertionError("connection was admitted")


def live_leases(name: str) -> int:
    client = redis.Redis.from_url(redis_url())
    try:
        now_s, now_us = client.time()
        return client.zcount(f"{PREFIX}conn:{slug(name)}", f"({now_s * 1000 + now_us // 1000}", "+inf")
    finally:
        client.close()


def _unlabelled(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[-1])
    raise AssertionError(f"no {name} in {url}")


def healthz_gateway(port: int) -> str:
    # A new connection each time (urllib does not keep it alive): the kernel picks a worker.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        return json.loads(resp.read())["gateway"]


# -- (a) both workers serve ----------------------------------------------------------------


async def test_connections_land_on_both_workers(gw):
    pids = gw.pids()
    assert len(pids) == 2 and gw.ready_line()["workers"] == pids
    conns = [await connect(gw, "spread") for _ in range(16)]
    try:
        owners = [conn_owner(gw, c) for c in conns]
        assert set(owners) == set(pids), owners  # 2 x 2^-16 odds of a false failure
        for c in conns:
            assert await c.fetchval("SELECT 41 + 1") == 42
        # Each worker's own HTTP port: its metrics count its own connections.
        per_worker = dict(zip(pids, gw.worker_http(), strict=True))
        deadline = time.monotonic() + 5
        while True:  # door metrics are published once a second
            active = {
                pid: metric_value(f"http://{addr}/metrics", "ogelkit_connections_active", protocol="postgres")
                for pid, addr in per_worker.items()
            }
            if active == {pid: owners.count(pid) for pid in pids}:
                break
            assert time.monotonic() < deadline, (active, owners)
            await asyncio.sleep(0.2)
    finally:
        await close_all(conns)
    # Jobs that must run once run on one worker: the lifecycle scheduler holds its lease.
    deadline = time.monotonic() + 10
    while True:
        leaders = [
            _unlabelled(f"http://{addr}/metrics", "ogelkit_lifecycle_leader") for addr in per_worker.values()
        ]
        if sorted(leaders) == [0.0, 1.0]:
            break
        assert time.monotonic() < deadline, leaders
        await asyncio.sleep(0.2)
    # The one port (every protocol on one listener) is shared the same way.
    one = [await connect(gw, "spread", gw.ports["port"]) for _ in range(12)]
    try:
        landed = {owner(gw, c._transport.get_extra_info("sockname")[1], gw.ports["port"]) for c in one}
        assert landed == set(pids), landed
        assert [await c.fetchval("SELECT 5") for c in one] == [5] * 12
    finally:
        await close_all(one)
    gateways = {healthz_gateway(gw.http_port) for _ in range(24)}
    assert gateways == set(gw.ready_line()["gateways"]), gateways
    assert all(f"-{pid}-" in " ".join(gateways) for pid in pids)


# -- (b) connection cap -------------------------------------------------------------------


async def test_connection_cap_holds_across_workers(gw):
    a, b = gw.pids()
    conns = [await connect_on(gw, "cap", a), await connect_on(gw, "cap", b)]
    try:
        conns += [await connect(gw, "cap") for _ in range(3)]
        owners = {conn_owner(gw, c) for c in conns}
        assert owners == {a, b}
        assert live_leases("cap") == 5
        for _ in range(6):  # the 6th is refused, on whichever worker it lands
            err = await refused(gw, "cap")
            assert isinstance(err, asyncpg.TooManyConnectionsError) and err.sqlstate == "53300"
            assert err.detail == "5/5 connections in use on tier free."
        # a slot freed on worker a is usable on worker b
        await conns.pop(0).close()
        conns.append(await connect_on(gw, "cap", b))
        assert await conns[-1].fetchval("SELECT 1") == 1
        assert live_leases("cap") == 5
    finally:
        await close_all(conns)


# -- (c) rate limit -----------------------------------------------------------------------


async def test_rate_limit_holds_across_workers(gw):
    a, b = gw.pids()
    conns = [await connect_on(gw, "rate", a), await connect_on(gw, "rate", b)]
    await check_shared_rate_limit(conns, rate=10, burst=20, duration=3.0,  # free tier
                                  label="2 workers")


# -- (d) cancel through the other worker ----------------------------------------------------


async def test_cancel_landing_on_the_other_worker_cancels(gw):
    a, b = gw.pids()
    conn = await connect_on(gw, "cxl", a)
    try:
        pid, secret = conn.get_server_pid(), conn._protocol.backend_secret
        client = redis.Redis.from_url(redis_url())
        try:
            deadline = time.monotonic() + 5
            while not client.exists(f"ogelkit:pgcancel:{pid}:{secret}"):
                assert time.monotonic() < deadline, "no cancel key in Redis"
                await asyncio.sleep(0.05)
        finally:
            client.close()
        query = asyncio.create_task(conn.execute("SELECT pg_sleep(20)"))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await asyncio.to_thread(_cancel_via, gw, b, pid, secret)
        with pytest.raises(asyncpg.QueryCanceledError):
            await asyncio.wait_for(query, 10)
        assert time.monotonic() - started < 5
        assert await conn.fetchval("SELECT 7") == 7
    finally:
        await close_all([conn])


def _cancel_via(gw: Workers, worker: int, pid: int, secret: int) -> None:
    """A CancelRequest on a connection that worker ``worker`` accepted."""
    for _ in range(60):
        sock = socket.create_connection(("127.0.0.1", gw.pg_port), timeout=10)
        if owner(gw, sock.getsockname()[1]) != worker:
            sock.close()
            continue
        with sock:
            sock.sendall(struct.pack("!iiII", 16, 80877102, pid & 0xFFFFFFFF, secret & 0xFFFFFFFF))
            sock.settimeout(10)
            with contextlib.suppress(OSError):
                sock.recv(1)
        return
    raise AssertionError(f"no connection landed on worker {worker}")


# -- (e) a killed worker is restarted --------------------------------------------------------


async def test_killed_worker_is_restarted_and_the_port_keeps_serving(gw):
    a, b = gw.pids()
    survivor = await connect_on(gw, "kill", b)
    try:
        os.kill(a, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not _gone(a):  # its listener is closed (a connection queued on it when
            assert time.monotonic() < deadline  # it died is reset: the kernel's doing)
            await asyncio.sleep(0.01)
        # at once, before the restart: every new connection is served (by worker b)
        for _ in range(8):
            conn = await connect(gw, "kill")
            assert await conn.fetchval("SELECT 1") == 1
            await conn.close()
        deadline = time.monotonic() + 60
        while True:
            pids = gw.pids()
            if len(pids) == 2 and a not in pids and '"msg": "worker restarted"' in gw.proc.log():
                break
            assert time.monotonic() < deadline, gw.proc.log()[-3000:]
            await asyncio.sleep(0.1)
        log = gw.proc.log()
        assert '"msg": "worker exited unexpectedly; restarting it"' in log
        assert '"how": "killed by SIGKILL"' in log
        (new,) = set(pids) - {b}
        conn = await connect_on(gw, "kill", new)  # the new worker serves the shared port
        assert await conn.fetchval("SELECT 2") == 2
        await conn.close()
        assert await survivor.fetchval("SELECT 3") == 3  # the other worker was not touched
    finally:
        await close_all([survivor])


# -- a reload through one worker reaches both ------------------------------------------------


async def test_admin_reload_through_one_worker_reaches_every_worker(gw):
    a, b = gw.pids()
    gw.proc.config_path.write_text(gw.proc.config_path.read_text() + "\n[tiers.free]\nconnections = 2\n")
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(
            f"http://127.0.0.1:{gw.http_port}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}
        )
    assert resp.status_code == 200, resp.text
    assert "tiers" in resp.json()["changed"]
    assert resp.json()["needs_restart"] == []  # the ports a worker bound are not a change
    deadline = time.monotonic() + 10
    while True:  # the parent forwarded SIGHUP: every worker reloaded
        reloaded = {
            json.loads(ln).get("worker")
            for ln in gw.proc.log().splitlines()
            if '"msg": "config reloaded"' in ln
        }
        if {0, 1} <= reloaded:
            break
        assert time.monotonic() < deadline, reloaded
        await asyncio.sleep(0.1)
    conns = [await connect_on(gw, "cap", a), await connect_on(gw, "cap", b)]
    try:
        for _ in range(10):  # the new cap (2) holds on whichever worker a client lands
            try:
                extra = await connect(gw, "cap")
            except asyncpg.TooManyConnectionsError as exc:
                assert exc.detail == "2/2 connections in use on tier free.", exc.detail
                continue
            holder = conn_owner(gw, extra)
            await extra.close()
            raise AssertionError(f"worker {holder} admitted a 3rd connection: old tier kept")
    finally:
        await close_all(conns)


# -- (f) SIGTERM to the parent ---------------------------------------------------------------


async def test_sigterm_drains_every_worker_and_exits_zero(gw, control_url):
    # A gateway of its own (the module's keeps serving the other tests).
    g = start(control_url, drain="5s")
    try:
        a, b = g.pids()
        conns = [await connect_on(g, "term", a), await connect_on(g, "term", b)]
        queries = [asyncio.create_task(c.fetchval("SELECT pg_sleep(1.5)::text || 'done'")) for c in conns]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        g.proc.signal(signal.SIGTERM)
        results = await asyncio.gather(*queries)
        assert results == ["done", "done"]  # in-flight work on both workers finished
        code = await asyncio.to_thread(g.proc.wait, 30)
        took = time.monotonic() - started
        assert code == 0, g.proc.log()[-3000:]
        assert took < 5 + 3, took
        assert all(_gone(pid) for pid in (a, b))
        log = g.proc.log()
        assert log.count('"msg": "worker stopped"') == 2 and '"exitcode": 0' in log
        await close_all(conns)
    finally:
        g.proc.kill()


def _gone(pid: int) -> bool:
    """Exited and reaped. (A zombie's listener may still be open: the state of the main
    thread says Z while the others still exit, and the files close with the last one.)"""
    return not Path(f"/proc/{pid}").exists()


async def test_one_worker_is_one_process(control_url):
    g = start(control_url, workers=1)
    try:
        assert g.pids() == []  # no supervisor, no fork: the gateway is the process
        ready = g.ready_line()
        assert "workers" not in ready and ready["logger"] == "ogelkit.runtime"
        conn = await connect(g, "spread")
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        g.proc.kill()


# -- (g) config errors -------------------------------------------------------------------------

BASE = f"""[control]
url = "sqlite:///:memory:"
secret_key = "{test_secret_key()}"
"""


def test_workers_need_state_and_a_shared_control_plane():
    with pytest.raises(ConfigErrors) as info:
        parse_config(
            BASE + '[gateway]\nworkers = 2\n[tenants.acme]\ntier = "gold"\n', None, file="workers.toml"
        )
    messages = info.value.messages
    assert len(messages) == 3, messages  # every problem at once
    state, memory = [m for m in messages if m.startswith("workers.toml: gateway.workers:")]
    assert (
        "workers > 1 needs [state] so that rate limits, connection limits and cancel keys are shared" in state
    )
    assert "expected a [state] table" in state and "found the integer 2 and no [state]" in state
    assert (
        "in-memory SQLite" in memory and 'found the integer 2 and the string "sqlite:///:memory:"' in memory
    )
    assert any(m.startswith("workers.toml: tenants.acme.tier:") for m in messages)


def test_workers_config_accepted_and_refused_values(tmp_path):
    state = f'[state]\nurl = "{redis_url()}"\n'
    shared = BASE.replace("sqlite:///:memory:", f"sqlite:///{tmp_path}/c.db")
    assert parse_config(shared + state + "[gateway]\nworkers = 3\n", None).gateway.processes == 3
    auto = parse_config(shared + state + '[gateway]\nworkers = "auto"\n', None).gateway
    assert auto.processes == len(os.sched_getaffinity(0))
    # workers = 1 (the default): nothing shared is needed
    assert parse_config(BASE, None).gateway.processes == 1
    for bad in ("0", '"many"'):
        with pytest.raises(ConfigErrors) as info:
            parse_config(shared + state + f"[gateway]\nworkers = {bad}\n", None)
        assert "gateway.workers" in str(info.value), info.value


def test_ogelkit_check_reports_the_workers_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        BASE.replace("sqlite:///:memory:", f"sqlite:///{tmp_path}/c.db") + "[gateway]\nworkers = 4\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "ogelkit", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OGELKIT_LOAD_PLUGINS": "postgres"},
    )
    assert out.returncode == 2, out
    assert f"{path}: gateway.workers: workers > 1 needs [state]" in out.stdout + out.stderr
