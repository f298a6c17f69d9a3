import pytest
from ogelkit_layer_denylist import DenylistLayer, DenylistOptions

from ogelkit import Reject
from ogelkit.testing import Chain, load_plugins, make_operation, make_session
from ogelkit.testing.contracts import LayerContract


def test_discovered_through_its_entry_point():
    plugins = load_plugins()
    assert plugins.layers["denylist"] is DenylistLayer
    assert plugins.infos["denylist"].distribution == "ogelkit-layer-denylist"


def _layer(**deny):
    return DenylistLayer(DenylistOptions(deny=deny), name="denylist", context=None)


def test_refuses_per_tier_and_everywhere():
    layer = _layer(free=["drop", "TRUNCATE"], **{"*": ["FLUSHDB"]})
    chain = Chain([layer])
    free, pro = make_session(tier="free"), make_session(tier="pro")
    assert chain.admit(make_operation(pro, name="DROP")) is None
    with pytest.raises(Reject) as info:
        chain.admit(make_operation(free, name="drop"))
    assert info.value.reason == "forbidden"
    assert info.value.message == "DROP is not allowed on the free tier"
    with pytest.raises(Reject):
        chain.admit(make_operation(pro, name="FLUSHDB"))
    assert chain.admit(make_operation(free, name="SELECT")) is None
    assert layer.describe() == {"refused": {"DROP": 1, "FLUSHDB": 1}}


class TestDenylistContract(LayerContract):
    layer_class = DenylistLayer
    options = {"deny": {"free": ["DROP"]}}

    async def provoke_refusal(self, drive):
        session = await drive.connect(tier="free")
        await drive.operation(session, name="DROP", text="DROP TABLE t")
