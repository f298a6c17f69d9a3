"""``[gateway] workers = N``: N processes that each run the whole gateway on the same ports.

The parent process parses the config (already done by ``ogelkit run``), reserves every
listening port the config leaves to the system (port 0: the port is bound with
SO_REUSEPORT and never listened on, so it stays this gateway's for its whole life), then
forks the workers. Each worker is an ordinary gateway (``Gateway.run``) whose listeners set
SO_REUSEPORT, so the kernel spreads new connections over the workers' accept queues. What
must be one across workers is already shared through ``[state]`` and the control plane,
exactly as between replicas: the connection cap (gatekeeper leases), rate limits,
Postgres cancel keys, the lifecycle scheduler's lease; the config check refuses
``workers > 1`` without ``[state]`` or with an in-memory SQLite control plane.

Startup: worker 0 starts alone (it applies migrations and seeds the config's tenants and
databases), the others once it is ready; the parent logs ``ready`` (with the addresses and
the workers' pids) once every worker is. A worker that fails to start stops the gateway
(exit 1), as a single process would.

Supervision: SIGTERM or SIGINT to the parent is forwarded to every worker as SIGTERM (each
drains as one gateway does; a second signal skips the wait), and the parent exits 0 once
all have exited 0, 1 otherwise. SIGHUP is forwarded (every worker reloads the config). A
worker that exits while the gateway is not stopping is logged and started again (at once
when it had served at least ``RESTART_BACKOFF_AFTER`` seconds, otherwise after a delay
that doubles up to ``RESTART_DELAY_MAX``). Workers ignore SIGINT (a terminal's Ctrl-C
reaches the parent, which forwards it once) and stop when the parent disappears.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

import anyio
import attrs

from ogelkit.config import Config
from ogelkit.frontdoor import bind_host
from ogelkit.plugins import Plugins

log = logging.getLogger("ogelkit.workers")

#: A worker that served at least this long is restarted at once.
RESTART_BACKOFF_AFTER = 10.0
RESTART_DELAY_MIN = 0.5
RESTART_DELAY_MAX = 10.0
#: Seconds beyond drain_timeout the parent waits for workers before killing them.
STOP_GRACE = 20.0
#: How often a worker checks that its parent is alive.
ORPHAN_CHECK = 1.0


def _reserve(host: str | None) -> socket.socket:
    """A socket bound to a free port with SO_REUSEPORT and not listening: it receives no
    connection, and keeps the port from anyone who does not set SO_REUSEPORT."""
    if host is None and socket.has_dualstack_ipv6():
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[Any, ...] = ("::", 0)
    elif host is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("0.0.0.0", 0)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        address = (host, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_ports(
    config: Config, plugins: Plugins, env: Mapping[str, str]
) -> tuple[dict[str, int], list[socket.socket]]:
    """Resolve every port 0 of the config (and ``PORT=0``) to a reserved free port: the
    ports the workers bind instead (by protocol, ``port`` for the one port, ``http``), and
    the sockets holding them. The config itself stays as written (a reload compares it)."""
    listen = config.listen
    host = bind_host(listen.host)
    held: list[socket.socket] = []

    def reserve() -> int:
        sock = _reserve(host)
        held.append(sock)
        return sock.getsockname()[1]

    ports: dict[str, int] = {}
    for protocol in config.protocols():
        cls = plugins.frontdoor_for(protocol)
        if cls is not None and listen.port_for(protocol, cls.default_port) == 0:
            ports[protocol] = reserve()
    if listen.port == 0:
        ports["port"] = reserve()
    port_env = env.get("PORT")
    http = int(port_env) if port_env and port_env.isdigit() else listen.http
    if http == 0:
        ports["http"] = reserve()
    return ports, held


class _WorkerLogs(logging.Filter):
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _worker_main(
    config: Config,
    plugins: Plugins,
    env: dict[str, str],
    ports: dict[str, int],
    index: int,
    conn: multiprocessing.connection.Connection,
    parent: int,
    held: list[socket.socket],
) -> None:
    """One worker process (forked): a whole gateway; reports readiness on ``conn``."""
    from ogelkit.runtime import Gateway, StartupError

    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sock in held:
        sock.close()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerLogs(index))
    gateway = Gateway(config, plugins, env=env, worker=index, ports=ports)

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def serve(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                await gateway.run(task_status=task_status)
                tg.cancel_scope.cancel()

            addresses = await tg.start(serve)
            assert gateway.context is not None
            conn.send(("ready", addresses, gateway.context.gateway_id))
            tg.start_soon(_orphan_watch, gateway, parent)

    try:
        import uvloop  # noqa: F401

        options: dict[str, Any] = {"use_uvloop": True}
    except ImportError:
        options = {}
    try:
        anyio.run(main, backend="asyncio", backend_options=options)
    except (StartupError, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(e, StartupError) for e in leaves):
            raise
        for leaf in leaves:
            logging.getLogger("ogelkit.runtime").error("startup failed: %s", leaf)
        with contextlib.suppress(OSError):
            conn.send(("failed", "; ".join(str(leaf) for leaf in leaves), None))
        sys.exit(1)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def _orphan_watch(gateway: Any, parent: int) -> None:
    """Stop (drain) when the parent is gone, so no worker outlives its supervisor."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a parent's death
        await anyio.sleep(ORPHAN_CHECK)
    log.warning("the parent process is gone; stopping")
    gateway.request_stop()


