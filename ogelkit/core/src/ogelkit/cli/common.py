"""Shared CLI plumbing: loading plugins and config once, running async work, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import attrs
import click

from ogelkit.config import Config, ConfigErrors, load_config
from ogelkit.context import GatewayContext
from ogelkit.control.store import Store, StoreError, open_store
from ogelkit.directory import Directory
from ogelkit.plugins import Plugins, load_plugins, plugin_failure_lines

T = TypeVar("T")

CONFIG_ENV = "OGELKIT_CONFIG"
EXIT_CONFIG = 2


@attrs.define
class CliState:
    config_path: str | None = None
    _plugins: Plugins | None = None
    _config: Config | None = None

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            self._plugins = load_plugins()
        return self._plugins

    def config(self, path: str | None = None, *, core_only: bool = False) -> Config:
        """The config, validated with every plugin; ``core_only``: without loading any
        plugin (commands that only read or write the control plane: they then start in
        a fraction of the time, see ``Config.core_only``)."""
        path = path or self.config_path
        if path is None:
            raise click.UsageError(f"no config given: pass --config FILE or set {CONFIG_ENV}")
        config = self._config
        if config is None or config.file != path or (config.core_only and not core_only):
            plugins = None if core_only and self._plugins is None else self.plugins
            config = self._config = load_or_exit(path, plugins)
        return config


def load_or_exit(path: str, plugins: Plugins | None) -> Config:
    if plugins is not None:
        for line in plugin_failure_lines(plugins):
            click.echo(f"warning: {line}", err=True)
    problems = list(plugins.errors) if plugins is not None else []
    try:
        config = load_config(path, plugins)
    except ConfigErrors as exc:
        for line in problems + exc.messages:
            click.echo(line, err=True)
        n = len(problems) + len(exc.messages)
        click.echo(f"{path}: {n} problem{'s' if n != 1 else ''} found", err=True)
        sys.exit(EXIT_CONFIG)
    if problems:
        for line in problems:
            click.echo(line, err=True)
        sys.exit(EXIT_CONFIG)
    return config


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


@asynccontextmanager
async def opened_store(config: Config):
    store: Store = open_store(config.control.url, config.control.secret_key)
    try:
        await store.open()
        await store.migrate()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot open the control plane: {exc}") from exc
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def tool_context(config: Config, plugins: Plugins, backend_ids: list[str] | None = None):
    """A context for CLI work that needs backends (provisioning), without any listener."""
    from ogelkit.metrics import Metrics  # prometheus_client: only for commands that need it
    async with opened_store(config) as store:
        directory = Directory(store, config.tiers, ttl=config.control.cache_ttl)
        ctx = GatewayContext(config, plugins, store, Metrics(), directory)
        ids = backend_ids if backend_ids is not None else list(config.backends)
        for bid in ids:
            spec = config.backends[bid]
            ctx.backends[bid] = spec.cls(spec.options, name=bid, context=ctx)
        try:
            for backend in ctx.backends.values():
                await backend.open()
            yield ctx
        finally:
            for backend in ctx.backends.values():
                with anyio.CancelScope(shield=True):
                    await backend.close()
            await ctx.close_state()


async def require_tenant(store: Store, slug: str):
    """The tenant, or a clean CLI error naming it."""
    from ogelkit.control.store import NotFound
    try:
        return await store.require_tenant(slug)
    except NotFound as exc:
        raise click.ClickException(str(exc)) from exc


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def echo_table(rows: Sequence[Sequence[object]], headers: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*headers).rstrip())
    for row in rows:
        click.echo(fmt.format(*[str(x) for x in row]).rstrip())
