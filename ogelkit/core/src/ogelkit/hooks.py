"""The one way the core (and plugins) fire hooks, with one error policy.

Every hook is a *registration or event* hook, fired a handful of times per process. An
exception in one implementation is logged with the plugin's name and the hook's, and never
stops the other implementations or the caller: a third-party exporter's bug must not lose
the one-time password of a tenant that was created, stop metering, or block a shutdown.
(Registration hooks, ``ogelkit_register_*``, are called by ``ogelkit.plugins.load_plugins``,
which reports a failure as a plugin error instead.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click
    import pluggy

    from ogelkit.context import GatewayContext
    from ogelkit.control.records import DatabaseRecord, TenantRecord

log = logging.getLogger("ogelkit.hooks")


class Hooks:
    """Typed facade over the plugin manager's hooks (``ctx.hooks``, ``plugins.hooks``)."""

    def __init__(self, pm: pluggy.PluginManager):
        self._pm = pm

    def fire(self, name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of hook ``name`` (also one a plugin added with
        ``ogelkit_add_hookspecs``) one by one; return the non-None results. A failing
        implementation is logged and skipped."""
        caller = getattr(self._pm.hook, name, None)
        if caller is None:
            return []
        results = []
        for impl in reversed(caller.get_hookimpls()):
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception:
                log.exception("plugin hook failed", extra={"hook": name,
                                                            "plugin": impl.plugin_name})
                continue
            if result is not None:
                results.append(result)
        return results

    def startup(self, context: GatewayContext) -> None:
        self.fire("ogelkit_startup", context=context)

    def shutdown(self, context: GatewayContext) -> None:
        self.fire("ogelkit_shutdown", context=context)

    def tenant_created(self, tenant: TenantRecord) -> None:
        self.fire("ogelkit_tenant_created", tenant=tenant)

    def database_created(self, tenant: TenantRecord, database: DatabaseRecord) -> None:
        self.fire("ogelkit_database_created", tenant=tenant, database=database)

    def http_routes(self, context: GatewayContext) -> list[Any]:
        """Every route the plugins contribute (each implementation returns a list)."""
        return [route for batch in self.fire("ogelkit_http_routes", context=context)
                for route in batch]

    def add_commands(self, cli: click.Group) -> None:
        self.fire("ogelkit_add_commands", cli=cli)


__all__ = ["Hooks"]
