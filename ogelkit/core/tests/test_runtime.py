"""The runtime end to end: readiness, ops endpoints, admin API, drain, signals, bind errors."""

import json
import signal
import socket
import time

import anyio
import httpx
import pytest

from ogelkit.runtime import StartupError
from ogelkit.testing import GatewayProcess, isolated_plugins, minimal_config, running_gateway

pytestmark = pytest.mark.anyio


def line_config(probe_port=0, extra="", control="sqlite:///:memory:"):
    return minimal_config(control_url=control).replace("http = 0", "http = 0\nports = { line = 0 }") + f'''
[backends.lines]
type = "line"
probe_port = {probe_port}

[tenants.acme]
tier = "free"
password = "acme-pass"
[tenants.acme.databases.main]
backend = "lines"
{extra}'''


async def _line(port, *lines, read=True):
    stream = await anyio.connect_tcp("127.0.0.1", port)
    out = []
    for line in lines:
        await stream.send(line.encode() + b"\n")
        if read:
            out.append((await stream.receive()).decode().strip())
    return stream, out


async def test_seeded_tenant_can_log_in_and_errors_are_precise(linegate):
    plugins = isolated_plugins(("line", linegate))
    async with running_gateway(line_config(), plugins=plugins) as gw:
        port = gw.port("line")
        stream, out = await _line(port, "AUTH acme acme-pass main", "PING")
        assert out == ["OK", "PONG"]
        assert gw.context.sessions.count("acme") == 1
        await stream.aclose()
        _, out = await _line(port, "AUTH acme wrong main")
        assert out == ['ERR auth password authentication failed for user "acme"']
        _, out = await _line(port, "AUTH ghost x main")
        assert out == ['ERR auth password authentication failed for user "ghost"']
        _, out = await _line(port, "AUTH acme acme-pass nope")
        assert out == ['ERR unknown database "nope" does not exist']


async def test_health_metrics_and_readiness_follow_the_backend(linegate, private_redis):
    plugins = isolated_plugins(("line", linegate))
    async with running_gateway(line_config(private_redis.port), plugins=plugins) as gw, \
            httpx.AsyncClient(base_url=gw.url()) as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"control": "ok", "backend:lines": "ok"}
        private_redis.stop()
        down = await http.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["backend:lines"] != "ok"
        private_redis.start()
        assert (await http.get("/readyz")).status_code == 200
        metrics = (await http.get("/metrics")).text
        assert "ogelkit_ready 1.0" in metrics
        assert "tenant" not in metrics.lower().replace("tenants", "")


async def test_admin_api_needs_the_token_and_changes_reach_live_sessions(linegate):
    plugins = isolated_plugins(("line", linegate))
    async with running_gateway(line_config(), plugins=plugins) as gw, \
            httpx.AsyncClient(base_url=gw.url()) as http:
        assert (await http.get("/admin/tenants")).status_code == 401
        auth = {"authorization": "Bearer test-admin-token"}
        assert (await http.get("/admin/tenants", headers={"authorization": "Bearer nope"})
                ).status_code == 401
        tenants = (await http.get("/admin/tenants", headers=auth)).json()
        assert [t["slug"] for t in tenants["items"]] == ["acme"]
        assert tenants["next_cursor"] is None
        stream, out = await _line(gw.port("line"), "AUTH acme acme-pass main")
        assert out == ["OK"]
        (session,) = gw.context.sessions.of("acme")
        assert session.tier.name == "free"
        r = await http.patch("/admin/tenants/acme", headers=auth, json={"tier": "pro"})
        assert r.status_code == 200 and r.json()["tier"] == "pro"
        assert session.tier.name == "pro"  # live session sees the new tier at once
        assert (await http.patch("/admin/tenants/acme", headers=auth, json={"tier": "gold"})
                ).status_code == 400
        created = await http.post("/admin/tenants", headers=auth, json={"slug": "beta"})
        assert created.status_code == 201
        assert (await http.post("/admin/tenants", headers=auth, json={"slug": "beta"})
                ).status_code == 409
        info = (await http.get("/admin/tenants/acme", headers=auth)).json()
        assert info["sessions"] == 1 and info["databases"][0]["name"] == "main"
        r = await http.patch("/admin/tenants/acme", headers=auth, json={"status": "suspended"})
        assert r.json()["status"] == "suspended"
        # The suspended tenant's session is closed with a reason in its protocol.
        assert (await stream.receive()).decode().startswith("ERR suspended")
        usage = (await http.get("/admin/tenants/acme/usage?month=2026-11", headers=auth)).json()
        assert usage["invoice"]["tier"] == "pro" and usage["databases"] == []
        assert (await http.get("/admin/nothing", headers=auth)).status_code == 404
        assert (await http.post("/admin/tenants", headers=auth, content=b"{bad")).status_code == 400


