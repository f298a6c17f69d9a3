"""Every hook an ogelkit plugin can implement (pluggy project name ``ogelkit``).

These are *registration and lifecycle* hooks, called a handful of times per process. Nothing
here is called per request: the request path runs the compiled layer chain (``ogelkit.chain``)
and the front doors directly, because a pluggy call costs microseconds and pluggy has no
async support.

Implement a hook with ``@ogelkit.hookimpl`` in the module your entry point names::

    [project.entry-points.ogelkit]
    mylayer = "ogelkit_mylayer.plugin"

Plugins grow by accepting *fewer* arguments than a spec offers (pluggy passes only the
arguments an implementation names), so adding an argument to a spec is not a breaking change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from ogelkit.context import GatewayContext
    from ogelkit.control.records import DatabaseRecord, TenantRecord
    from ogelkit.plugins import Registrar

hookspec = pluggy.HookspecMarker("ogelkit")

# -- registration ------------------------------------------------------------------------------


@hookspec
def ogelkit_register_backends(register: Registrar) -> None:
    """Register the backend classes (database kinds) this plugin provides.

    Called once per plugin manager, right after every plugin is loaded and before any config
    is validated, so the config loader knows every ``type`` a ``[backends.<id>]`` table may name.

    :param register: call ``register.backend(cls)`` with a ``ogelkit.Backend`` subclass. It
        checks that ``cls.type_name`` is set and not registered by another plugin (the error
        names both distributions).
    :return: nothing; the return value is ignored.

    .. versionadded:: 0.1

    Example::

        @ogelkit.hookimpl
        def ogelkit_register_backends(register):
            register.backend(PostgresBackend)
    """


@hookspec
def ogelkit_register_layers(register: Registrar) -> None:
    """Register the layer classes this plugin provides.

    Called once per plugin manager, right after ``ogelkit_register_backends``. The order of
    layers in a gateway comes from the config's ``[[layers]]`` array, never from plugin order.

    :param register: call ``register.layer(cls)`` with a ``ogelkit.Layer`` subclass; same
        checks as for backends.
    :return: nothing; the return value is ignored.

    .. versionadded:: 0.1

    Example::

        @ogelkit.hookimpl
        def ogelkit_register_layers(register):
            register.layer(AuditLayer)
    """


@hookspec
def ogelkit_add_commands(cli: click.Group) -> None:
    """Add subcommands to the ``ogelkit`` command line.

    Called once when the CLI starts, after plugins are loaded and before arguments are parsed.

    :param cli: the top-level ``click.Group``; call ``cli.add_command(...)``.
    :return: nothing; the return value is ignored.

    .. versionadded:: 0.1
    """


# -- lifecycle ---------------------------------------------------------------------------------


@hookspec
def ogelkit_startup(context: GatewayContext) -> None:
    """The gateway is up: backends and layers are open and every listener is bound.

    Called once per ``ogelkit run``, from the event loop thread, just before "ready" is
    logged. Keep it short and non-blocking; start long work as tasks of your own layer.

    :param context: the running gateway's context (config, store, backends, metrics).
    :return: nothing; the return value is ignored.

    .. versionadded:: 0.1
    """


@hookspec
def ogelkit_admin_endpoints(context: GatewayContext) -> list[Any]:
    """Endpoints to add to the admin API (``/admin/...``).

    Called once per ``ogelkit run``, before the HTTP port accepts. Each is an
    ``ogelkit.admin.Endpoint``: it gets the admin API's bearer-token check (``access``:
    ``"operator"``, ``"tenant"`` for the operator and the tenant named by ``{slug}`` in the
    path, ``"any"`` signed-in principal, or ``"public"``), request validation against its
    ``request`` schema, RFC 9457 problem details for errors (raise
    ``ogelkit.admin.Problem``), and a place in ``/admin/openapi.json``. Paths start with
    ``/admin/``. Handlers run on the event loop: never block in them.

    :param context: the gateway's context.
    :return: a list of ``ogelkit.admin.Endpoint``, or ``None``.

    .. versionadded:: 0.3

    Example::

        from ogelkit.admin import Endpoint

        @ogelkit.hookimpl
        def ogelkit_admin_endpoints(context):
            async def quota(call):
                return {"tenant": call.slug, "left": 42}
            return [Endpoint("GET", "/admin/tenants/{slug}/quota", quota,
                             "Quota left", access="tenant")]
    """


@hookspec
def ogelkit_http_routes(context: GatewayContext) -> list[Any]:
    """Routes and WebSocket endpoints to mount on the gateway's HTTP port.

    Called once per ``ogelkit run``, after backends, layers and front doors are open and
    before the HTTP port accepts. The HTTP side is a Starlette app served by uvicorn in the
    gateway's event loop; the routes of every implementation are mounted after the core's
    ``/healthz``, ``/readyz``, ``/metrics`` and ``/admin/...`` (which cannot be shadowed),
    in plugin order. Handlers run on the event loop: never block in them.

    :param context: the gateway's context (config, backends, chain, metrics).
    :return: a list of ``starlette.routing.BaseRoute`` (``Route``, ``WebSocketRoute``,
        ``Mount``, ``Host``), or ``None``.

    .. versionadded:: 0.2

    Example::

        from starlette.routing import Route
        from starlette.responses import PlainTextResponse

        @ogelkit.hookimpl
        def ogelkit_http_routes(context):
            async def hello(request):
                return PlainTextResponse("hello")
            return [Route("/hello", hello)]
    """


@hookspec
def ogelkit_shutdown(context: GatewayContext) -> None:
    """The gateway has drained and closed its layers and backends; the store is still open.

    Called once per ``ogelkit run`` during graceful shutdown (SIGTERM/SIGINT), after usage
    records were flushed. Exceptions are logged and do not stop the shutdown.

    :param context: the gateway's context.
    :return: nothing; the return value is ignored.

    .. versionadded:: 0.1
    """


@hookspec
def ogelkit_add_hookspecs(pluginmanager: pluggy.PluginManager) -> None:
    """Declare hooks that this plugin fires (``pluginmanager.add_hookspecs(module)``).

    Called once per plugin manager, after every plugin is registered and before unknown
    hook implementations are reported, so other plugins may implement the new hooks. Fire
    them through ``context.hooks.fire(name, **kwargs)`` (one error policy: a failing
    implementation is logged and skipped). The usage layer declares
    ``ogelkit_usage_flushed`` this way.

    :param pluginmanager: the ``pluggy.PluginManager`` being built.
    :return: nothing; the return value is ignored.

    .. versionadded:: 0.2
    """


@hookspec
def ogelkit_tenant_created(tenant: TenantRecord) -> None:
    """A tenant was created through the CLI or the admin API.

    Called once, after the tenant row is committed. Exceptions are reported and do not undo
    the creation.

    :param tenant: the new tenant (``slug``, ``tier``, ``status``).
    :return: nothing; the return value is ignored.

    .. versionadded:: 0.1
    """


@hookspec
def ogelkit_database_created(tenant: TenantRecord, database: DatabaseRecord) -> None:
    """A tenant database was provisioned by its backend and recorded.

    Called once, after the database row is committed.

    :param tenant: the owning tenant.
    :param database: the new database (``name``, ``kind``, ``backend``); its ``upstream``
        details are decrypted and must not be logged.
    :return: nothing; the return value is ignored.

    .. versionadded:: 0.1
    """
