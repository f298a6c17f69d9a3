"""Plugin host: build a pluggy manager, load entry points one by one, collect registrations.

Nothing happens at import time; ``load_plugins()`` is a factory. A plugin that fails to import
is recorded with its name, distribution and version and the others still load.

A package rather than a module so it has a ``__path__``: pytest's importlib mode derives test
module names such as ``ogelkit.plugins.postgres.tests.test_login`` from the repository layout
and would otherwise replace a plain ``ogelkit.plugins`` module with a namespace package.
"""

from __future__ import annotations

import difflib
import os
import traceback
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

import ogelkit.hookspecs as hookspecs
from ogelkit.backend import Backend
from ogelkit.frontdoor import FrontDoor
from ogelkit.hooks import Hooks
from ogelkit.layer import Layer

ENTRY_POINT_GROUP = "ogelkit"
DISABLE_ENV = "OGELKIT_DISABLE_PLUGINS"
LOAD_ENV = "OGELKIT_LOAD_PLUGINS"  # allowlist; empty = no entry points at all

#: First-party type names and the distribution that provides them, for "not installed" errors.
KNOWN_DISTRIBUTIONS = {
    "postgres": "ogelkit-postgres",
    "neon": "ogelkit-neon",
    "convex": "ogelkit-convex",
    "redis": "ogelkit-redis",
    "mongodb": "ogelkit-mongodb",
    **{
        name: f"ogelkit-layer-{name}"
        for name in ("gatekeeper", "ratelimit", "cost", "session", "timeout", "usage",
                     "intelligence")
    },
}


class PluginError(Exception):
    """A plugin could not be used (import failure, bad registration, misspelled hook)."""


@attrs.define
class PluginInfo:
    name: str  # entry point name
    value: str  # "module:attr" the entry point names
    distribution: str | None
    version: str | None
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    hooks: list[str] = attrs.field(factory=list)
    backends: list[str] = attrs.field(factory=list)
    layers: list[str] = attrs.field(factory=list)

    entry_point: bool = True  # False for plugins registered directly (tests, embedding)

    @property
    def label(self) -> str:
        if not self.entry_point:
            return f'plugin "{self.name}" ({self.value})'
        dist = f"{self.distribution} {self.version}" if self.distribution else "no distribution"
        return f'plugin "{self.name}" ({dist}, entry point {self.value})'


def _distribution_of(cls: type) -> str:
    top = cls.__module__.split(".")[0]
    import importlib.metadata as md  # imported when plugins load: a CLI fast path has none

    dists = md.packages_distributions().get(top)
    return dists[0] if dists else top


class Registrar:
    """Handed to the ``ogelkit_register_*`` hooks; validates and records classes."""

    def __init__(self) -> None:
        self.backends: dict[str, type[Backend]] = {}
        self.layers: dict[str, type[Layer]] = {}
        self.frontdoors: dict[str, type[FrontDoor]] = {}
        self.errors: list[str] = []
        self._owner: PluginInfo | None = None

    def _register(self, kind: str, table: dict[str, Any], cls: Any, base: type) -> None:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            self.errors.append(f"{kind} registration {cls!r} is not a subclass of ogelkit.{base.__name__}")
            return
        name = getattr(cls, "type_name", "")
        if not name:
            self.errors.append(f"{kind} class {cls.__module__}.{cls.__qualname__} has no type_name")
            return
        if name in table:
            other = table[name]
            self.errors.append(
                f'{kind} type "{name}" is registered twice: by {_distribution_of(other)} '
                f"({other.__qualname__}) and {_distribution_of(cls)} ({cls.__qualname__})"
            )
            return
        table[name] = cls
        if self._owner is not None:
            getattr(self._owner, f"{kind}s").append(name)

    def backend(self, cls: type[Backend]) -> None:
        self._register("backend", self.backends, cls, Backend)

    def layer(self, cls: type[Layer]) -> None:
        self._register("layer", self.layers, cls, Layer)

    def frontdoor(self, cls: type[FrontDoor]) -> None:
        """The server side of wire protocol ``cls.protocol``; it serves every configured
        backend whose ``protocol`` names it."""
        if not (isinstance(cls, type) and issubclass(cls, FrontDoor)):
            self.errors.append(f"frontdoor registration {cls!r} is not a subclass of ogelkit.FrontDoor")
            return
        if not cls.protocol:
            self.errors.append(f"frontdoor class {cls.__module__}.{cls.__qualname__} has no protocol")
            return
        other = self.frontdoors.get(cls.protocol)
        if other is not None and other is not cls:
            self.errors.append(
                f'frontdoor for protocol "{cls.protocol}" is registered twice: by '
                f"{_distribution_of(other)} ({other.__qualname__}) and {_distribution_of(cls)} "
                f"({cls.__qualname__})")
            return
        self.frontdoors[cls.protocol] = cls