async def test_bind_failure_is_reported_before_ready(linegate):
    plugins = isolated_plugins(("line", linegate))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = line_config().replace("http = 0", f"http = {port}")
        with pytest.raises(BaseException) as info:
            async with running_gateway(text, plugins=plugins):
                pytest.fail("the gateway must not become ready")
        leaves = _leaves(info.value)
        assert any(isinstance(e, StartupError) and f":{port}" in str(e) for e in leaves)


def _leaves(exc):
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _gateway_process(site, tmp_path, extra="", drain="5s"):
    text = line_config(control=f"sqlite:///{tmp_path}/cp.db", extra=extra).replace(
        'drain_timeout = "5s"', f'drain_timeout = "{drain}"')
    return GatewayProcess(text, env={"PYTHONPATH": str(site)}, workdir=str(tmp_path))


def _line_port(proc):
    for line in proc.log().splitlines():
        if '"msg": "ready"' in line:
            return int(json.loads(line)["addresses"]["line"][0].rsplit(":", 1)[1])
    raise AssertionError(proc.log())


def test_sigterm_drains_in_flight_work_then_exits(linegate_site, tmp_path):
    proc = _gateway_process(linegate_site, tmp_path).start()
    try:
        port = _line_port(proc)
        busy = socket.create_connection(("127.0.0.1", port))
        idle = socket.create_connection(("127.0.0.1", port))
        for s in (busy, idle):
            s.sendall(b"AUTH acme acme-pass main\n")
            assert s.recv(100) == b"OK\n"
        busy.sendall(b"SLEEP 1.5\n")
        time.sleep(0.2)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        # The idle client is told at once; the busy one gets its answer first.
        assert idle.recv(100).startswith(b"ERR shutdown")
        busy.settimeout(5)
        data = b""
        while b"ERR" not in data:
            chunk = busy.recv(100)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"SLEPT\n") and b"ERR shutdown" in data
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
        log = proc.log()
        assert '"msg": "draining"' in log and '"msg": "stopped"' in log
    finally:
        proc.kill()


def test_drain_deadline_then_second_signal(linegate_site, tmp_path):
    proc = _gateway_process(linegate_site, tmp_path, drain="30s").start()
    try:
        port = _line_port(proc)
        busy = socket.create_connection(("127.0.0.1", port))
        busy.sendall(b"AUTH acme acme-pass main\n")
        assert busy.recv(100) == b"OK\n"
        busy.sendall(b"SLEEP 60\n")
        time.sleep(0.2)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.proc.poll() is None  # still draining the 60 s operation
        proc.signal(signal.SIGINT)  # the second signal skips the wait
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
        busy.settimeout(5)
        assert b"ERR shutdown" in busy.recv(200)
    finally:
        proc.kill()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_env_sets_the_http_port(linegate_site, tmp_path):
    port = _free_port()
    proc = _gateway_process(linegate_site, tmp_path)
    proc.env["PORT"] = str(port)
    proc.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        proc.signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_startup_error_exits_1_without_ready(linegate_site, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = _gateway_process(linegate_site, tmp_path)
        proc.env["PORT"] = str(taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="exited with 1"):
            proc.start()
    assert "startup failed: cannot listen for HTTP" in proc.log()
    assert '"msg": "ready"' not in proc.log()
