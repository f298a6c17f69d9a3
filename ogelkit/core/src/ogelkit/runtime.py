"""``ogelkit run``: open the control plane and backends, compile the chain, start every
listener, serve, and shut down gracefully.

Shutdown: the first SIGTERM/SIGINT stops accepting, lets in-flight work finish for up to
``[gateway] drain_timeout`` and closes clients as they go idle; a second signal skips the
wait. Then layers close (the usage layer flushes), backends close, the store closes.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ogelkit.audit import lifecycle_event
from ogelkit.backend import Backend
from ogelkit.chain import Chain
from ogelkit.config import Config
from ogelkit.context import GatewayContext
from ogelkit.control.records import DatabaseRecord
from ogelkit.control.store import Store, open_store
from ogelkit.directory import Directory
from ogelkit.frontdoor import FrontDoor, bind_host, reuse_port
from ogelkit.http import HttpServer, bind_sockets, build_app
from ogelkit.layer import Layer
from ogelkit.lifecycle import Lifecycle
from ogelkit.metrics import Metrics
from ogelkit.model import Reason, Reject
from ogelkit.oneport import OnePort, make_server_tls
from ogelkit.ops import ops_routes
from ogelkit.plugins import Plugins
from ogelkit.scram import make_verifier

log = logging.getLogger("ogelkit.runtime")

CLOSE_TIMEOUT = 10.0


class StartupError(Exception):
    """The gateway could not start (bind failure, unreachable store ...)."""


class Gateway:
    def __init__(self, config: Config, plugins: Plugins, *, env: Mapping[str, str] | None = None,
                 handle_signals: bool = True, worker: int | None = None,
                 ports: Mapping[str, int] | None = None):
        self.config = config
        #: Index of this worker process under ``[gateway] workers > 1`` (``ogelkit.workers``);
        #: None for a gateway that is the whole process.
        self.worker = worker
        self._parent = os.getppid()
        #: Ports to bind instead of the config's port 0 (a protocol, ``port``, ``http``):
        #: the ones the parent reserved, so that every worker binds the same.
        self.ports = dict(ports or {})
        self.plugins = plugins
        self.env = os.environ if env is None else env
        self.handle_signals = handle_signals
        self.stop_requested = anyio.Event()
        self._hard_stop = anyio.Event()
        self.context: GatewayContext | None = None
        self.frontdoors: list[FrontDoor] = []
        self.oneport: OnePort | None = None
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        self._stack: AsyncExitStack | None = None
        self._worker_http: list[socket.socket] = []

    def request_stop(self) -> None:
        if self.stop_requested.is_set():
            self._hard_stop.set()
        self.stop_requested.set()

    # -- startup ---------------------------------------------------------------------------
    async def _open_store(self) -> Store:
        store = open_store(self.config.control.url, self.config.control.secret_key)
        await store.open()
        await store.migrate()
        return store

    async def seed(self) -> None:
        """Create the config's tenants and databases that are missing (after a reload)."""
        assert self.context is not None
        await self._seed(self.context)
        for slug in self.config.tenants:
            self.context.directory.invalidate(slug)

    async def reload(self) -> dict[str, Any]:
        """Reload the config file (SIGHUP, ``POST /admin/reload``): see ``ogelkit.reload``."""
        from ogelkit.reload import reload_config
        return await reload_config(self)

    async def _reload_every_worker(self) -> dict[str, Any]:
        """``POST /admin/reload`` on a worker: reload here (the answer), then have the parent
        forward SIGHUP to every worker (this one finds nothing more to change)."""
        result = await self.reload()
        if result.get("reloaded") and os.getppid() == self._parent:
            os.kill(self._parent, signal.SIGHUP)
        return result

    async def add_backend(self, spec: Any) -> str | None:
        """Open a backend a reload added and hand it to its protocol's running door; the
        reason it cannot be added otherwise."""
        ctx = self.context
        assert ctx is not None and self._stack is not None
        door = next((fd for fd in self.frontdoors if fd.protocol == spec.cls.protocol), None)
        if door is None:
            return f"no running front door serves protocol {spec.cls.protocol!r}"
        backend = spec.cls(spec.options, name=spec.id, context=ctx)
        try:
            await _open(backend, self._stack)
        except StartupError as exc:
            return str(exc)
        ctx.backends[spec.id] = backend
        door.add_backend(backend)
        log.info("backend added by a config reload",
                 extra={"backend": spec.id, "type": spec.type, "protocol": door.protocol})
        return None

    async def _seed(self, ctx: GatewayContext) -> None:
        """Create the tenants and databases the config declares, when missing (idempotent)."""
        store = ctx.store
        for slug, seed in self.config.tenants.items():
            tenant = await store.get_tenant(slug)
            if tenant is None:
                tenant = await store.create_tenant(slug, seed.tier)
                log.info("created tenant from config", extra={"tenant": slug, "tier": seed.tier})
            if seed.password and await store.get_verifier(slug) is None:
                await store.set_verifier(slug, str(make_verifier(seed.password)))
            for name, db_seed in seed.databases.items():
                if await store.get_database(slug, name) is not None:
                    continue
                backend = ctx.backends[db_seed.backend]
                upstream = await backend.provision(tenant, name, ctx.directory.tier(tenant.tier))
                await store.put_database(DatabaseRecord(slug, name, backend.kind, backend.name,
                                                        upstream))
                log.info("provisioned database from config",
                         extra={"tenant": slug, "database": name, "backend": backend.name})

    def _http_port(self) -> int:
        if "http" in self.ports:
            return self.ports["http"]
        port = self.env.get("PORT")
        if port and port.isdigit():
            return int(port)
        return self.config.listen.http

    async def _start_frontdoors(self, ctx: GatewayContext) -> None:
        by_protocol: dict[str, list[Backend]] = {}
        for backend in ctx.backends.values():
            by_protocol.setdefault(backend.protocol, []).append(backend)
        for protocol, backends in by_protocol.items():
            cls = self.plugins.frontdoor_for(protocol)
            if cls is None:
                continue
            port = self.ports.get(protocol, self.config.listen.port_for(protocol, cls.default_port))
            fd = cls(ctx, host=self.config.listen.host, port=port, backends=backends)
            try:
                addrs = await fd.start()
            except OSError as exc:
                raise StartupError(f"cannot listen for {protocol} on "
                                   f"{self.config.listen.host}:{port}: {exc.strerror or exc}") from exc
            self.frontdoors.append(fd)
            self.addresses[protocol] = addrs
        listen = self.config.listen
        if listen.port is not None:
            tls = make_server_tls(listen.tls_cert, listen.tls_key) if listen.tls_cert else None
            self.oneport = OnePort(ctx, self.frontdoors, host=listen.host,
                                   port=self.ports.get("port", listen.port),
                                   sniff_timeout=listen.sniff_timeout, tls=tls)
            try:
                self.addresses["port"] = await self.oneport.start()
            except OSError as exc:
                raise StartupError(f"cannot listen on the one port {listen.host}:{self.oneport.port}: "
                                   f"{exc.strerror or exc}") from exc

    def _http_server(self, ctx: GatewayContext) -> HttpServer:
        """The HTTP side (Starlette on uvicorn, in this loop): the core's ops routes first,
        then the routes of front doors served on the HTTP port (``http_routes()``), then
        every ``ogelkit_http_routes`` hook's. Sockets are bound here so a taken port is a
        StartupError before "ready"."""
        endpoints: list[Any] = []
        try:
            for batch in self.plugins.hook.ogelkit_admin_endpoints(context=ctx):
                endpoints.extend(batch or [])
        except Exception as exc:
            raise StartupError(f"a plugin's ogelkit_admin_endpoints hook failed: {exc}") from exc
        routes = list(ops_routes(ctx, endpoints))
        for fd in self.frontdoors:
            door_routes = getattr(fd, "http_routes", None)
            if door_routes is not None:
                routes.extend(door_routes())
        try:
            for batch in self.plugins.hook.ogelkit_http_routes(context=ctx):
                routes.extend(batch or [])
        except Exception as exc:
            raise StartupError(f"a plugin's ogelkit_http_routes hook failed: {exc}") from exc
        port = self._http_port()
        try:
            sockets = bind_sockets(bind_host(self.config.listen.host), port,
                                   reuse_port=reuse_port(ctx))
        except OSError as exc:
            raise StartupError(f"cannot listen for HTTP on {self.config.listen.host}:{port}: "
                               f"{exc.strerror or exc}") from exc
        self._worker_http = []
        worker_http = self.config.listen.worker_http
        if self.worker is not None and worker_http is not None:
            # This worker's own port (its /metrics), beside the shared one.
            own = worker_http + self.worker if worker_http else 0
            try:
                self._worker_http = bind_sockets(bind_host(self.config.listen.host), own)
            except OSError as exc:
                for sock in sockets:
                    sock.close()
                raise StartupError(f"cannot listen for HTTP on {self.config.listen.host}:{own} "
                                   f"(worker_http): {exc.strerror or exc}") from exc
        return HttpServer(build_app(routes), sockets + self._worker_http)

    async def run(self, *, task_status: TaskStatus[dict[str, list[tuple[str, int]]]] =
                  anyio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        metrics = Metrics()
        async with AsyncExitStack() as stack:
            self._stack = stack
            with anyio.fail_after(cfg.gateway.startup_timeout):
                try:
                    store = await self._open_store()
                except Exception as exc:
                    raise StartupError(f"cannot open the control plane {_redact(cfg.control.url)}: "
                                       f"{exc}") from exc
            stack.push_async_callback(_closing, "control plane", store.close)
            directory = Directory(store, cfg.tiers, ttl=cfg.control.cache_ttl)
            ctx = GatewayContext(cfg, self.plugins, store, metrics, directory)
            ctx.reload = self.reload if self.worker is None else self._reload_every_worker
            self.context = ctx
            stack.push_async_callback(_closing, "shared state", ctx.close_state)
            # Before layers open, so they can subscribe to its events (usage: cold starts).
            ctx.lifecycle = Lifecycle(ctx)
            ctx.lifecycle.subscribe(lambda event: lifecycle_event(ctx.audit, event))
            stack.push_async_callback(_closing, "lifecycle", ctx.lifecycle.close)

            for spec in cfg.backends.values():
                ctx.backends[spec.id] = spec.cls(spec.options, name=spec.id, context=ctx)
            for lspec in cfg.layers:
                ctx.layers.append(lspec.cls(lspec.options, name=lspec.name, context=ctx))

            with anyio.fail_after(cfg.gateway.startup_timeout):
                # Layers close before backends (the exit stack unwinds in reverse), so the
                # usage layer can still flush to the store and read storage from backends.
                components: list[Backend | Layer] = [*ctx.backends.values(), *ctx.layers]
                for component in components:
                    await _open(component, stack)
                await self._seed(ctx)
                await ctx.lifecycle.load()

            ctx.chain = Chain(ctx.layers, audit=ctx.audit, live=ctx.live)
            directory.chain = ctx.chain

            async with anyio.create_task_group() as tg:
                await self._start_frontdoors(ctx)
                http = self._http_server(ctx)
                self.addresses["http"] = [a for a in http.addresses()
                                          if a not in _addresses(self._worker_http)]
                if self._worker_http:
                    self.addresses["worker_http"] = _addresses(self._worker_http)
                ctx.addresses = self.addresses
                tg.start_soon(http.serve)
                await http.started()
                tg.start_soon(directory.run)
                tg.start_soon(ctx.lifecycle.run)
                for layer in ctx.layers:
                    tg.start_soon(layer.run)
                if self.handle_signals:
                    tg.start_soon(self._watch_signals)

                ctx.hooks.startup(ctx)
                # Everything built so far (config, plugins, pools) lives as long as the
                # process: move it out of the collector's generations so GC passes on the
                # request path only scan request garbage.
                gc.collect()
                gc.freeze()
                metrics.ready.set(1)
                # Under workers > 1 the parent says "ready" once every worker is.
                log.info("ready" if self.worker is None else "worker ready", extra={
                    "addresses": {k: [f"{h}:{p}" for h, p in v]
                                  for k, v in self.addresses.items()},
                    "layers": [layer.name for layer in ctx.layers],
                    "gateway": ctx.gateway_id})
                task_status.started(self.addresses)

                await self.stop_requested.wait()
                await self._drain(ctx)
                with anyio.CancelScope(shield=True):
                    await http.stop()
                tg.cancel_scope.cancel()

            with anyio.CancelScope(shield=True):
                await stack.aclose()
                ctx.hooks.shutdown(ctx)
        log.info("stopped")

    async def _drain(self, ctx: GatewayContext) -> None:
        ctx.draining = True
        ctx.metrics.ready.set(0)
        log.info("draining", extra={"timeout": self.config.gateway.drain_timeout,
                                    "sessions": ctx.sessions.count()})
        if self.oneport is not None:
            await self.oneport.close()
        for fd in self.frontdoors:
            await fd.stop_accepting()
        with anyio.move_on_after(self.config.gateway.drain_timeout) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on, self._hard_stop, tg.cancel_scope)
                async with anyio.create_task_group() as drains:
                    for fd in self.frontdoors:
                        drains.start_soon(fd.drain)
                tg.cancel_scope.cancel()
        if scope.cancelled_caught:
            log.warning("drain deadline reached, closing remaining clients")
        reason = Reject(Reason.SHUTDOWN, "the gateway is shutting down")
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            for fd in self.frontdoors:
                await fd.close(reason)

    async def _watch_signals(self) -> None:
        # A worker leaves SIGINT to its parent, which forwards it once (a terminal's Ctrl-C
        # reaches the whole process group: two stops would skip the drain).
        watched = (signal.SIGTERM, signal.SIGHUP) if self.worker is not None else \
            (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with anyio.open_signal_receiver(*watched) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("signal received", extra={"signal": "SIGHUP"})
                    try:
                        await self.reload()
                    except Exception:  # a bug in a reload must not stop the gateway
                        log.exception("config reload failed")
                    continue
                log.info("signal received", extra={"signal": signal.Signals(signum).name,
                                                   "second": self.stop_requested.is_set()})
                self.request_stop()


async def _open(component: Backend | Layer, stack: AsyncExitStack) -> None:
    kind = "backend" if isinstance(component, Backend) else "layer"
    try:
        await component.open()
    except Exception as exc:
        raise StartupError(f"{kind} {component.name} ({component.type_name}) failed to open: "
                           f"{exc}") from exc
    stack.push_async_callback(_closing, f"{kind} {component.name}", component.close)


async def _cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _closing(what: str, close) -> None:
    try:
        with anyio.move_on_after(CLOSE_TIMEOUT):
            await close()
    except Exception:
        log.exception("closing %s failed", what)


def _addresses(sockets: list[socket.socket]) -> list[tuple[str, int]]:
    return [tuple(s.getsockname()[:2]) for s in sockets]


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def run_gateway(config: Config, plugins: Plugins) -> None:
    """Blocking entry point for ``ogelkit run``: uvloop when available. With ``[gateway]
    workers > 1`` this process supervises that many worker processes (``ogelkit.workers``)
    and exits with their verdict."""
    if config.gateway.processes > 1:
        from ogelkit.workers import supervise
        code = supervise(config, plugins)
        if code:
            sys.exit(code)
        return
    gateway = Gateway(config, plugins)
    try:
        import uvloop  # noqa: F401
        options: dict[str, Any] = {"use_uvloop": True}
    except ImportError:
        options = {}
    anyio.run(gateway.run, backend="asyncio", backend_options=options)


__all__ = ["Gateway", "StartupError", "bind_host", "run_gateway"]