@attrs.define
class Plugins:
    """The loaded plugin set: the pluggy manager, what each plugin is, what it registered."""

    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo]
    backends: dict[str, type[Backend]]
    layers: dict[str, type[Layer]]
    errors: list[str]  # registration / validation problems (fatal for `run`)
    frontdoors: dict[str, type[FrontDoor]] = attrs.field(factory=dict)  # by protocol

    def frontdoor_for(self, protocol: str) -> type[FrontDoor] | None:
        """The registered door of ``protocol`` (or, for plugins written before 0.2, the
        deprecated ``Backend.frontdoor`` of a backend that speaks it)."""
        cls = self.frontdoors.get(protocol)
        if cls is not None:
            return cls
        for backend in self.backends.values():
            if backend.protocol == protocol and backend.frontdoor is not None:
                return backend.frontdoor
        return None

    @property
    def hook(self):
        """The raw pluggy relay; fire hooks through ``hooks`` (one error policy)."""
        return self.pm.hook

    @property
    def hooks(self) -> Hooks:
        """The typed hook facade (``ogelkit.hooks``)."""
        return Hooks(self.pm)

    @property
    def failed(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.status == "failed"]

    @property
    def known_distributions(self) -> dict[str, str]:
        return KNOWN_DISTRIBUTIONS

    def distribution_hint(self, type_name: str) -> str | None:
        dist = KNOWN_DISTRIBUTIONS.get(type_name)
        return f"pip install {dist}" if dist else None


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("ogelkit")
    pm.add_hookspecs(hookspecs)
    return pm


def _hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if n.startswith("ogelkit_")]


def _check_pending(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> list[str]:
    """Report impls of hooks that don't exist, with a did-you-mean (pluggy's check_pending)."""
    errors = []
    # The core's hooks and those plugins declared with ogelkit_add_hookspecs.
    known = sorted(set(_hook_names()) | {
        n for n, c in pm.hook.__dict__.items()
        if not n.startswith("_") and getattr(c, "spec", None) is not None})
    for name in pm.hook.__dict__:
        if name.startswith("_") or name in known:
            continue
        caller = getattr(pm.hook, name)
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
            label = infos[plugin_name].label if plugin_name in infos else f'plugin "{plugin_name}"'
            close = difflib.get_close_matches(name, known, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            errors.append(f'{label} implements unknown hook "{name}"{hint}')
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        if not errors:
            errors.append(str(exc))
    return errors


def load_plugins(
    *,
    entry_points: bool = True,
    extra: Iterable[tuple[str, object]] = (),
    disable: Iterable[str] = (),
) -> Plugins:
    """Build the plugin set.

    :param entry_points: load the ``ogelkit`` entry point group (tests pass False).
    :param extra: ``(name, module_or_object)`` pairs registered as plugins directly.
    :param disable: names to skip, on top of ``OGELKIT_DISABLE_PLUGINS``.
    """
    pm = new_plugin_manager()
    infos: dict[str, PluginInfo] = {}
    _early_errors: list[str] = []
    blocked = set(disable) | set(_env_list(DISABLE_ENV) or [])
    allow = _env_list(LOAD_ENV)

    if entry_points:
        seen: set[str] = set()
        import importlib.metadata as md

        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist else None
            version = ep.dist.version if ep.dist else None
            info = PluginInfo(ep.name, ep.value, dist, version)
            infos[ep.name] = info
            if ep.name in blocked or (allow is not None and ep.name not in allow):
                info.status = "disabled"
                continue
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not take the others down
                info.status = "failed"
                info.error = "".join(traceback.format_exception_only(exc)).strip()

    for name, obj in extra:
        infos[name] = PluginInfo(name, getattr(obj, "__name__", type(obj).__qualname__), None, None,
                                 entry_point=False)
        pm.register(obj, name=name)

    for name, info in infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])

    # Plugins that fire hooks of their own declare them first (ogelkit_add_hookspecs).
    for impl in reversed(pm.hook.ogelkit_add_hookspecs.get_hookimpls()):
        try:
            impl.function(*[{"pluginmanager": pm}[a] for a in impl.argnames])
        except Exception as exc:
            owner = infos.get(impl.plugin_name)
            label = owner.label if owner else impl.plugin_name
            _early_errors.append(f"{label} failed in ogelkit_add_hookspecs: {exc!r}")

    errors = _early_errors + _check_pending(pm, infos)

    registrar = Registrar()
    for hook_name in ("ogelkit_register_backends", "ogelkit_register_layers"):
        caller = getattr(pm.hook, hook_name)
        # Call implementations one by one so each registration is attributed to its plugin.
        for impl in reversed(caller.get_hookimpls()):
            registrar._owner = infos.get(impl.plugin_name)
            try:
                impl.function(*[{"register": registrar}[a] for a in impl.argnames])
            except Exception as exc:
                label = registrar._owner.label if registrar._owner else impl.plugin_name
                errors.append(f"{label} failed in {hook_name}: {exc!r}")
        registrar._owner = None
    errors.extend(registrar.errors)
    return Plugins(pm, infos, registrar.backends, registrar.layers, errors, registrar.frontdoors)


def plugin_failure_lines(plugins: Plugins) -> list[str]:
    """Human lines for plugins that failed to import."""
    return [
        f"{info.label} failed to import:\n  {info.error}\n"
        f"  Fix the installation, or skip it with {DISABLE_ENV}={info.name}."
        for info in plugins.failed
    ]