@attrs.define
class _Slot:
    index: int
    process: Any = None
    conn: multiprocessing.connection.Connection | None = None
    started: float = 0.0
    ready: bool = False
    gateway_id: str | None = None
    failures: int = 0
    restart_at: float | None = None
    exitcode: int | None = None
    worker_http: list[str] = attrs.field(factory=list)


class Supervisor:
    """The parent process of ``workers > 1`` (see the module docstring)."""

    def __init__(self, config: Config, plugins: Plugins, *, env: Mapping[str, str] | None = None):
        self.plugins = plugins
        self.base_env = dict(os.environ if env is None else env)
        self.count = config.gateway.processes
        self.config = config
        self.ports: dict[str, int] = {}
        self.held: list[socket.socket] = []
        self.slots = [_Slot(i) for i in range(self.count)]
        self.stopping = False
        self.stop_deadline: float | None = None
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._ctx = multiprocessing.get_context("fork")
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- signals -------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[signum] = signal.signal(signum, self._on_signal)
        signal.set_wakeup_fd(self._wake_w)
        return previous

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("signal received, forwarded to the workers", extra={"signal": name})
                self._send_all(signal.SIGHUP)
                continue
            log.info(
                "signal received, forwarded to the workers", extra={"signal": name, "second": self.stopping}
            )
            self._stop()

    def _stop(self) -> None:
        """First call: drain every worker; later calls: tell them to skip the wait."""
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.config.gateway.drain_timeout + STOP_GRACE
        self._send_all(signal.SIGTERM)

    def _send_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.exitcode is None:
                try:
                    os.kill(slot.process.pid, signum)
                except ProcessLookupError:
                    pass

    # -- workers -------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        receive, send = self._ctx.Pipe(duplex=False)
        sys.stdout.flush()
        sys.stderr.flush()
        process = self._ctx.Process(
            target=_worker_main,
            name=f"ogelkit-worker-{slot.index}",
            args=(
                self.config,
                self.plugins,
                self.base_env,
                self.ports,
                slot.index,
                send,
                os.getpid(),
                self.held,
            ),
        )
        process.start()
        send.close()
        slot.process, slot.conn = process, receive
        slot.started, slot.ready, slot.exitcode, slot.restart_at = time.monotonic(), False, None, None
        log.info("worker started", extra={"worker": slot.index, "pid": process.pid})

    def _wait(self, timeout: float) -> None:
        """Block until a signal, a worker's message or a worker's exit (or ``timeout``)."""
        waitables: list[Any] = [self._wake_r]
        for slot in self.slots:
            if slot.process is not None and slot.exitcode is None:
                waitables.append(slot.process.sentinel)
                if slot.conn is not None:
                    waitables.append(slot.conn)
        multiprocessing.connection.wait(waitables, timeout=max(0.0, timeout))
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _poll_workers(self) -> list[_Slot]:
        """Read readiness messages and reap exited workers; the slots that just exited."""
        exited = []
        for slot in self.slots:
            if slot.process is None or slot.exitcode is not None:
                continue
            if slot.conn is not None:
                try:
                    while slot.conn.poll():
                        kind, payload, gateway_id = slot.conn.recv()
                        if kind == "ready":
                            self._on_ready(slot, payload, gateway_id)
                except (EOFError, OSError):
                    slot.conn.close()
                    slot.conn = None
            if not slot.process.is_alive():
                slot.process.join()
                slot.exitcode = slot.process.exitcode
                if slot.conn is not None:
                    slot.conn.close()
                    slot.conn = None
                exited.append(slot)
        return exited

    def _on_ready(self, slot: _Slot, addresses: Any, gateway_id: str) -> None:
        restarted = slot.gateway_id is not None
        slot.ready, slot.gateway_id = True, gateway_id
        slot.worker_http = [f"{h}:{p}" for h, p in addresses.pop("worker_http", [])]
        if not self.addresses:
            self.addresses = addresses
        log.info(
            "worker restarted" if restarted else "worker ready",
            extra={
                "worker": slot.index,
                "pid": slot.process.pid,
                "gateway": gateway_id,
                "worker_http": slot.worker_http,
            },
        )

    def _start_all(self) -> bool:
        """Worker 0 alone (migrations, seeding), then the others; False when one failed to
        start or a stop was requested meanwhile."""
        limit = self.config.gateway.startup_timeout * 2 + 30.0
        for group in (self.slots[:1], self.slots[1:]):
            for slot in group:
                self._spawn(slot)
            deadline = time.monotonic() + limit
            while not all(slot.ready for slot in group):
                self._wait(deadline - time.monotonic())
                self._handle_signals()
                for slot in self._poll_workers():
                    log.error(
                        "worker failed to start",
                        extra={"worker": slot.index, "pid": slot.process.pid, "exitcode": slot.exitcode},
                    )
                    return False
                if self.stopping:
                    return False
                if time.monotonic() >= deadline:
                    log.error("workers not ready in time", extra={"timeout": limit})
                    return False
        return True

    def _restart_delay(self, slot: _Slot) -> float:
        if time.monotonic() - slot.started >= RESTART_BACKOFF_AFTER:
            slot.failures = 0
            return 0.0
        slot.failures += 1
        return min(RESTART_DELAY_MAX, RESTART_DELAY_MIN * 2 ** (slot.failures - 1))

    def _on_exit(self, slot: _Slot) -> None:
        code = slot.exitcode
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit code {code}"
        )
        if self.stopping:
            (log.info if code == 0 else log.error)(
                "worker stopped",
                extra={"worker": slot.index, "pid": slot.process.pid, "exitcode": code, "how": how},
            )
            return
        delay = self._restart_delay(slot)
        slot.restart_at = time.monotonic() + delay
        log.error(
            "worker exited unexpectedly; restarting it",
            extra={
                "worker": slot.index,
                "pid": slot.process.pid,
                "exitcode": code,
                "how": how,
                "restart_in": delay,
            },
        )

    def _serve(self) -> None:
        while True:
            now = time.monotonic()
            if self.stopping:
                if all(slot.process is None or slot.exitcode is not None for slot in self.slots):
                    return
                assert self.stop_deadline is not None
                if now >= self.stop_deadline:
                    log.error("workers did not stop in time; killing them")
                    self._send_all(signal.SIGKILL)
                    self.stop_deadline = now + 5.0
            else:
                for slot in self.slots:
                    if slot.restart_at is not None and now >= slot.restart_at:
                        self._spawn(slot)
            timers = [s.restart_at for s in self.slots if s.restart_at is not None]
            if self.stop_deadline is not None:
                timers.append(self.stop_deadline)
            timeout = min([t - now for t in timers], default=5.0)
            self._wait(min(5.0, timeout))
            self._handle_signals()
            for slot in self._poll_workers():
                self._on_exit(slot)

    def run(self) -> int:
        """Start the workers, supervise them until a stop; the process's exit code."""
        self.ports, self.held = reserve_ports(self.config, self.plugins, self.base_env)
        previous = self._install_signals()
        try:
            log.info("starting workers", extra={"workers": self.count})
            ok = self._start_all()
            if ok:
                log.info(
                    "ready",
                    extra={
                        "addresses": {k: [f"{h}:{p}" for h, p in v] for k, v in self.addresses.items()},
                        "workers": [slot.process.pid for slot in self.slots],
                        "gateways": [slot.gateway_id for slot in self.slots],
                        "worker_http": [
                            slot.worker_http[0] if slot.worker_http else None for slot in self.slots
                        ],
                    },
                )
            elif not self.stopping:
                self._stop()
            self._serve()
            # A worker that died earlier and awaited its restart does not fail the shutdown.
            failed = [s.index for s in self.slots if s.exitcode not in (0, None) and s.restart_at is None]
            if not ok or failed:
                log.error("stopped", extra={"failed_workers": failed})
                return 1
            log.info("stopped")
            return 0
        finally:
            signal.set_wakeup_fd(-1)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for sock in self.held:
                sock.close()


def supervise(config: Config, plugins: Plugins, *, env: Mapping[str, str] | None = None) -> int:
    """Run ``config.gateway.processes`` workers (``ogelkit run`` with ``workers > 1``)."""
    return Supervisor(config, plugins, env=env).run()


__all__ = ["Supervisor", "reserve_ports", "supervise"]
