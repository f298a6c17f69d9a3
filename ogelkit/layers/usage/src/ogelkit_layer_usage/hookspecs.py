"""Hooks the usage layer fires (declared through ``ogelkit_add_hookspecs``: only this plugin
fires them, so they live with it, not in the core)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ogelkit import GatewayContext

hookspec = pluggy.HookspecMarker("ogelkit")


@hookspec
def ogelkit_usage_flushed(context: GatewayContext, events: list[dict[str, Any]]) -> None:
    """A batch of usage events was stored durably in the control plane.

    Called by the usage layer after each successful batch write (every few seconds, never per
    operation), in the event loop thread. Use it to export usage elsewhere (a billing system,
    a message queue); do not block: hand the list to a task of your own. An exception is
    logged and skipped (``ogelkit.hooks``): metering goes on.

    :param context: the gateway's context.
    :param events: the stored events as dicts (``UsageEvent.as_dict()``): ``id`` (stable;
        a batch can be delivered again after a retry, dedupe on it), ``ts``, ``tenant``,
        ``database``, ``kind`` (operation, connection or storage), ``gateway``, and the
        amounts of ``ogelkit.USAGE_FIELDS`` (``operations``, ``duration``, ``bytes_in``,
        ``bytes_out``, ``rows``, ``vcpu_seconds``, ...).
    :return: nothing; the return value is ignored.

    .. versionadded:: 0.1 (declared by ogelkit-layer-usage since 0.2)
    """
