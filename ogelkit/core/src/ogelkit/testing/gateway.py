"""Run a gateway for tests: in-process (async), in a thread (for sync clients), or as a real
``ogelkit run`` subprocess (signals, crashes)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import anyio

from ogelkit.config import Config, parse_config
from ogelkit.plugins import Plugins, load_plugins
from ogelkit.runtime import Gateway

Addresses = dict[str, list[tuple[str, int]]]


def test_secret_key() -> str:
    """A fixed Fernet key for tests (never use it for real data)."""
    return "dGVzdC1rZXktZm9yLW9nZWxraXQtdGVzdHMtb25seSE="


test_secret_key.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


def _as_config(config: Config | str, plugins: Plugins | None,
               env: Mapping[str, str] | None) -> tuple[Config, Plugins]:
    plugins = plugins or load_plugins()
    if isinstance(config, str):
        config = parse_config(config, plugins, env=env)
    return config, plugins


class RunningGateway:
    def __init__(self, gateway: Gateway, addresses: Addresses,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.gateway = gateway
        self.addresses = addresses
        #: The gateway's event loop (for ``asyncio.run_coroutine_threadsafe`` from a sync test).
        self.loop = loop

    @property
    def context(self):
        return self.gateway.context

    def port(self, protocol: str) -> int:
        return self.addresses[protocol][0][1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port('http')}{path}"

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's /metrics, e.g. ``metric("ogelkit_layer_decisions_total",
        layer="ratelimit", decision="rejected")``; AssertionError when there is none."""
        return metric_value(self.url("/metrics"), name, **labels)


def metric_value(url: str, name: str, **labels: str) -> float:
    """Read one sample from a Prometheus text endpoint (labels not named are ignored)."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for line in text.splitlines():
        if (line.startswith((f"{name}{{", f"{name} "))  # labelled, or a series without labels
                and all(f'{k}="{v}"' in line for k, v in labels.items())):
            return float(line.rsplit(" ", 1)[1])
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    raise AssertionError(f"no {name}{{{want}}} in {url}")


@asynccontextmanager
async def running_gateway(config: Config | str, *, plugins: Plugins | None = None,
                          env: Mapping[str, str] | None = None) -> AsyncIterator[RunningGateway]:
    """Start a gateway in the current event loop; stop (drain) it on exit.

    Use port 0 in ``[listen]`` to get free ports; read them from ``.addresses``.
    """
    cfg, plugins = _as_config(config, plugins, env)
    gateway = Gateway(cfg, plugins, env=env or {}, handle_signals=False)
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(gateway.run)
        try:
            yield RunningGateway(gateway, addresses, asyncio.get_running_loop())
        finally:
            gateway.request_stop()


@contextmanager
def gateway_thread(config: Config | str, *, plugins: Plugins | None = None,
                   env: Mapping[str, str] | None = None,
                   timeout: float = 30.0) -> Iterator[RunningGateway]:
    """Run a gateway on its own event loop in a thread, so sync clients (psycopg, pymongo,
    redis-py) and async clients of another loop can both talk to it over sockets."""
    cfg, plugins = _as_config(config, plugins, env)
    gateway = Gateway(cfg, plugins, env=env or {}, handle_signals=False)
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["loop"] = asyncio.get_running_loop()
        try:
            async with anyio.create_task_group() as tg:
                box["addresses"] = await tg.start(gateway.run)
                started.set()
        except BaseException as exc:  # report startup failures to the test thread
            box["error"] = exc
            started.set()

    def target() -> None:
        try:
            import uvloop
            options: dict[str, Any] = {"use_uvloop": True}
            del uvloop
        except ImportError:
            options = {}
        anyio.run(main, backend="asyncio", backend_options=options)

    thread = threading.Thread(target=target, name="ogelkit-gateway", daemon=True)
    thread.start()
    if not started.wait(timeout):
        raise TimeoutError("gateway did not start in time")
    if "error" in box:
        raise box["error"]
    try:
        yield RunningGateway(gateway, box["addresses"], box["loop"])
    finally:
        try:
            box["loop"].call_soon_threadsafe(gateway.request_stop)
        except RuntimeError:  # the loop already ended (the test stopped the gateway itself)
            pass
        thread.join(timeout + cfg.gateway.drain_timeout)


class GatewayProcess:
    """``ogelkit run CONFIG`` as a subprocess, with its JSON log captured to a file."""

    def __init__(self, config_text: str, *, env: Mapping[str, str] | None = None,
                 workdir: str | None = None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="ogelkit-gw-"))
        self.config_path = self.dir / "config.toml"
        self.config_path.write_text(config_text)
        self.log_path = self.dir / "gateway.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    def start(self, *, wait_ready: float = 30.0) -> GatewayProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ogelkit", "run", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.monotonic() + wait_ready
        while time.monotonic() < deadline:
            if '"msg": "ready"' in self.log():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"gateway not ready after {wait_ready}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def ports(self) -> dict[str, int]:
        """Protocol (``postgres``, ``http``, ``port`` for the one port ...) -> the port it
        listens on, from this run's latest ``ready`` log line."""
        for line in reversed(self.log().splitlines()):
            if '"msg": "ready"' in line:
                return {k: int(v[0].rsplit(":", 1)[1])
                        for k, v in json.loads(line)["addresses"].items() if v}
        raise AssertionError(f"the gateway never logged ready:\n{self.log()}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            if self._log is not None and self.proc.returncode is not None:
                self._log.close()

    def kill(self) -> None:
        """SIGKILL the gateway and every process it started (``[gateway] workers``: they are
        in its session, and would otherwise drain on their own once they see it gone)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
