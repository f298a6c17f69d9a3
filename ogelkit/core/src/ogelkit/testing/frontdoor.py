"""``FrontDoorContract``: the rules every front door keeps, checked with its real client.

Subclass it in a door's tests and supply the client side with the protocol's real client
library (sync code: the gateway runs in a thread)::

    class TestRedisDoorContract(FrontDoorContract):
        backend = 'type = "redis"\\nurl = "redis://127.0.0.1:56379/0"'
        protocol = "redis"
        shutdown_marker = "shutting down"

        @staticmethod
        def encode_reject(reject):               # the door's Reason -> protocol error table
            return ogelkit_redis.errors.reject_error(reject)

        def attempt(self, port, user, password, database):
            # log in and run one trivial operation; "ok" or the error the client saw
            ...

        def hold_idle(self, port, user, password, database):
            # a logged-in idle connection; returns a function that, called after the
            # gateway began draining, returns what the client was told (error text)
            ...

Checks: unknown tenant and wrong password give identical answers; a suspended tenant and
an unreachable control plane are refused with their own errors; every ``Reason`` maps to a
protocol error carrying the message; a drain tells idle clients the protocol's shutdown
message; refusals reach the log phase (usage and intelligence see ``session.rejection``);
``ogelkit_connections_total{outcome="accepted"}`` counts one per admitted connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest

import ogelkit
from ogelkit.model import Reason, Reject, Session
from ogelkit.plugins import load_plugins
from ogelkit.testing.gateway import RunningGateway, gateway_thread, metric_value, test_secret_key

PASSWORD = "contract-password-1"
TENANT = "contract"
SUSPENDED = "contract-suspended"


class _Recorder(ogelkit.Layer):
    """Keeps every session the log phase saw, so the contract can check what reached it."""

    type_name = "contract_recorder"
    Config = ogelkit.NoOptions
    seen: ClassVar[list[Session]] = []
    lock = threading.Lock()

    def on_disconnect(self, session: Session) -> None:
        with self.lock:
            self.seen.append(session)


class _RecorderPlugin:
    @staticmethod
    @ogelkit.hookimpl
    def ogelkit_register_layers(register: Any) -> None:
        register.layer(_Recorder)


class FrontDoorContract:
    """Subclass per front door; see the module docstring for what to supply."""

    #: TOML body of the ``[backends.contract]`` table for this door's backend.
    backend: ClassVar[str] = ""
    #: The door's protocol (``[listen]`` key and metrics label).
    protocol: ClassVar[str] = ""
    #: Name of the seeded tenant database the client opens.
    database: ClassVar[str] = "main"
    #: Text that the client must see when the gateway drains (e.g. ``57P01``).
    shutdown_marker: ClassVar[str] = ""
    #: Extra TOML (options of the layers, ``[gateway]`` ...), appended to the config.
    extra_config: ClassVar[str] = ""
    #: ``(name, module)`` plugins to register besides the installed entry points.
    extra_plugins: ClassVar[tuple[tuple[str, object], ...]] = ()
    #: Load the installed ``ogelkit`` entry points (False: only ``extra_plugins``).
    entry_points: ClassVar[bool] = True

    @staticmethod
    def encode_reject(reject: Reject) -> bytes | str:
        raise NotImplementedError

    def attempt(self, port: int, user: str, password: str, database: str) -> str:
        raise NotImplementedError

    def hold_idle(self, port: int, user: str, password: str, database: str) -> Callable[[], str]:
        raise NotImplementedError

    # -- the gateway under test --------------------------------------------------------------
    def config_text(self) -> str:
        return f"""
[listen]
host = "127.0.0.1"
http = 0
{self._listen_port()}

[gateway]
drain_timeout = "5s"

[control]
url = "sqlite:///:memory:"
secret_key = "{test_secret_key()}"

[backends.contract]
{self.backend}

[[layers]]
type = "contract_recorder"

[tenants.{TENANT}]
tier = "pro"
password = "{PASSWORD}"

[tenants.{TENANT}.databases.{self.database}]
backend = "contract"

[tenants.{SUSPENDED}]
tier = "pro"
password = "{PASSWORD}"

