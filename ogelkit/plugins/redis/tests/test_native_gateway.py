"""One real workload through a gateway process (``ogelkit run``, every O7s layer on) once on
the native framing path and once with ``OGELKIT_NATIVE=0``: the clients get the same bytes,
and the layers the same decisions and usage totals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis
from ogelkit_redis import wire
from redis_support import REDIS_URL, Tenant, cleanup, free_port, new_tenants

from ogelkit.testing import GatewayProcess, test_secret_key

LAYERS = ["gatekeeper", "ratelimit", "cost", "session", "timeout", "usage", "intelligence"]
#: The usage fields that depend only on what was sent (not on timing). ``bytes_out`` is
#: compared apart: a pipelined batch's reply bytes are metered by how the replies arrive in
#: upstream reads (the same path run twice gave 313,358 and 311,909 for this workload, the
#: same without its 200-command pipeline: 304,493 every time).
COUNTS = (
    "operations",
    "rows",
    "bytes_in",
    "bytes_out",
    "rejected",
    "rejected_rate",
    "rejected_cost",
    "rejected_quota",
    "rejected_connections",
    "connections",
    "errors",
)

pytestmark = pytest.mark.skipif(not wire.NATIVE_FUNCS, reason="ogelkit-native is not built")


def _config(workdir: Path, port: int, tenant: Tenant) -> str:
    layers = "".join(f'\n[[layers]]\ntype = "{name}"\n' for name in LAYERS)
    return (
        f'[listen]\nhost = "127.0.0.1"\nhttp = {free_port()}\nredis = {port}\n\n'
        f'[gateway]\ndrain_timeout = "2s"\nlog_level = "info"\n\n'
        f'[control]\nurl = "sqlite:///{workdir}/control.db"\n'
        f'secret_key = "{test_secret_key()}"\n\n'
        f'[backends.r]\ntype = "redis"\nurl = "{REDIS_URL}"\nquota_enforce = false\n\n'
        f'[tenants.{tenant.slug}]\ntier = "enterprise"\npassword = "{tenant.password}"\n'
        f'databases.main.backend = "r"\n{layers}'
    )


def _raw(port: int, tenant: Tenant) -> list[bytes]:
    """Inline requests, a request sent a byte at a time, then a protocol error."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:

        def ask(data: bytes, chunk: int = 0, want: int = 1) -> None:
            if chunk:
                for i in range(0, len(data), chunk):
                    s.sendall(data[i : i + chunk])
                    time.sleep(0.001)
            else:
                s.sendall(data)
            got = b""
            deadline = time.monotonic() + 10
            while got.count(b"\r\n") < want and time.monotonic() < deadline:
                part = s.recv(65536)
                if not part:
                    break
                got += part
            out.append(got)

        ask(f"AUTH {tenant.slug} {tenant.password}\r\n".encode())
        ask(b'PING\r\nSET ik "a b\\x41"\r\nGET ik\r\n', want=4)
        ask(wire.encode_command([b"SET", b"bytewise", b"v" * 50]), chunk=1)
        ask(wire.encode_command([b"GET", b"bytewise"]), chunk=3, want=2)
        ask(b"*1\r\n+PING\r\n")
    return out


def _workload(port: int, tenant: Tenant) -> list:
    seen: list = []
    r = redis.Redis(host="127.0.0.1", port=port, username=tenant.slug, password=tenant.password)
    r3 = redis.Redis(host="127.0.0.1", port=port, username=tenant.slug, password=tenant.password, protocol=3)
    try:
        seen.append(r.set("a", "1"))
        seen.append(r.mset({f"m{i}": str(i) * i for i in range(40)}))
        seen.append(r.mget([f"m{i}" for i in range(40)]))
        seen.append(r.rpush("l", *[f"e{i}" for i in range(200)]))
        seen.append(r.lrange("l", 0, -1))
        seen.append(r.hset("h", mapping={f"f{i}": i for i in range(30)}))
        seen.append(sorted(r3.hgetall("h").items()))
        seen.append(r.set("big", b"x" * 300_000))
        seen.append(len(r.get("big") or b""))
        with pytest.raises(redis.ResponseError) as wrong:
            r.incr("l")
        seen.append(str(wrong.value))
        pipe = r.pipeline(transaction=False)
        for i in range(100):
            pipe.incr("n")
            pipe.get(f"m{i % 40}")
        seen.append(pipe.execute())
        tx = r.pipeline(transaction=True)
        tx.set("t", "1").incr("t").lrange("l", 0, 9)
        seen.append(tx.execute())
        seen.extend(_raw(port, tenant))
    finally:
        r.close()
        r3.close()
    return seen


def _run(tenant: Tenant, native: str) -> tuple[list, dict, str]:
    workdir = Path(tempfile.mkdtemp(prefix="ogelkit-native-gw-"))
    port = free_port()
    config = workdir / "config.toml"
    config.write_text(_config(workdir, port, tenant))
    gw = GatewayProcess(config.read_text(), env={"OGELKIT_NATIVE": native}, workdir=str(workdir))
    try:
        with gw:
            seen = _workload(port, tenant)
            gw.signal()
            assert gw.wait(30) == 0, gw.log()
        log = gw.log()
    finally:
        cleanup([tenant])
    month = time.strftime("%Y-%m", time.gmtime())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ogelkit",
            "--config",
            str(config),
            "usage",
            "show",
            tenant.slug,
            "--month",
            month,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    usage = {d["database"]: {k: d.get(k) for k in COUNTS} for d in json.loads(out.stdout)["databases"]}
    return seen, usage, log


def test_a_workload_gives_the_same_replies_decisions_and_usage_on_both_paths():
    tenant = new_tenants(1)[0]
    seen_native, usage_native, log_native = _run(tenant, "1")
    seen_python, usage_python, log_python = _run(tenant, "0")
    assert "RESP framing: native (ogelkit_native)" in log_native
    assert "RESP framing: pure Python (OGELKIT_NATIVE=0)" in log_python
    assert seen_native == seen_python
    assert seen_native[-1].startswith(b"-ERR Protocol error: expected '$', got '+'")
    out_native = usage_native["main"].pop("bytes_out")
    out_python = usage_python["main"].pop("bytes_out")
    assert usage_native == usage_python
    assert abs(out_native - out_python) < 0.02 * out_python, (out_native, out_python)
    main = usage_native["main"]
    assert main["operations"] and main["operations"] > 200, usage_native
    assert main["bytes_in"] > 300_000 and out_native > 300_000, usage_native
    assert main["errors"] == 1 and main["rejected"] == 0 and main["connections"] == 3, usage_native
