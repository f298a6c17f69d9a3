"""Helpers for the convex plugin's tests: stand-in deployments as subprocesses, a gateway
in front of them, and calls bounded by a timeout (the Convex client retries network errors
forever, so a broken path would otherwise hang the test)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ogelkit.control.store import open_store
from ogelkit.testing import GatewayProcess, minimal_config, test_secret_key

HERE = Path(__file__).parent
STANDIN = HERE / "standin.py"


class StandIn:
    """A stand-in deployment (tests/standin.py) in its own process."""

    def __init__(self, name: str, admin_key: str, ping: float = 10.0, user_secret: str = ""):
        self.name = name
        self.admin_key = admin_key
        self.ping = ping
        self.user_secret = user_secret
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def args(self) -> list[str]:
        return ["--name", self.name, "--admin-key", self.admin_key, "--ping", str(self.ping),
                *(["--user-secret", self.user_secret] if self.user_secret else [])]

    def start(self, port: int = 0) -> StandIn:
        self.proc = subprocess.Popen(
            [sys.executable, str(STANDIN), "--port", str(port or self.port), *self.args()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"stand-in {self.name} did not start: {line!r}")
        self.port = int(line.split()[1])
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ManagementStandIn(StandIn):
    """The Management API stand-in (tests/standin.py --management): deployments it creates
    run in its process."""

    def __init__(self, team_id: int = 7, token: str = "team-token-of-7"):
        super().__init__("management", "")
        self.team_id = team_id
        self.token = token

    def args(self) -> list[str]:
        return ["--management", "--team-id", str(self.team_id), "--team-token", self.token]


@contextmanager
def standins(*names: str) -> Iterator[list[StandIn]]:
    started = [StandIn(n, f"admin-key-of-{n}").start() for n in names]
    try:
        yield started
    finally:
        for s in started:
            s.kill()


def convex_config(deployments: list[StandIn], *, tiers: str = "", layers: str = "",
                  tenants: str = "", backend_extra: str = "") -> str:
    """Backends ``cvx_<name>`` (one per stand-in), tenant ``t_<name>`` with database ``main``
    on each, plus ``tenants``/``tiers``/``layers`` tables."""
    out = []
    for d in deployments:
        out.append(f'[backends.cvx_{d.name}]\ntype = "convex"\ndomain = "convex.localhost"\n'
                   f'deployment_url = "{d.url}"\nadmin_key = "{d.admin_key}"\n'
                   f'usage_interval = "1s"\n{backend_extra}\n')
    for d in deployments:
        out.append(f'[tenants.{d.name}]\ntier = "free"\n'
                   f'[tenants.{d.name}.databases.main]\nbackend = "cvx_{d.name}"\n')
    return minimal_config("\n".join([tiers, layers, *out, tenants]))


LAYERS = '''
[[layers]]
type = "gatekeeper"

[[layers]]
type = "ratelimit"

[[layers]]
type = "cost"

[[layers]]
type = "timeout"

[[layers]]
type = "usage"
flush_interval = "1s"
'''


class Gateway:
    """``ogelkit run`` in its own process. (The ``convex`` client holds the GIL while it
    waits for an answer, so a gateway in a thread of the test process would starve.)"""

    def __init__(self, proc: GatewayProcess, port: int, control_url: str):
        self.proc = proc
        self.port = port
        self.control_url = control_url

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def store_call(self, fn: Callable[[Any], Any]) -> Any:
        async def go() -> Any:
            store = open_store(self.control_url, test_secret_key())
            await store.open()
            try:
                return await fn(store)
            finally:
                await store.close()
        return asyncio.run(go())

    def token(self, tenant: str, db: str = "main") -> str:
        async def get(store: Any) -> str:
            record = await store.get_database(tenant, db)
            return record.upstream["token"]
        return self.store_call(get)


@contextmanager
def convex_gateway(text: str) -> Iterator[Gateway]:
    workdir = tempfile.mkdtemp(prefix="ogelkit-convex-")
    control = f"sqlite:///{workdir}/control.db"
    port = free_port()
    text = text.replace("sqlite:///:memory:", control).replace("http = 0", f"http = {port}")
    proc = GatewayProcess(text, workdir=workdir)
    proc.start(wait_ready=60)
    try:
        yield Gateway(proc, port, control)
    finally:
        proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="convex-call")


def bounded(fn: Callable[..., Any], *args: Any, timeout: float = 20.0) -> Any:
    """``fn(*args)`` in a worker thread; TimeoutError if it does not return in time (the
    thread is left behind: the client may retry forever)."""
    return _pool.submit(fn, *args).result(timeout)


def client_process(url: str, token: str | None, code: str, timeout: float) -> str | None:
    """Run ``code`` with a ``convex.ConvexClient`` called ``client`` (auth set to ``token``)
    in a child process; its stdout, or None when it did not finish within ``timeout``. For
    calls that may never return: the client retries forever and holds the GIL meanwhile."""
    prelude = (f"import convex\nclient = convex.ConvexClient({url!r})\n"
               + (f"client.set_auth({token!r})\n" if token else ""))
    proc = subprocess.Popen([sys.executable, "-c", prelude + code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return out
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
