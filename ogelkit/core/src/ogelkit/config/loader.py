"""Load a gateway config: parse, interpolate, validate core, plugins and cross-references.

Everything is checked before any I/O, and every problem is reported in one run.
"""

from __future__ import annotations

import builtins
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ogelkit.backend import Backend
from ogelkit.config.errors import ConfigErrors, ErrorCollector, describe_value, did_you_mean
from ogelkit.config.interpolate import interpolate
from ogelkit.config.models import (
    _MISSING,
    SPECIAL,
    TOP_LEVEL,
    AuditConfig,
    ControlConfig,
    GatewayConfig,
    LifecycleConfig,
    LimitsConfig,
    ListenConfig,
    PluginsConfig,
    PriceConfig,
    StateConfig,
    TenantSeed,
    TierConfig,
)
from ogelkit.config.schema import structure
from ogelkit.control.secrets import SecretKeyError, check_key
from ogelkit.plugins import Plugins
from ogelkit.tiers import DEFAULT_TIERS, Price, TierTable

if TYPE_CHECKING:
    from ogelkit.layer import Layer

_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_SLUG = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@attrs.define
class BackendSpec:
    id: str
    type: str
    cls: builtins.type[Backend]
    options: Any  # the plugin's validated Config instance


@attrs.define
class LayerSpec:
    name: str
    type: str
    cls: builtins.type[Layer]
    options: Any


@attrs.define
class Config:
    """A fully validated gateway config."""

    file: str
    listen: ListenConfig
    gateway: GatewayConfig
    control: ControlConfig
    state: StateConfig | None
    plugins: PluginsConfig
    backends: dict[str, BackendSpec]
    layers: list[LayerSpec]
    tiers: TierTable
    tenants: dict[str, TenantSeed]
    raw: dict[str, Any] = attrs.field(repr=False)
    lifecycle: LifecycleConfig = attrs.field(factory=LifecycleConfig)
    audit: AuditConfig = attrs.field(factory=AuditConfig)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)
    #: Parsed without plugins (control-plane CLI commands): backends carry their id and type
    #: only (``cls`` is the ``Backend`` base, ``options`` None) and there are no layers.
    core_only: bool = False

    def protocols(self) -> dict[str, list[str]]:
        """Protocol name -> ids of the backends that speak it."""
        out: dict[str, list[str]] = {}
        for spec in self.backends.values():
            out.setdefault(spec.cls.protocol, []).append(spec.id)
        return out