[tenants.{SUSPENDED}.databases.{self.database}]
backend = "contract"
{self.extra_config}
"""

    def _listen_port(self) -> str:
        if self.protocol in ("postgres", "redis", "mongodb"):
            return f"{self.protocol} = 0"
        return f"ports = {{ {self.protocol} = 0 }}"

    @pytest.fixture
    def gw(self) -> Iterator[RunningGateway]:
        with _Recorder.lock:
            _Recorder.seen.clear()
        plugins = load_plugins(entry_points=self.entry_points,
                               extra=[*self.extra_plugins, ("contract_recorder", _RecorderPlugin)])
        with gateway_thread(self.config_text(), plugins=plugins) as gw:
            yield gw

    def _port(self, gw: RunningGateway) -> int:
        return gw.port(self.protocol)

    def _on_loop(self, gw: RunningGateway, coro: Any) -> Any:
        import asyncio

        assert gw.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, gw.loop).result(10)

    def _recorded(self, tenant: str | None, timeout: float = 5.0) -> list[Session]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with _Recorder.lock:
                found = [s for s in _Recorder.seen if s.protocol == self.protocol and (
                    s.tenant_slug == tenant or (s.user or "").split(".")[0] == tenant)]
            if found:
                return found
            time.sleep(0.05)
        return []

    # -- the rules ---------------------------------------------------------------------------
    def test_every_reason_maps_to_a_protocol_error(self) -> None:
        for reason in Reason:
            rej = Reject(reason, f"contract message for {reason.value}", detail="d", hint="h")
            encoded = self.encode_reject(rej)
            text = encoded.decode(errors="replace") if isinstance(encoded, bytes) else encoded
            assert text, f"Reason.{reason.name} encodes to nothing"
            assert rej.message in text, f"Reason.{reason.name}: the message is lost: {text!r}"

    def test_good_login_is_accepted_and_counted_once(self, gw: RunningGateway) -> None:
        before = self._accepted(gw)
        assert self.attempt(self._port(gw), TENANT, PASSWORD, self.database) == "ok"
        assert self._wait_metric(gw, before + 1) == before + 1, \
            "accepted connections must be counted exactly once per admitted connection"

    def test_unknown_tenant_and_wrong_password_are_indistinguishable(
            self, gw: RunningGateway) -> None:
        port = self._port(gw)
        wrong = self.attempt(port, TENANT, "not-the-password", self.database)
        unknown = self.attempt(port, "nosuchtenant", "not-the-password", self.database)
        assert wrong != "ok"
        assert wrong.replace(TENANT, "<user>") == unknown.replace("nosuchtenant", "<user>"), \
            f"an unknown tenant must look like a wrong password: {wrong!r} vs {unknown!r}"
        sessions = self._recorded(TENANT)
        assert any(s.rejection is not None and s.rejection.reason == Reason.AUTH
                   for s in sessions), "the refused login must reach the log phase"

    def test_suspended_tenant_is_refused(self, gw: RunningGateway) -> None:
        store = gw.context.store
        self._on_loop(gw, store.update_tenant(SUSPENDED, status="suspended"))
        gw.context.directory.invalidate(SUSPENDED)
        answer = self.attempt(self._port(gw), SUSPENDED, PASSWORD, self.database)
        assert answer != "ok" and "suspended" in answer, answer
        assert any(s.rejection is not None and s.rejection.reason == Reason.SUSPENDED
                   for s in self._recorded(SUSPENDED))

    def test_control_plane_down_is_a_clean_refusal(self, gw: RunningGateway) -> None:
        store = gw.context.store
        original = store.get_tenant

        async def down(slug: str) -> Any:
            raise ConnectionError("control plane down (contract fault injection)")

        gw.context.directory.invalidate(TENANT)
        store.get_tenant = down
        try:
            answer = self.attempt(self._port(gw), TENANT, PASSWORD, self.database)
        finally:
            store.get_tenant = original
        assert answer != "ok" and "control plane" in answer, answer
        assert any(s.rejection is not None and s.rejection.reason == Reason.UNAVAILABLE
                   for s in self._recorded(TENANT))
        assert self.attempt(self._port(gw), TENANT, PASSWORD, self.database) == "ok", \
            "the door must recover once the control plane is back"

    def test_drain_sends_the_shutdown_message(self, gw: RunningGateway) -> None:
        told = self.hold_idle(self._port(gw), TENANT, PASSWORD, self.database)
        assert gw.loop is not None
        gw.loop.call_soon_threadsafe(gw.gateway.request_stop)
        answer = told()
        assert self.shutdown_marker in answer, \
            f"an idle client must be told {self.shutdown_marker!r} on drain, got {answer!r}"

    # -- helpers -----------------------------------------------------------------------------
    def _accepted(self, gw: RunningGateway) -> float:
        try:
            return metric_value(gw.url("/metrics"), "ogelkit_connections_total",
                                protocol=self.protocol, outcome="accepted")
        except AssertionError:
            return 0.0

    def _wait_metric(self, gw: RunningGateway, want: float, timeout: float = 3.0) -> float:
        deadline = time.monotonic() + timeout
        value = self._accepted(gw)
        while value < want and time.monotonic() < deadline:
            time.sleep(0.05)
            value = self._accepted(gw)
        time.sleep(0.2)  # a second count would show up now
        return self._accepted(gw)


__all__ = ["PASSWORD", "SUSPENDED", "TENANT", "FrontDoorContract"]
