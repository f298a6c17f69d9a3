"""The contract suites run against the core's own test plugin (and catch a broken one)."""

import importlib.util
from pathlib import Path

import attrs
import pytest

import ogelkit
from ogelkit.testing.contracts import BackendContract, LayerContract

_spec = importlib.util.spec_from_file_location("linegate_contract",
                                               Path(__file__).with_name("linegate.py"))
linegate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(linegate)


class TestLineBackendContract(BackendContract):
    backend_class = linegate.LineBackend
    options = {"probe_port": 0}


@attrs.define(kw_only=True)
class CountOptions:
    limit: int = ogelkit.option(3, doc="How many.")


class CountingLayer(ogelkit.Layer):
    type_name = "counting"
    Config = CountOptions

    def on_operation(self, op):
        self.context.metrics.decision(self.name, "allowed", "none", op.session.tier.name)

    def on_complete(self, op):
        pass

    def on_disconnect(self, session):
        session.tier.name  # noqa: B018 - must cope with sessions that never got this far

    def describe(self):
        return {"limit": self.config.limit}


class TestCountingLayerContract(LayerContract):
    layer_class = CountingLayer
    options = {"limit": 5}


class FragileLayer(ogelkit.Layer):
    """Assumes every completed operation was admitted: the contract must catch that."""

    type_name = "fragile"

    def on_complete(self, op):
        assert op.rejection is None


def test_contract_catches_a_layer_that_breaks_on_rejections():
    class Probe(LayerContract):
        layer_class = FragileLayer

    import anyio
    with pytest.raises(AssertionError):
        anyio.run(Probe().test_lifecycle_and_every_outcome)


@attrs.define(kw_only=True)
class Undocumented:
    x: int = 1  # a plain attrs field: no doc


def test_contract_requires_documented_options():
    class Layer(ogelkit.Layer):
        type_name = "undoc"
        Config = Undocumented

        def on_complete(self, op):
            pass

    class Probe(LayerContract):
        layer_class = Layer

    with pytest.raises(AssertionError, match="has no doc"):
        Probe().test_config_is_attrs_and_documented()
