"""Contract suites every backend and every layer plugin runs against itself.

Subclass in your plugin's tests::

    from ogelkit.testing.contracts import LayerContract

    class TestMyLayerContract(LayerContract):
        layer_class = MyLayer
        options = {"mode": "enforce"}      # a valid [[layers]] table, minus type/name

    class TestMyBackendContract(BackendContract):
        backend_class = MyBackend
        options = {"dsn": "..."}           # a valid [backends.<id>] table, minus type

The suites check what the core relies on: registration metadata, strict config models,
lifecycle, and that the log phases tolerate every outcome (rejected operations, refused
connections), because the core calls them for every layer whatever happened before.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, ClassVar

import attrs
import pytest

from ogelkit.backend import Backend, FrontDoor
from ogelkit.config.errors import ErrorCollector
from ogelkit.config.schema import options_table, structure
from ogelkit.layer import Layer
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_operation, make_session, test_context

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


@pytest.mark.anyio
class LayerContract(_ConfigChecks):
    layer_class: ClassVar[type[Layer]]
    #: Extra config (TOML text) the layer needs, e.g. a [state] table.
    context_config: ClassVar[str | None] = None

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @property
    def config_class(self) -> type:  # type: ignore[override]
        return self.layer_class.Config

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

    async def _layer(self, ctx) -> Layer:
        layer = self.layer_class(_config(self.config_class, self.options),
                                 name=self.layer_class.type_name, context=ctx)
        await layer.open()
        return layer

    async def test_lifecycle_and_every_outcome(self):
        async with test_context(self.context_config) as ctx:
            layer = await self._layer(ctx)
            try:
                session = make_session(ctx, tier="enterprise")
                layer.on_auth(session)
                await layer.on_connect(session)
                ok = make_operation(session)
                pending = layer.on_operation(ok)
                if pending is not None:
                    await pending
                ok.ended = ok.started + 0.001
                layer.on_complete(ok)

                rejected = make_operation(session)
                rejected.rejection = Reject(Reason.RATE, "contract rejection", layer="other")
                layer.on_complete(rejected)  # the log phase sees other layers' refusals

                errored = make_operation(session)
                errored.error = "XX000"
                errored.ended = errored.started
                layer.on_complete(errored)

                layer.on_tier_change(session)
                layer.on_disconnect(session)

                refused = make_session(ctx)
                refused.rejection = Reject(Reason.AUTH, "contract auth failure")
                refused.authenticated = False
                layer.on_disconnect(refused)  # never connected: must not raise
                json.dumps(layer.describe(), default=str)
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
