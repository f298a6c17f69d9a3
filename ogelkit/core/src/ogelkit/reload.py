"""Config reload (SIGHUP, ``POST /admin/reload``): apply what can change live, report the rest.

The file is read and validated completely first; a config with any problem is reported
(every problem, as ``ogelkit check`` prints them) and the running one is kept. Otherwise:

- **tiers** take effect at once: cached tenants and every live session get their tier's new
  values, and the layers hear ``on_tier_change`` (as for a tier change of the tenant);
- **layer options**: a layer that implements ``reconfigure(options)`` (all seven O7s layers)
  gets its new options; one that does not, or raises ``ValueError`` for an option it cannot
  change live, keeps its old ones and the change is reported as needing a restart;
- **new backends** are opened and join the running front door of their protocol; their
  tenants and databases from the config are seeded;
- **new tenants** (``[tenants.*]``) are created.

Fixed for the life of the process (reported, not applied): ``[listen]``, ``[control]``,
``[state]``, ``[gateway]``, a backend's changed options, removed backends, added, removed or
reordered layers, and a backend of a protocol no running door serves. No client connection
is closed by a reload.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs

from ogelkit.config import ConfigErrors, load_config
from ogelkit.layer import Layer

if TYPE_CHECKING:
    from ogelkit.runtime import Gateway

log = logging.getLogger("ogelkit.reload")

#: Top-level tables that cannot change without a restart.
FIXED = ("listen", "control", "state", "gateway", "lifecycle", "audit", "plugins")


async def reload_config(gateway: Gateway) -> dict[str, Any]:
    """Reload ``gateway``'s config file; returns ``{reloaded, changed, needs_restart,
    problems}`` (also logged)."""
    old = gateway.config
    ctx = gateway.context
    assert ctx is not None, "reload before the gateway started"
    try:
        new = load_config(old.file, gateway.plugins, env=gateway.env)
    except (ConfigErrors, OSError) as exc:
        problems = exc.messages if isinstance(exc, ConfigErrors) else [str(exc)]
        log.error("config reload failed; the running config is kept",
                  extra={"file": old.file, "problems": problems})
        return {"reloaded": False, "changed": [], "needs_restart": [], "problems": problems}

    changed: list[str] = []
    restart = [f"[{name}]" for name in FIXED if getattr(old, name) != getattr(new, name)]

    if new.tiers != old.tiers:
        ctx.tiers = new.tiers
        ctx.directory.retier(new.tiers)
        changed.append("tiers")

    applied: set[str] = set()
    for lspec in new.layers:
        layer = next((la for la in ctx.layers if la.name == lspec.name), None)
        before = next((s for s in old.layers if s.name == lspec.name), None)
        if layer is None or before is None or before.type != lspec.type \
                or before.options == lspec.options:
            continue
        if type(layer).reconfigure is Layer.reconfigure:
            restart.append(f"layers.{lspec.name} (its options: this layer cannot change "
                           "them live)")
            continue
        try:
            layer.reconfigure(lspec.options)
        except Exception as exc:  # the layer keeps its old options
            if isinstance(exc, ValueError):  # the layer's own "needs a restart"
                log.warning("layer %s cannot take its new options live: %s", lspec.name, exc)
            else:
                log.exception("layer %s could not take its new options", lspec.name)
            restart.append(f"layers.{lspec.name} (reconfigure failed: {exc})")
            continue
        applied.add(lspec.name)
        changed.append(f"layers.{lspec.name}")
    if [s.name for s in new.layers] != [s.name for s in old.layers]:
        restart.append("[[layers]] (added, removed or reordered)")

    kept_backends = dict(old.backends)
    for bid, spec in new.backends.items():
        before_spec = old.backends.get(bid)
        if before_spec is None:
            problem = await gateway.add_backend(spec)
            if problem:
                restart.append(f"backends.{bid} ({problem})")
            else:
                kept_backends[bid] = spec
                changed.append(f"backends.{bid} (new)")
        elif before_spec.type != spec.type or before_spec.options != spec.options:
            restart.append(f"backends.{bid} (its options)")
    for bid in old.backends:
        if bid not in new.backends:
            restart.append(f"backends.{bid} (removed: still served until a restart)")

    # The running config: what took effect; the fixed tables and unapplied changes stay.
    layers = [next(s for s in (new.layers if la.name in applied else old.layers)
                   if s.name == la.name) for la in ctx.layers]
    running = attrs.evolve(new, **{name: getattr(old, name) for name in FIXED},
                           backends=kept_backends, layers=layers)
    gateway.config = ctx.config = running
    if any(seed != old.tenants.get(slug) for slug, seed in new.tenants.items()):
        await gateway.seed()
        changed.append("tenants")
    result = {"reloaded": True, "changed": changed, "needs_restart": restart, "problems": []}
    log.info("config reloaded", extra={"file": old.file, "changed": changed,
                                       "needs_restart": restart})
    return result


__all__ = ["FIXED", "reload_config"]
