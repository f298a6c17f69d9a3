"""The compiled layer chain: phase selection, short-circuit, log phases always run."""

import anyio
import anyio.lowlevel
import pytest

import ogelkit
from ogelkit.chain import Chain
from ogelkit.model import Reason, Reject
from ogelkit.testing import make_operation, make_session

pytestmark = pytest.mark.anyio


class Recorder(ogelkit.Layer):
    type_name = "recorder"

    def __init__(self, name, log, *, reject_op=False, reject_connect=False, wait=False):
        self.name, self.log = name, log
        self.reject_op, self.reject_connect, self.wait = reject_op, reject_connect, wait

    async def on_connect(self, session):
        self.log.append((self.name, "connect"))
        if self.reject_connect:
            raise Reject(Reason.CONNECTIONS, "full")

    def on_operation(self, op):
        self.log.append((self.name, "operation"))
        if self.reject_op:
            raise Reject(Reason.RATE, "slow down")
        if self.wait:
            return anyio.lowlevel.checkpoint()
        return None

    def on_complete(self, op):
        self.log.append((self.name, "complete", op.outcome))

    def on_disconnect(self, session):
        self.log.append((self.name, "disconnect", session.rejection is not None))


class OnlyComplete(ogelkit.Layer):
    type_name = "only"

    def on_complete(self, op):
        pass


def test_phases_are_detected_from_overrides():
    assert Recorder.phases == {"on_connect", "on_operation", "on_complete", "on_disconnect"}
    assert OnlyComplete.phases == {"on_complete"}
    chain = Chain([OnlyComplete(None, name="only", context=None)])
    assert chain._operation == () and len(chain._complete) == 1


def test_sync_admit_returns_none_and_keeps_order():
    log = []
    chain = Chain([Recorder("a", log), Recorder("b", log)])
    op = make_operation(make_session())
    assert chain.admit(op) is None
    chain.complete(op)
    assert log == [("a", "operation"), ("b", "operation"), ("a", "complete", "ok"),
                   ("b", "complete", "ok")]


def test_reject_short_circuits_but_log_phase_sees_it():
    log = []
    chain = Chain([Recorder("a", log, reject_op=True), Recorder("b", log)])
    op = make_operation(make_session())
    with pytest.raises(Reject) as info:
        chain.admit(op)
    assert op.rejection is info.value and op.outcome == "rejected"
    chain.complete(op)
    assert log == [("a", "operation"), ("a", "complete", "rejected"), ("b", "complete", "rejected")]


async def test_awaitable_path_runs_the_rest_in_order():
    log = []
    chain = Chain([Recorder("a", log), Recorder("b", log, wait=True), Recorder("c", log, wait=True),
                   Recorder("d", log, reject_op=True)])
    op = make_operation(make_session())
    pending = chain.admit(op)
    assert pending is not None
    with pytest.raises(Reject):
        await pending
    assert op.rejection is not None
    assert [e[0] for e in log] == ["a", "b", "c", "d"]


async def test_connect_reject_records_layer_and_disconnect_always_runs():
    log = []
    chain = Chain([Recorder("a", log), Recorder("b", log, reject_connect=True),
                   Recorder("c", log)])
    session = make_session()
    with pytest.raises(Reject):
        await chain.connect(session)
    assert session.rejection.layer == "b"
    chain.disconnect(session)
    assert log == [("a", "connect"), ("b", "connect"), ("a", "disconnect", True),
                   ("b", "disconnect", True), ("c", "disconnect", True)]


class Exploding(ogelkit.Layer):
    type_name = "boom"

    def on_complete(self, op):
        raise RuntimeError("observer bug")


def test_a_broken_observer_does_not_stop_the_others():
    log = []
    chain = Chain([Exploding(None, name="boom", context=None), Recorder("b", log)])
    op = make_operation(make_session())
    chain.complete(op)
    assert log == [("b", "complete", "ok")]


async def test_an_operation_refusal_names_the_layer_that_refused():
    class Fine(ogelkit.Layer):
        type_name = "fine"

        def on_operation(self, op):
            return None

    class Refuses(ogelkit.Layer):
        type_name = "refuses"

        def on_operation(self, op):
            raise ogelkit.Reject(ogelkit.Reason.FORBIDDEN, "no")

    class RefusesLater(ogelkit.Layer):
        type_name = "later"

        def on_operation(self, op):
            async def wait():
                raise ogelkit.Reject(ogelkit.Reason.RATE, "slow down")
            return wait()

    chain = Chain([Fine(None, name="a", context=None), Refuses(None, name="b", context=None)])
    op = make_operation(make_session())
    with pytest.raises(ogelkit.Reject):
        chain.admit(op)
    assert op.rejection.layer == "b"
    chain = Chain([Fine(None, name="a", context=None), RefusesLater(None, name="c", context=None)])
    op = make_operation(make_session())
    with pytest.raises(ogelkit.Reject):
        await chain.admit(op)
    assert op.rejection.layer == "c"


class Batching(OnlyComplete):
    batches = True


class ConnectOnly(ogelkit.Layer):
    async def on_connect(self, session):
        pass


def test_batches_only_when_every_layer_that_sees_operations_takes_them():
    """A third-party layer that never said it takes batches gets one operation per
    request: the chain says no and front doors do not batch."""
    assert Chain([Batching(None, name="a", context=None),
                  ConnectOnly(None, name="b", context=None)]).batches
    assert not Chain([Batching(None, name="a", context=None),
                      OnlyComplete(None, name="c", context=None)]).batches


def test_live_stats_count_a_batch_as_its_requests():
    from ogelkit.livestats import LiveStats
    live = LiveStats()
    chain = Chain([], live=live)
    op = make_operation(make_session())
    op.count, op.error, op.failed = 16, "ERR", 3
    chain.complete(op)
    refused = make_operation(make_session())
    refused.count = 4
    refused.rejection = Reject(Reason.RATE, "slow down", layer="ratelimit")
    chain.complete(refused)
    snap = live.snapshot("acme")
    assert snap["operations"] == 20 and snap["errors"] == 3
    assert snap["rejections"] == [{"layer": "ratelimit", "reason": str(Reason.RATE),
                                   "count": 4}]
