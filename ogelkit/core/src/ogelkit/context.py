"""``GatewayContext``: what a running gateway hands its backends, layers and front doors."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ogelkit.audit import AuditLog
from ogelkit.limits import OutputGuard
from ogelkit.livestats import LiveStats

if TYPE_CHECKING:
    from ogelkit.backend import Backend
    from ogelkit.chain import Chain
    from ogelkit.config import Config
    from ogelkit.control.store import Store
    from ogelkit.directory import Directory, SessionRegistry
    from ogelkit.hooks import Hooks
    from ogelkit.layer import Layer
    from ogelkit.lifecycle import Lifecycle
    from ogelkit.metrics import Metrics
    from ogelkit.plugins import Plugins
    from ogelkit.tiers import TierTable


class GatewayContext:
    """Shared services of one gateway process. Filled in by the runtime as it starts:
    ``backends`` and ``layers`` exist before ``open``; ``chain`` once every layer is open."""

    def __init__(self, config: Config, plugins: Plugins, store: Store, metrics: Metrics,
                 directory: Directory):
        self.config = config
        self.plugins = plugins
        self.store = store
        self.metrics = metrics
        self.directory = directory
        self.tiers: TierTable = config.tiers
        self.backends: dict[str, Backend] = {}
        self.layers: list[Layer] = []
        self.chain: Chain | None = None
        #: The database lifecycle (sleep/wake); set by the runtime, None in CLI tools.
        self.lifecycle: Lifecycle | None = None
        self.gateway_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.log = logging.getLogger("ogelkit")
        self.draining = False
        self._state: Any = None
        self.addresses: dict[str, list[tuple[str, int]]] = {}
        a = config.audit
        #: Refusals, failed logins, tier changes, sleep/wake (``ogelkit.audit``).
        self.audit = AuditLog(keep=a.keep, log_rate=a.log_rate, log_burst=a.log_burst,
                              on_suppressed=metrics.audit_suppressed.inc)
        directory.audit = self.audit
        #: Memory ceilings on replies clients do not read (``ogelkit.limits``).
        self.output_guard = OutputGuard.from_config(config.limits)
        #: Per-tenant live counters for Studio (``ogelkit.livestats``).
        self.live = LiveStats()
        #: The admin API's endpoints (core and plugins'), for its OpenAPI document.
        self.admin_endpoints: list[Any] = []
        #: Reload the config file (set by the runtime; None in CLI tools).
        self.reload: Callable[[], Awaitable[dict[str, Any]]] | None = None

    @property
    def sessions(self) -> SessionRegistry:
        return self.directory.sessions

    @property
    def hook(self):
        """The raw pluggy relay; fire hooks through ``hooks`` instead."""
        return self.plugins.hook

    @property
    def hooks(self) -> Hooks:
        """The typed hook facade: one error policy for every hook (``ogelkit.hooks``)."""
        return self.plugins.hooks

    @property
    def state_url(self) -> str | None:
        return self.config.state.url if self.config.state is not None else None

    def state(self):
        """The shared Redis client (``[state] url``), created on first use; None without it.

        Clients use a short socket timeout so a dead Redis turns into an exception that the
        layer's fail-open/fail-closed policy handles, not a hang.
        """
        if self.state_url is None:
            return None
        if self._state is None:
            import redis.asyncio as aioredis
            self._state = aioredis.from_url(self.state_url, socket_timeout=1.0,
                                            socket_connect_timeout=1.0,
                                            health_check_interval=0, max_connections=64)
        return self._state

    async def close_state(self) -> None:
        if self._state is not None:
            client, self._state = self._state, None
            await client.aclose()

    def backend_for(self, backend_id: str) -> Backend | None:
        return self.backends.get(backend_id)
