"""Contract suites every backend and every layer plugin runs against itself.

Subclass in your plugin's tests::

    from ogelkit.testing.contracts import LayerContract

    class TestMyLayerContract(LayerContract):
        layer_class = MyLayer
        options = {"mode": "enforce"}      # a valid [[layers]] table, minus type/name

        async def provoke_refusal(self, drive):   # how the layer says no (if it ever does)
            session = await drive.connect(tier="free")
            await drive.operation(session, name="DROP")

    class TestMyBackendContract(BackendContract):
        backend_class = MyBackend
        options = {"dsn": "..."}           # a valid [backends.<id>] table, minus type

The suites check what the core relies on: registration metadata, strict config models,
lifecycle, and that the log phases tolerate every outcome (rejected operations, refused
connections), because the core calls them for every layer whatever happened before.

``LayerContract`` drives the layer the way a front door does (``LayerDrive``), on sessions
of every tier of the context's tier table (free, starter, pro and enterprise by default);
drives it to its own refusal through ``provoke_refusal``; requires every refusal to be a
``Reject`` whose reason is a ``Reason`` member; fails a layer whose ``__init__`` does
network I/O or starts tasks; and requires ``describe()`` to be plain JSON data.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import attrs
import pytest

from ogelkit.backend import Backend, FrontDoor
from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import options_table, structure
from ogelkit.context import GatewayContext
from ogelkit.control.records import TenantRecord
from ogelkit.layer import Layer
from ogelkit.model import Operation, Reason, Reject, Session
from ogelkit.testing import test_context

__all__ = ["BackendContract", "LayerContract", "LayerDrive", "check_describe"]

pytestmark = pytest.mark.anyio


def _config(cls: type, options: dict[str, Any]) -> Any:
    errors = ErrorCollector("contract")
    value = structure(cls, options, "options", errors)
    assert not errors.errors, [str(e) for e in errors.errors]
    return value


class _ConfigChecks:
    config_class: ClassVar[type]
    options: ClassVar[dict[str, Any]] = {}

    def test_config_is_attrs_and_documented(self):
        assert attrs.has(self.config_class), "Config must be an attrs class"
        for name, _typ, _default, doc in options_table(self.config_class):
            assert doc, f"option {name!r} has no doc (use ogelkit.option(..., doc=...))"

    def test_config_rejects_unknown_keys(self):
        errors = ErrorCollector("contract")
        structure(self.config_class, {**self.options, "surely_not_an_option": 1}, "x", errors)
        assert any("surely_not_an_option" in str(e) for e in errors.errors)

    def test_config_accepts_example_options(self):
        _config(self.config_class, self.options)


# -- the layer contract ------------------------------------------------------------------------

#: Module functions and socket methods that mean network I/O (DNS included).
_SOCKET_CALLS: tuple[tuple[Any, str], ...] = (
    (socket, "getaddrinfo"), (socket, "gethostbyname"), (socket, "create_connection"),
    (socket.socket, "connect"), (socket.socket, "connect_ex"),
)
#: Event-loop methods that mean network I/O (patched on the running loop only).
_LOOP_CALLS = ("create_connection", "create_unix_connection", "create_datagram_endpoint",
               "getaddrinfo", "getnameinfo", "sock_connect")


@contextmanager
def _no_network(what: str) -> Iterator[list[str]]:
    """While active, network calls made from this thread (or on the running event loop)
    fail with ``OSError`` and are recorded in the yielded list, so a layer that swallows
    the error is still caught. Other threads (a gateway thread of another test) pass."""
    calls: list[str] = []
    me = threading.get_ident()
    undo: list[Callable[[], None]] = []

    def guarded(label: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def guard(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != me:
                return original(*args, **kwargs)
            calls.append(label)
            raise OSError(f"contract: {what} must not do network I/O ({label})")
        return guard

    def patch(owner: Any, name: str, label: str) -> None:
        had = name in vars(owner)
        saved = vars(owner).get(name)
        setattr(owner, name, guarded(label, getattr(owner, name)))
        undo.append(lambda: setattr(owner, name, saved) if had else delattr(owner, name))

    for owner, name in _SOCKET_CALLS:
        patch(owner, name, f"{getattr(owner, '__name__', owner)}.{name}")
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        for name in _LOOP_CALLS:
            patch(loop, name, f"loop.{name}")
    try:
        yield calls
    finally:
        for restore in reversed(undo):
            restore()


def _tasks() -> set[asyncio.Task[Any]]:
    try:
        return asyncio.all_tasks()
    except RuntimeError:  # no running loop: a layer built from sync code starts no task
        return set()


def _where(session: Session) -> str:
    tier = session.tier.name if session.tier is not None else None
    if session.tenant is None:
        return f"unknown tenant {session.user!r}"
    return f"tenant {session.tenant_slug!r} on tier {tier}"


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples become lists), to compare with a round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _json_problem(value: Any, path: str) -> str | None:
    """Where ``value`` is not plain JSON data (what ``json.dumps`` would reject or change)."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r} (not JSON)"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has the key {key!r} ({type(key).__name__}; JSON keys are strings)"
            problem = _json_problem(item, f"{path}[{key!r}]")
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{i}]")
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__name__} ({value!r:.60})"