def load_config(path: str | Path, plugins: Plugins | None,
                env: Mapping[str, str] | None = None) -> Config:
    """``plugins=None``: the core tables only (see ``Config.core_only``), for commands that
    only talk to the control plane and must not import every plugin to do it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigErrors([_file_error(str(path), f"cannot read the file: {exc.strerror}")]) from exc
    return parse_config(text, plugins, env=env, file=str(path))


def parse_config(text: str, plugins: Plugins | None, *, env: Mapping[str, str] | None = None,
                 file: str = "<config>") -> Config:
    errors = ErrorCollector(file)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        errors.add("", f"not valid TOML: {exc}")
        errors.raise_if_any()
    data = interpolate(data, os.environ if env is None else env, errors)

    for key in data:
        if key not in TOP_LEVEL and key not in SPECIAL:
            known = [*TOP_LEVEL, *SPECIAL]
            hint = did_you_mean(key, known)
            errors.add(key, f'unknown table "{key}"',
                       hint=(hint + " " if hint else "") + f"Known tables: {', '.join(known)}.")

    sections: dict[str, Any] = {}
    for key, model in TOP_LEVEL.items():
        if key in data:
            sections[key] = structure(model, data[key], key, errors)
        elif key == "control":
            errors.add("control", "missing required table",
                       expected='[control] with url = "sqlite:///..." and secret_key')
        else:
            sections[key] = None if key == "state" else model()

    if plugins is None:
        backends, layers = _backend_ids(data.get("backends", {})), []
    else:
        backends = _backends(data.get("backends", {}), plugins, errors)
        layers = _layers(data.get("layers", []), plugins, errors)
    tiers = _tiers(data.get("tiers", {}), errors)
    tenants = _tenants(data.get("tenants", {}), errors)

    raw_ids = set(data.get("backends", {})) if isinstance(data.get("backends"), dict) else set()
    _cross_check(sections, backends, raw_ids, tiers, tenants, errors,
                 plugins_checked=plugins is not None)
    errors.raise_if_any()
    return Config(
        file=file,
        listen=sections["listen"],
        gateway=sections["gateway"],
        control=sections["control"],
        state=sections.get("state"),
        plugins=sections["plugins"],
        backends=backends,
        layers=layers,
        tiers=tiers,
        tenants=tenants,
        raw=data,
        lifecycle=sections["lifecycle"],
        audit=sections["audit"],
        limits=sections["limits"],
        core_only=plugins is None,
    )


def _file_error(file: str, message: str):
    from ogelkit.config.errors import ConfigError
    return ConfigError(file, "", message)


def _unknown_type(kind: str, path: str, type_name: Any, known: Mapping[str, type],
                  plugins: Plugins, errors: ErrorCollector) -> None:
    if not isinstance(type_name, str):
        errors.add(path, "wrong type", expected=f"the name of a {kind} type",
                   found=describe_value(type_name))
        return
    install = plugins.distribution_hint(type_name)
    if install:
        errors.add(path, f'{kind} type "{type_name}" is not installed', hint=f"Install it with: {install}")
        return
    first_party = [n for n, d in plugins.known_distributions.items() if (kind == "layer") ==
                   d.startswith("ogelkit-layer-")]
    hint = did_you_mean(type_name, [*known, *first_party])
    installed = ", ".join(sorted(known)) or "none"
    errors.add(path, f'unknown {kind} type "{type_name}"',
               hint=f"Installed {kind} types: {installed}." + (f" {hint}" if hint else ""))


def _backends(table: Any, plugins: Plugins, errors: ErrorCollector) -> dict[str, BackendSpec]:
    out: dict[str, BackendSpec] = {}
    if not isinstance(table, dict):
        errors.add("backends", "wrong type", expected="a table of [backends.<id>] tables",
                   found=describe_value(table))
        return out
    for bid, section in table.items():
        path = f"backends.{bid}"
        if not _ID.match(bid):
            errors.add(path, f'invalid backend id "{bid}"',
                       expected="lower-case letters, digits, '-' and '_', starting with a letter")
        if not isinstance(section, dict):
            errors.add(path, "wrong type", expected="a table", found=describe_value(section))
            continue
        if "type" not in section:
            errors.add(f"{path}.type", "missing required option",
                       expected=f"a backend type ({', '.join(sorted(plugins.backends)) or 'none installed'})")
            continue
        type_name = section["type"]
        cls = plugins.backends.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            _unknown_type("backend", f"{path}.type", type_name, plugins.backends, plugins, errors)
            continue
        options = structure(cls.Config, section, path, errors, ignore=("type",))
        if options is not None:
            out[bid] = BackendSpec(bid, type_name, cls, options)
    return out


def _backend_ids(table: Any) -> dict[str, BackendSpec]:
    """Backends without their plugins: id and type, options unchecked (core-only configs)."""
    if not isinstance(table, dict):
        return {}
    return {bid: BackendSpec(bid, str(section.get("type", "")), Backend, None)
            for bid, section in table.items() if isinstance(section, dict)}


def _layers(items: Any, plugins: Plugins, errors: ErrorCollector) -> list[LayerSpec]:
    out: list[LayerSpec] = []
    if not isinstance(items, list):
        errors.add("layers", "wrong type", expected="an array of [[layers]] tables",
                   found=describe_value(items))
        return out
    names: dict[str, int] = {}
    for i, section in enumerate(items):
        path = f"layers[{i}]"
        if not isinstance(section, dict):
            errors.add(path, "wrong type", expected="a table", found=describe_value(section))
            continue
        type_name = section.get("type")
        if type_name is None:
            errors.add(f"{path}.type", "missing required option",
                       expected=f"a layer type ({', '.join(sorted(plugins.layers)) or 'none installed'})")
            continue
        cls = plugins.layers.get(type_name) if isinstance(type_name, str) else None
        if cls is None:
            _unknown_type("layer", f"{path}.type", type_name, plugins.layers, plugins, errors)
            continue
        name = section.get("name", type_name)
        if not isinstance(name, str) or not _ID.match(name):
            errors.add(f"{path}.name", "invalid layer name",
                       expected="lower-case letters, digits, '-' and '_'", found=describe_value(name))
            continue
        if name in names:
            errors.add(f"{path}.name", f'layer name "{name}" is used twice (also layers[{names[name]}])',
                       hint='Give one of them a distinct name = "...".')
            continue
        names[name] = i
        options = structure(cls.Config, section, path, errors, ignore=("type", "name"))
        if options is not None:
            out.append(LayerSpec(name, type_name, cls, options))
    return out


def _tiers(table: Any, errors: ErrorCollector) -> TierTable:
    if not isinstance(table, dict):
        errors.add("tiers", "wrong type", expected="a table of [tiers.<name>] tables",
                   found=describe_value(table))
        return TierTable(DEFAULT_TIERS)
    tiers = dict(DEFAULT_TIERS)
    for name, section in table.items():
        path = f"tiers.{name}"
        if not _SLUG.match(name):
            errors.add(path, f'invalid tier name "{name}"', expected="lower-case letters, digits and '-'")
            continue
        cfg = structure(TierConfig, section, path, errors)
        if cfg is None:
            continue
        base_name = cfg.base or (name if name in DEFAULT_TIERS else "free")
        base = tiers.get(base_name) or DEFAULT_TIERS.get(base_name)
        if base is None:
            errors.add(f"{path}.base", f'unknown tier "{base_name}"', hint=did_you_mean(base_name, tiers))
            continue
        changes = {
            f.name: getattr(cfg, f.name)
            for f in attrs.fields(TierConfig)
            if f.name not in ("base", "rank", "price") and getattr(cfg, f.name) != _MISSING
        }
        rank = cfg.rank if cfg.rank is not None else (
            base.rank if name in DEFAULT_TIERS else max(t.rank for t in tiers.values()) + 1)
        price = base.price
        if cfg.price is not None:
            price = Price(**{
                f.name: getattr(cfg.price, f.name)
                if getattr(cfg.price, f.name) is not None else getattr(base.price, f.name)
                for f in attrs.fields(PriceConfig)
            })
        tiers[name] = attrs.evolve(base, name=name, rank=rank, price=price, **changes)
    return TierTable(tiers)


def _tenants(table: Any, errors: ErrorCollector) -> dict[str, TenantSeed]:
    out: dict[str, TenantSeed] = {}
    if not isinstance(table, dict):
        errors.add("tenants", "wrong type", expected="a table of [tenants.<slug>] tables",
                   found=describe_value(table))
        return out
    for slug, section in table.items():
        path = f"tenants.{slug}"
        if not _SLUG.match(slug):
            errors.add(path, f'invalid tenant slug "{slug}"',
                       expected="lower-case letters, digits and '-', starting with a letter")
            continue
        seed = structure(TenantSeed, section, path, errors)
        if seed is not None:
            out[slug] = seed
    return out


def _cross_check(sections: dict[str, Any], backends: dict[str, BackendSpec], raw_backend_ids: set[str],
                 tiers: TierTable, tenants: dict[str, TenantSeed], errors: ErrorCollector, *,
                 plugins_checked: bool = True) -> None:
    """References between tables; ``raw_backend_ids`` includes backends whose own options
    failed, so one mistake is not reported twice."""
    for slug, seed in tenants.items():
        if seed.tier not in tiers:
            errors.add(f"tenants.{slug}.tier", f'unknown tier "{seed.tier}"',
                       hint=(did_you_mean(seed.tier, tiers) or "") + f" Tiers: {', '.join(tiers)}.")
        for db_name, db in seed.databases.items():
            if db.backend not in raw_backend_ids:
                hint = did_you_mean(db.backend, raw_backend_ids)
                defined = ", ".join(sorted(raw_backend_ids)) or "none"
                errors.add(f"tenants.{slug}.databases.{db_name}.backend",
                           f'no backend named "{db.backend}"',
                           hint=(hint + " " if hint else "") + f"Defined backends: {defined}.")

    listen = sections.get("listen")
    if listen is not None and plugins_checked:
        protocols = {spec.cls.protocol for spec in backends.values()}
        for proto in ("postgres", "redis", "mongodb"):
            if getattr(listen, proto) is not None and proto not in protocols and backends:
                errors.add(f"listen.{proto}",
                           f"a {proto} port is set but no configured backend speaks {proto}")
        frontdoors: dict[str, type] = {}
        for spec in backends.values():
            fd = spec.cls.frontdoor  # deprecated pairing; registered doors are one per protocol
            if fd is None:
                continue
            other = frontdoors.setdefault(spec.cls.protocol, fd)
            if other is not fd:
                errors.add(f"backends.{spec.id}.type",
                           f'backends of protocol "{spec.cls.protocol}" use different front doors '
                           f"({other.__qualname__} and {fd.__qualname__})")

    control = sections.get("control")
    if control is not None and not (control.url.startswith("sqlite:") or
                                    control.url.startswith(("postgresql://", "postgres://"))):
        errors.add("control.url", "unsupported control plane URL",
                   expected='"sqlite:///path" or "postgresql://..."',
                   found=describe_value(control.url))
    if control is not None:
        try:
            check_key(control.secret_key)
        except SecretKeyError as exc:
            errors.add("control.secret_key", f"not a valid key: {exc}",
                       expected="32 url-safe base64 bytes (generate one with `ogelkit secret-key`)")
    state = sections.get("state")
    if state is not None and not state.url.startswith(("redis://", "rediss://", "unix://")):
        errors.add("state.url", "unsupported state URL", expected='"redis://host:port/db"',
                   found=describe_value(state.url))
    gateway = sections.get("gateway")
    if gateway is not None and gateway.processes > 1:
        _check_workers(gateway, state, control, errors)


def _check_workers(gateway: GatewayConfig, state: StateConfig | None,
                   control: ControlConfig | None, errors: ErrorCollector) -> None:
    """``[gateway] workers > 1``: what the worker processes must share lives outside them."""
    count = (f'workers = "auto" ({gateway.processes} CPUs)' if gateway.workers == "auto"
             else f"the integer {gateway.workers}")
    if state is None:
        errors.add("gateway.workers", "workers > 1 needs [state] so that rate limits, "
                   "connection limits and cancel keys are shared",
                   expected='a [state] table with url = "redis://host:port/db", or workers = 1',
                   found=f"{count} and no [state] table")
    if control is not None and control.url.startswith("sqlite:"):
        rest = control.url.removeprefix("sqlite://")
        rest = rest[1:] if rest.startswith("/") else rest
        if rest in ("", ":memory:"):
            errors.add("gateway.workers", "workers > 1 needs a control plane every worker "
                       "shares; an in-memory SQLite database is private to each process",
                       expected='[control] url = "sqlite:///path/to/file.db" or '
                                '"postgresql://...", or workers = 1',
                       found=f"{count} and {describe_value(control.url)}")
