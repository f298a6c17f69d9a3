"""The contract suites run against the core's own test plugin, and catch broken layers.

The layer suite is shown to catch the eight bugs planted in a layer written from
``docs/dev/tutorial.md`` (issue 10): each ``Planted*`` layer below differs from the correct
``TutorialLayer`` by one bug, and running its contract programmatically must fail the
named check with a message that says what is wrong.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import re
import socket
from collections import Counter
from pathlib import Path

import anyio
import attrs
import pytest

import ogelkit
from ogelkit import Reason, Reject
from ogelkit.testing.contracts import BackendContract, LayerContract, LayerDrive

_spec = importlib.util.spec_from_file_location("linegate_contract",
                                               Path(__file__).with_name("linegate.py"))
linegate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(linegate)


def contract_failures(contract: type) -> dict[str, AssertionError]:
    """Run every check of a contract class outside pytest: {check name: its failure}.
    Skipped checks count as passed; any error other than a failed check propagates."""
    failures: dict[str, AssertionError] = {}
    probe = contract()
    for name in sorted(n for n in dir(contract) if n.startswith("test_")):
        check = getattr(probe, name)
        try:
            if inspect.iscoroutinefunction(check):
                anyio.run(check)
            else:
                check()
        except pytest.skip.Exception:
            continue
        except AssertionError as exc:
            failures[name] = exc
    return failures


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
        # must cope with sessions that never got this far: an unknown tenant has no tier
        session.tier.name if session.tier is not None else None  # noqa: B018

    def describe(self):
        return {"limit": self.config.limit}


class TestCountingLayerContract(LayerContract):
    layer_class = CountingLayer
    options = {"limit": 5}
    never_refuses = True


# -- the tutorial's layer, correct ---------------------------------------------------------------


@attrs.define(kw_only=True)
class TutorialOptions:
    deny: dict[str, list[str]] = ogelkit.option(
        factory=dict, doc='Operation names to refuse, by tier name; "*" applies to every tier.')
    message: str = ogelkit.option("{name} is not allowed on the {tier} tier",
                                  doc="Error message; {name} and {tier} are filled in.")


class TutorialLayer(ogelkit.Layer):
    """The denylist layer of docs/dev/tutorial.md, written the way the tutorial says."""

    type_name = "tutorial"
    Config = TutorialOptions

    def __init__(self, config, *, name, context):
        super().__init__(config, name=name, context=context)
        everyone = {n.upper() for n in config.deny.get("*", [])}
        self.denied = {tier: frozenset(everyone | {n.upper() for n in names})
                       for tier, names in config.deny.items() if tier != "*"}
        self.default = frozenset(everyone)
        self.refused: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()

    def tier_of(self, session) -> str:
        return session.tier.name if session.tier is not None else "?"

    def reject(self, name: str, tier: str) -> Reject:
        return Reject(Reason.FORBIDDEN, self.config.message.format(name=name, tier=tier),
                      hint="Use a tier that allows it.")

    def on_operation(self, op):
        name, tier = op.name.upper(), self.tier_of(op.session)
        if name in self.denied.get(tier, self.default):
            self.refused[name] += 1
            raise self.reject(name, tier)
        return None

    def on_complete(self, op):
        if op.rejection is None:
            self.seen[op.outcome] += 1

    def describe(self):
        return {"refused": dict(self.refused), "seen": dict(self.seen)}


class TestTutorialLayerContract(LayerContract):
    """How the tutorial's contract subclass declares the layer's own refusal."""

    layer_class = TutorialLayer
    options = {"deny": {"free": ["DROP"]}}

    async def provoke_refusal(self, drive: LayerDrive) -> None:
        session = await drive.connect(tier="free")
        op = await drive.operation(session, name="DROP", text="DROP TABLE t")
        assert op.rejection is not None and op.rejection.reason == Reason.FORBIDDEN


def contract_for(layer_class: type) -> type:
    return type(f"Test{layer_class.__name__}Contract", (TestTutorialLayerContract,),
                {"layer_class": layer_class, "__test__": False})


def test_the_correct_tutorial_layer_passes_every_check():
    assert contract_failures(contract_for(TutorialLayer)) == {}


# -- the eight planted bugs ----------------------------------------------------------------------


@attrs.define(kw_only=True)
class UndocumentedOptions(TutorialOptions):
    verbose: bool = False  # planted: a plain attrs field, no doc


class PlantedUndocumentedOption(TutorialLayer):
    Config = UndocumentedOptions


class PlantedCrashInOnOperation(TutorialLayer):
    def on_operation(self, op):
        self.seen[op.text.split()[0].upper()] += 1  # planted: text is None for a Redis GET
        return super().on_operation(op)


class PlantedOnCompleteAssumesOpState(TutorialLayer):
    def on_complete(self, op):
        op.state["tutorial"] = True  # planted: op.state is None until a layer creates it


class PlantedOnCompleteRaisesOnRefused(TutorialLayer):
    def on_complete(self, op):
        if op.rejection is not None:  # planted: a log phase that refuses to log refusals
            raise RuntimeError(f"unexpected rejection {op.rejection!r}")
        self.seen[op.outcome] += 1


class PlantedFreeTierOnly(TutorialLayer):
    def on_operation(self, op):
        tier = self.tier_of(op.session)
        if tier == "free":  # planted: a per-tier table that forgot the smallest tier
            per_tier = {"starter": 10, "pro": 50, "enterprise": 100}
            self.seen[str(per_tier[tier])] += 1
        return super().on_operation(op)


class PlantedReasonNotAReason(TutorialLayer):
    def reject(self, name, tier):
        return Reject("denied", f"{name} is not allowed")  # planted: no Reason member


class PlantedNetworkInInit(TutorialLayer):
    target: tuple[str, int] = ("127.0.0.1", 9)

    def __init__(self, config, *, name, context):
        super().__init__(config, name=name, context=context)
        try:  # planted: "warm up" a connection while the config is being checked
            socket.create_connection(self.target, timeout=1).close()
        except OSError:
            pass  # and hide the failure


class PlantedDescribeNotJson(TutorialLayer):
    def describe(self):
        return {"denied": self.denied}  # planted: a dict of frozensets


PLANTED = [
    (PlantedUndocumentedOption, "test_config_is_attrs_and_documented",
     r"option 'verbose' has no doc"),
    (PlantedCrashInOnOperation, "test_lifecycle_and_every_outcome",
     r"tutorial\.on_operation raised AttributeError: .*a layer refuses only by raising"),
    (PlantedOnCompleteAssumesOpState, "test_lifecycle_and_every_outcome",
     r"tutorial\.on_complete raised TypeError: .*log phase must cope with every outcome"),
    (PlantedOnCompleteRaisesOnRefused, "test_lifecycle_and_every_outcome",
     r"tutorial\.on_complete raised RuntimeError: unexpected rejection"),
    (PlantedFreeTierOnly, "test_lifecycle_and_every_outcome",
     r"on_operation raised KeyError: 'free' \(tenant 'contract-free' on tier free\)"),
    (PlantedReasonNotAReason, "test_own_refusal",
     r"refused with reason 'denied' .*not a Reason member"),
    (PlantedNetworkInInit, "test_init_does_no_network_io",
     r"PlantedNetworkInInit\.__init__ did network I/O \(socket\.create_connection\)"),
    (PlantedDescribeNotJson, "test_describe_is_json",
     r"describe\(\)\['denied'\]\['free'\] is a frozenset .*plain JSON data"),
]


@pytest.mark.parametrize(("layer_class", "check", "message"), PLANTED,
                         ids=[p[0].__name__ for p in PLANTED])
def test_the_contract_catches_each_planted_bug(layer_class, check, message):
    failures = contract_failures(contract_for(layer_class))
    assert check in failures, f"{check} passed for {layer_class.__name__}: {failures}"
    assert re.search(message, str(failures[check])), str(failures[check])


def test_the_free_tier_bug_is_missed_on_enterprise_alone():
    """Why every tier is driven: the planted bug does not show on the enterprise tier."""
    async def main():
        async with ogelkit.testing.test_context() as ctx:
            layer = contract_for(PlantedFreeTierOnly)().construct(ctx)
            drive = LayerDrive(ctx, layer)
            session = await drive.connect("enterprise")
            await drive.operation(session)
            with pytest.raises(AssertionError, match="KeyError"):
                await drive.operation(await drive.connect("free"))

    anyio.run(main)


def test_network_io_is_caught_even_when_the_connection_works():
    with socket.create_server(("127.0.0.1", 0)) as server:
        class Reachable(PlantedNetworkInInit):
            target = server.getsockname()[:2]

        failures = contract_failures(contract_for(Reachable))
    assert "did network I/O" in str(failures["test_init_does_no_network_io"])


class PlantedTaskInInit(TutorialLayer):
    def __init__(self, config, *, name, context):
        super().__init__(config, name=name, context=context)
        self.warmup = asyncio.get_running_loop().create_task(
            asyncio.open_connection("127.0.0.1", 9), name="warm-up")


def test_a_task_started_in_init_is_caught():
    failures = contract_failures(contract_for(PlantedTaskInInit))
    assert "started 1 task(s) (warm-up)" in str(failures["test_init_does_no_network_io"])


class PlantedDescribeNaN(TutorialLayer):
    def describe(self):
        total = sum(self.seen.values())
        return {"ok_ratio": self.seen["ok"] / total if total else float("nan")}


def test_nan_in_describe_is_caught():
    failures = contract_failures(contract_for(PlantedDescribeNaN))
    assert "describe()['ok_ratio'] is nan (not JSON) right after open()" in str(
        failures["test_describe_is_json"])


def test_on_operation_must_return_none_or_an_awaitable():
    class Returns(TutorialLayer):
        def on_operation(self, op):
            super().on_operation(op)
            return True  # planted: "admitted" the wrong way

    failures = contract_failures(contract_for(Returns))
    assert "on_operation returned True" in str(failures["test_lifecycle_and_every_outcome"])


def test_a_refusal_that_is_not_a_reject_is_caught():
    class Raises(TutorialLayer):
        def reject(self, name, tier):
            return PermissionError(name)  # planted: a "refusal" the front door cannot answer

    failures = contract_failures(contract_for(Raises))
    assert "on_operation raised PermissionError: DROP" in str(failures["test_own_refusal"])


def test_provoke_refusal_must_make_the_layer_refuse():
    class Lax(TestTutorialLayerContract):
        __test__ = False
        options = {"deny": {}}

        async def provoke_refusal(self, drive):
            await drive.operation(await drive.connect(tier="free"), name="DROP")

    failures = contract_failures(Lax)
    assert "did not make tutorial refuse anything" in str(failures["test_own_refusal"])


def test_a_timeout_style_refusal_through_op_cancel_is_checked():
    class Cancels(TutorialLayer):
        def on_operation(self, op):
            asyncio.get_running_loop().call_later(
                0.01, op.cancel, Reject("timeout", "too slow"))  # planted: a bare string

    class Probe(TestTutorialLayerContract):
        __test__ = False
        layer_class = Cancels

        async def provoke_refusal(self, drive):
            await drive.operation(await drive.connect(tier="free"), hold=2.0)

    failures = contract_failures(Probe)
    assert "op.cancel refused with reason 'timeout'" in str(failures["test_own_refusal"])


def test_reason_and_capability_are_str_enums():
    from ogelkit.backend import Capability
    assert Reason.RATE == "rate" and isinstance(Reason.RATE, str) and f"{Reason.RATE}" == "rate"
    assert Reason("banned") is Reason.BANNED and {"rate": 1}[Reason.RATE] == 1
    assert Capability.ESTIMATE_COST == "estimate_cost" and "sleep" in {Capability.SLEEP}
    assert {c.value for c in Capability} >= {
        "estimate_cost", "session_settings", "storage_bytes", "sleep", "wake"}


# -- the older probes ----------------------------------------------------------------------------


class FragileLayer(ogelkit.Layer):
    """Assumes every completed operation was admitted: the contract must catch that."""

    type_name = "fragile"

    def on_complete(self, op):
        assert op.rejection is None


def test_contract_catches_a_layer_that_breaks_on_rejections():
    class Probe(LayerContract):
        layer_class = FragileLayer

    with pytest.raises(AssertionError, match=r"fragile\.on_complete raised AssertionError"):
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


def test_a_contract_must_say_whether_its_layer_refuses():
    class Undeclared(LayerContract):
        layer_class = CountingLayer
        options = {"limit": 5}

    failures = contract_failures(Undeclared)
    assert "test_own_refusal" in failures
    assert "never_refuses" in str(failures["test_own_refusal"])


def test_a_layer_declared_never_to_refuse_is_held_to_it():
    class Refusing(CountingLayer):
        def on_operation(self, op):
            raise ogelkit.Reject(ogelkit.Reason.FORBIDDEN, "no")

    class Declared(LayerContract):
        layer_class = Refusing
        options = {"limit": 5}
        never_refuses = True

    failures = contract_failures(Declared)
    assert "declared never_refuses but refused" in str(failures.get("test_own_refusal"))