def check_describe(layer: Layer, when: str) -> dict[str, Any]:
    """``layer.describe()`` must be a dict of plain JSON data: the admin API serves it."""
    try:
        data = layer.describe()
    except Exception as exc:
        raise AssertionError(f"{layer.type_name}.describe() raised {exc!r} {when}") from exc
    assert isinstance(data, dict), (
        f"{layer.type_name}.describe() returned a {type(data).__name__} {when}, not a dict")
    problem = _json_problem(data, "describe()")
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problem = problem or str(exc)
    else:
        if problem is None and json.loads(text) != _plain(data):
            problem = "describe() does not survive a JSON round trip"
    assert problem is None, (
        f"{layer.type_name}: {problem} {when}: describe() must return plain JSON data "
        "(dict with str keys, list, str, int, finite float, bool, None); the admin API "
        "serves it as JSON")
    reserved = {"name", "type"} & data.keys()
    assert not reserved, (
        f"{layer.type_name}.describe() uses the key(s) {sorted(reserved)} {when}: the admin "
        "API puts the layer's own name and type there")
    return data


class LayerDrive:
    """Drives one layer the way a front door drives the chain, and checks what it does.

    Every access phase (``on_auth``, ``on_connect``, ``on_operation`` and the awaitable it
    may return) may only admit or raise a ``Reject`` whose reason is a ``Reason`` member;
    anything else fails the test with the phase and the session's tier in the message. The
    log phases (``on_complete``, ``on_disconnect``, ``on_tier_change``) must not raise at
    all. The layer's own refusals are collected in ``refusals``.

    ``provoke_refusal(drive)`` of a ``LayerContract`` receives one of these.
    """

    def __init__(self, ctx: GatewayContext, layer: Layer,
                 backend: Backend | None = None) -> None:
        self.ctx = ctx
        self.layer = layer
        self.backend = backend
        #: Every ``Reject`` the layer raised (or handed to ``op.cancel``), checked.
        self.refusals: list[Reject] = []
        self.open_sessions: list[Session] = []

    # -- building blocks ---------------------------------------------------------------------
    def session(self, tier: str = "free", *, tenant: str | None = "acme",
                database: str = "main", client_addr: str = "127.0.0.1:40000",
                backend: Backend | None = None, protocol: str = "test") -> Session:
        """A session as a front door has it before ``on_auth``: tenant and tier known
        (``tenant=None``: a name the directory does not know, tier None), not yet
        authenticated."""
        session = Session(protocol, client_addr, user=tenant or "nobody")
        if tenant is not None:
            session.tenant = TenantRecord(tenant, tier)
            session.tier = self.ctx.tiers[tier]
        session.database = database
        session.backend = backend if backend is not None else self.backend
        return session

    def _crash(self, phase: str, session: Session, exc: BaseException) -> AssertionError:
        kind = "log phase" if phase in ("on_complete", "on_disconnect", "on_tier_change") \
            else "access phase"
        advice = ("a log phase must cope with every outcome and never raise"
                  if kind == "log phase" else "a layer refuses only by raising ogelkit.Reject")
        return AssertionError(
            f"{self.layer.type_name}.{phase} raised {type(exc).__name__}: {exc} "
            f"({_where(session)}): {advice}")

    def check_reject(self, rej: BaseException, phase: str, session: Session) -> Reject:
        """A refusal by the layer: a ``Reject`` with a ``Reason`` member and a message."""
        if not isinstance(rej, Reject):
            raise self._crash(phase, session, rej)
        name = self.layer.type_name
        assert isinstance(rej.reason, Reason), (
            f"{name}.{phase} refused with reason {rej.reason!r} ({_where(session)}), which is "
            f"not a Reason member: front doors map only Reason members to protocol errors; "
            f"use one of {', '.join('Reason.' + r.name for r in Reason)}")
        assert isinstance(rej.message, str) and rej.message, (
            f"{name}.{phase} refused ({rej.reason}) with no message ({_where(session)})")
        for field in ("detail", "hint"):
            value = getattr(rej, field)
            assert value is None or isinstance(value, str), (
                f"{name}.{phase}: Reject.{field} must be a str or None, not {value!r}")
        retry = rej.retry_after
        assert retry is None or (isinstance(retry, (int, float)) and math.isfinite(retry)
                                 and retry >= 0), (
            f"{name}.{phase}: Reject.retry_after must be seconds >= 0 or None, not {retry!r}")
        rej.layer = rej.layer or self.layer.name
        self.refusals.append(rej)
        return rej

    def _log(self, phase: str, session: Session, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except Exception as exc:
            raise self._crash(phase, session, exc) from exc

    # -- what a front door does --------------------------------------------------------------
    async def connect(self, tier: str = "free", **kwargs: Any) -> Session:
        """Log in and connect: ``on_auth``, then ``on_connect``. A refused session (see
        ``session.rejection``) gets its ``on_disconnect`` at once; an admitted one stays
        open until ``disconnect`` (or the end of the test)."""
        session = self.session(tier, **kwargs)
        layer = self.layer
        phase = "on_auth"
        try:
            layer.on_auth(session)
            session.authenticated = True
            phase = "on_connect"
            await layer.on_connect(session)
        except Exception as exc:
            session.rejection = self.check_reject(exc, phase, session)
            self.disconnect(session)
            return session
        self.open_sessions.append(session)
        return session

    def failed_login(self, tier: str = "free", **kwargs: Any) -> Session:
        """A client that gives a wrong password (or names an unknown tenant with
        ``tenant=None``): ``on_auth``, then the core's ``Reject(Reason.AUTH)``, then
        ``on_disconnect``. Returns the session (the layer's own refusal, if it refused at
        ``on_auth``, is on ``session.rejection``)."""
        session = self.session(tier, **kwargs)
        try:
            self.layer.on_auth(session)
        except Exception as exc:
            session.rejection = self.check_reject(exc, "on_auth", session)
        else:
            session.rejection = Reject(Reason.AUTH, "password authentication failed")
        self.disconnect(session)
        return session

    async def operation(self, session: Session, name: str = "SELECT",
                        text: str | None = "SELECT 1", *, kind: str = "query", size: int = 16,
                        hold: float = 0.0, error: str | None = None,
                        rejected_by: Reason | None = None,
                        rejected_before: Reason | None = None) -> Operation:
        """One request: ``on_operation`` (awaiting what it returns), the upstream work
        (``hold`` seconds, ended early if the layer calls ``op.cancel``), then
        ``on_complete``. ``error`` is the upstream error code the request ends with;
        ``rejected_by`` refuses it in a layer after this one (after ``on_operation``),
        ``rejected_before`` in a layer before it (``on_operation`` is not called). Returns
        the operation; ``op.rejection`` says whether and why it was refused."""
        op = Operation(session, kind, name, text, size)
        cancelled = asyncio.Event()
        problems: list[AssertionError] = []

        def canceller(rej: Reject) -> None:
            # Called from the layer's timer: a failed check is kept and raised below,
            # since the event loop would only log it.
            try:
                if op.rejection is None:
                    op.rejection = self.check_reject(rej, "op.cancel", session)
            except AssertionError as exc:
                problems.append(exc)
            cancelled.set()

        op.canceller = canceller
        if rejected_before is not None:
            op.rejection = Reject(rejected_before, "refused by another layer", layer="other")
        else:
            pending: Awaitable[None] | None = None
            try:
                pending = self.layer.on_operation(op)
            except Exception as exc:
                op.rejection = self.check_reject(exc, "on_operation", session)
            if pending is not None:
                assert inspect.isawaitable(pending), (
                    f"{self.layer.type_name}.on_operation returned {pending!r:.60} "
                    f"({_where(session)}): return None to admit at once, or an awaitable "
                    "to admit after waiting")
                try:
                    await pending
                except Exception as exc:
                    op.rejection = self.check_reject(exc, "on_operation's awaitable", session)
            if op.rejection is None and rejected_by is not None:
                op.rejection = Reject(rejected_by, "refused by another layer", layer="other")
            if op.rejection is None:
                if hold > 0:
                    try:
                        await asyncio.wait_for(cancelled.wait(), hold)
                    except TimeoutError:
                        pass
                op.error = error
                op.bytes_out, op.rows = 64, 1
        if problems:
            raise problems[0]
        op.ended = time.monotonic()
        session.operations += 1
        self._log("on_complete", session, self.layer.on_complete, op)
        return op

    def change_tier(self, session: Session, tier: str) -> None:
        """The operator moved the tenant to ``tier`` while the session is open."""
        session.tenant = TenantRecord(session.tenant_slug or "acme", tier)
        session.tier = self.ctx.tiers[tier]
        self._log("on_tier_change", session, self.layer.on_tier_change, session)

    def disconnect(self, session: Session) -> None:
        """The connection ended (the log phase runs for refused sessions too)."""
        if session in self.open_sessions:
            self.open_sessions.remove(session)
        session.closed_at = time.monotonic()
        self._log("on_disconnect", session, self.layer.on_disconnect, session)

    def refuse_elsewhere(self, session: Session, reason: Reason = Reason.CONNECTIONS) -> None:
        """Another layer refused ``session`` at connect: its ``on_disconnect`` still runs."""
        session.rejection = Reject(reason, "refused by another layer", layer="other")
        self.disconnect(session)

    def close(self) -> None:
        """Disconnect every session still open."""
        for session in list(self.open_sessions):
            self.disconnect(session)


@pytest.mark.anyio
class LayerContract(_ConfigChecks):
    """The checks every layer passes. Set ``layer_class`` and ``options``; optionally:

    - ``context_config``: extra config (TOML text) the layer needs, e.g. a ``[state]`` table;
    - ``session_backend(ctx)``: a backend to put on every session (for layers that use
      backend capabilities such as ``estimate_cost``); default none;
    - ``provoke_refusal(drive)``: how to make the layer refuse (a ``LayerDrive``); a layer
      that never refuses sets ``never_refuses = True`` instead, and the contract then checks
      that it really refuses nothing on any tier (one of the two is required);
    - ``refusal_options`` / ``refusal_context_config``: the options and config that
      ``provoke_refusal`` runs with (default ``options`` / ``context_config``), e.g.
      ``mode = "enforce"`` when ``options`` shows warn mode.
    """

    layer_class: ClassVar[type[Layer]]
    #: Extra config (TOML text) the layer needs, e.g. a [state] table.
    context_config: ClassVar[str | None] = None
    #: Options for ``test_own_refusal`` (default: ``options``).
    refusal_options: ClassVar[dict[str, Any] | None] = None
    #: Extra config for ``test_own_refusal`` (default: ``context_config``).
    refusal_context_config: ClassVar[str | None] = None
    #: The layer never refuses (metering, settings ...): checked instead of a refusal.
    never_refuses: ClassVar[bool] = False

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @property
    def config_class(self) -> type:  # type: ignore[override]  # a property over a ClassVar
        return self.layer_class.Config

    # -- hooks for subclasses ----------------------------------------------------------------
    def session_backend(self, ctx: GatewayContext) -> Backend | None:
        """The backend on every session the contract makes (default: none)."""
        return None

    async def provoke_refusal(self, drive: LayerDrive) -> None:
        """Make the layer refuse at least once, through ``drive`` (``connect``,
        ``failed_login``, ``operation`` ...). Override in layers that can refuse."""
        raise NotImplementedError

    # -- helpers -----------------------------------------------------------------------------
    def construct(self, ctx: GatewayContext, options: dict[str, Any] | None = None) -> Layer:
        """Build the layer as the runtime does, failing if ``__init__`` does network I/O
        or starts tasks (both belong in ``open()`` / ``run()``)."""
        cls = self.layer_class
        config = _config(self.config_class, self.options if options is None else options)
        tasks_before = _tasks()
        layer: Layer | None = None
        with _no_network(f"{cls.__name__}.__init__") as calls:
            try:
                layer = cls(config, name=cls.type_name, context=ctx)
            except Exception:  # e.g. the guard's OSError, or what the layer made of it
                if not calls:
                    raise
        assert not calls, (
            f"{cls.__name__}.__init__ did network I/O ({', '.join(dict.fromkeys(calls))}): "
            "__init__ runs while the config is checked (ogelkit check) and before the event "
            "loop serves; connect in open(), which the runtime awaits before serving")
        started = _tasks() - tasks_before
        for task in started:
            task.cancel()
        assert not started, (
            f"{cls.__name__}.__init__ started {len(started)} task(s) "
            f"({', '.join(sorted(t.get_name() for t in started))}): start background work "
            "in open() or run(), which the runtime awaits and cancels")
        assert layer is not None
        return layer

    async def _layer(self, ctx: GatewayContext, options: dict[str, Any] | None = None) -> Layer:
        layer = self.construct(ctx, options)
        await layer.open()
        return layer

    async def _drive(self, ctx: GatewayContext, layer: Layer,
                     body: Callable[[LayerDrive], Awaitable[None]]) -> LayerDrive:
        """Run ``body`` with the layer's ``run()`` task going, as in the runtime."""
        drive = LayerDrive(ctx, layer, self.session_backend(ctx))
        runner = None
        if type(layer).run is not Layer.run:
            runner = asyncio.get_running_loop().create_task(layer.run(), name="layer.run")
        try:
            await body(drive)
            drive.close()
        finally:
            if runner is not None:
                runner.cancel()
                try:
                    await runner
                except asyncio.CancelledError:
                    pass
                except Exception as exc:
                    raise AssertionError(
                        f"{layer.type_name}.run() raised {exc!r}: background work must "
                        "survive its own errors") from exc
        return drive

    # -- the checks --------------------------------------------------------------------------
    def test_metadata(self):
        assert issubclass(self.layer_class, Layer)
        assert self.layer_class.type_name and self.layer_class.type_name.islower()
        assert self.layer_class.phases, "a layer must implement at least one phase"
        for phase in ("on_connect",):
            if phase in self.layer_class.phases:
                assert inspect.iscoroutinefunction(getattr(self.layer_class, phase))
        for phase in ("on_auth", "on_operation", "on_complete", "on_disconnect",
                      "on_tier_change"):
            if phase in self.layer_class.phases:
                assert not inspect.iscoroutinefunction(getattr(self.layer_class, phase)), (
                    f"{phase} must be a plain function (return an awaitable to wait)")

    async def test_init_does_no_network_io(self):
        async with test_context(self.context_config) as ctx:
            self.construct(ctx)
            if self.refusal_options is not None:
                self.construct(ctx, self.refusal_options)

    async def test_lifecycle_and_every_outcome(self):
        """Every tier of the context's tier table: a connection with every outcome of an
        operation, a tier change, and connections refused in every way."""
        async with test_context(self.context_config) as ctx:
            layer = await self._layer(ctx)
            try:
                check_describe(layer, "right after open()")
                tiers = list(ctx.tiers)
                assert tiers, "the context has no tiers"

                async def every_tier(drive: LayerDrive) -> None:
                    for i, tier in enumerate(tiers):
                        await self._one_tier(drive, tier, tiers[(i + 1) % len(tiers)])
                        check_describe(layer, f"after traffic on tier {tier}")

                await self._drive(ctx, layer, every_tier)
                check_describe(layer, "after every tier")
            finally:
                await layer.close()

    async def _one_tier(self, drive: LayerDrive, tier: str, other: str) -> None:
        tenant = f"contract-{tier}"
        addr = "127.0.0.1:40001"
        session = await drive.connect(tier, tenant=tenant, client_addr=addr)
        if session.rejection is None:
            await drive.operation(session)                           # ok
            await drive.operation(session, "GET", None, kind="command", size=12)  # no text
            await drive.operation(session, error="XX000")            # upstream error
            await drive.operation(session, rejected_by=Reason.RATE)  # later layer refused
            await drive.operation(session, rejected_before=Reason.COST)  # earlier layer
            drive.change_tier(session, other)
            await drive.operation(session)                           # on the new tier
            drive.change_tier(session, tier)
            drive.disconnect(session)
        # Connections that never got through, in every way the core and other layers
        # refuse them; the log phase still runs for each.
        drive.failed_login(tier, tenant=tenant, client_addr=addr)    # wrong password
        drive.failed_login(tier, tenant=None, client_addr=addr)      # unknown tenant
        later = await drive.connect(tier, tenant=tenant, client_addr=addr)
        if later.rejection is None:                                  # refused after us
            drive.refuse_elsewhere(later)
        before = drive.session(tier, tenant=tenant, client_addr=addr)
        before.authenticated = True                                  # refused before us
        drive.refuse_elsewhere(before)
        bare = drive.session(tier, tenant=tenant, client_addr=addr)  # no on_auth at all
        bare.rejection = Reject(Reason.AUTH, "contract auth failure")
        drive.disconnect(bare)

    async def test_own_refusal(self):
        """The layer's own refusal: a checked ``Reject`` (``Reason`` member, message), its
        own log phases see it, and the layer keeps serving afterwards."""
        if type(self).provoke_refusal is LayerContract.provoke_refusal:
            assert self.never_refuses, (
                f"{self.layer_class.__name__}'s contract declares neither provoke_refusal "
                "(how the layer refuses, so its refusals are checked) nor never_refuses = True")
            await self._never_refuses()
            return
        options = self.refusal_options if self.refusal_options is not None else self.options
        config = self.refusal_context_config or self.context_config
        async with test_context(config) as ctx:
            layer = await self._layer(ctx, options)
            try:
                async def refuse_then_serve(drive: LayerDrive) -> None:
                    await self.provoke_refusal(drive)
                    assert drive.refusals, (
                        f"provoke_refusal() did not make {layer.type_name} refuse anything: "
                        "drive it until it says no (or drop provoke_refusal if it never does)")
                    drive.close()
                    check_describe(layer, "after its own refusals")
                    tiers = list(ctx.tiers)
                    await self._one_tier(drive, tiers[-1], tiers[0])

                await self._drive(ctx, layer, refuse_then_serve)
            finally:
                await layer.close()

    async def _never_refuses(self) -> None:
        """A layer declared never to refuse: ordinary traffic on every tier, no refusal."""
        async with test_context(self.context_config) as ctx:
            layer = await self._layer(ctx)
            try:
                async def ordinary(drive: LayerDrive) -> None:
                    tiers = list(ctx.tiers)
                    for tier in tiers:
                        for _ in range(3):
                            session = await drive.connect(tier, tenant=f"never-{tier}")
                            for _ in range(20):
                                await drive.operation(session)
                            drive.disconnect(session)
                    assert not drive.refusals, (
                        f"{layer.type_name} is declared never_refuses but refused: "
                        f"{drive.refusals[0]!r}")

                await self._drive(ctx, layer, ordinary)
            finally:
                await layer.close()

    async def test_describe_is_json(self):
        async with test_context(self.context_config) as ctx:
            layer = await self._layer(ctx)
            try:
                check_describe(layer, "right after open()")

                async def busy(drive: LayerDrive) -> None:
                    for tier in ctx.tiers:
                        session = await drive.connect(tier, tenant=f"describe-{tier}")
                        check_describe(layer, f"with a session open on tier {tier}")
                        if session.rejection is None:
                            await drive.operation(session)
                            check_describe(layer, f"after an operation on tier {tier}")

                await self._drive(ctx, layer, busy)
                check_describe(layer, "after the sessions closed")
            finally:
                await layer.close()


@pytest.mark.anyio
class BackendContract(_ConfigChecks):
    backend_class: ClassVar[type[Backend]]
    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @property
    def config_class(self) -> type:  # type: ignore[override]
        return self.backend_class.Config

    def test_metadata(self):
        cls = self.backend_class
        assert issubclass(cls, Backend)
        assert cls.type_name and cls.type_name.islower()
        assert cls.protocol, "a backend names the protocol its clients speak"
        if cls.frontdoor is not None:
            assert issubclass(cls.frontdoor, FrontDoor)
            assert cls.frontdoor.protocol == cls.protocol
            assert cls.frontdoor.default_port > 0

    async def test_open_check_close(self):
        async with test_context() as ctx:
            backend = self.backend_class(_config(self.config_class, self.options),
                                         name="contract", context=ctx)
            await backend.open()
            try:
                await backend.check()
            finally:
                await backend.close()

    async def test_provision_is_idempotent(self):
        from ogelkit.control.records import DatabaseRecord
        async with test_context() as ctx:
            backend = self.backend_class(_config(self.config_class, self.options),
                                         name="contract", context=ctx)
            await backend.open()
            try:
                tenant = await ctx.store.create_tenant("contract-t", "free")
                tier = ctx.tiers["free"]
                first = await backend.provision(tenant, "maindb", tier)
                second = await backend.provision(tenant, "maindb", tier)
                assert isinstance(first, dict) and isinstance(second, dict)
                db = DatabaseRecord("contract-t", "maindb", backend.kind, "contract", second)
                dsn = backend.connection_string(tenant, db, "pw", "gateway.example", 15432)
                assert "gateway.example" in dsn
                await backend.deprovision(tenant, db)
                await backend.deprovision(tenant, db)  # idempotent
            finally:
                await backend.close()
