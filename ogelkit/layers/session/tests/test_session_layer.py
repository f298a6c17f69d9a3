"""The session layer driven directly: precedence, placeholders, tier changes, failures."""

from __future__ import annotations

import pytest
from ogelkit_layer_session import SessionLayer
from ogelkit_layer_session import plugin as session_plugin

import ogelkit
from ogelkit.chain import Chain
from ogelkit.model import Reason, Reject
from ogelkit.testing import config_errors, isolated_plugins, make_session, minimal_config, test_context
from ogelkit.testing.contracts import LayerContract

pytestmark = pytest.mark.anyio


class TierBackend(ogelkit.Backend):
    """The smallest backend with the session_settings capability: what a Postgres backend
    computes, from the tier alone (the real one is exercised end to end in tests/)."""

    type_name = "tierecho"
    protocol = "tierecho"
    broken = False

    def session_settings(self, session):
        if self.broken:
            raise RuntimeError("backend bug")
        tier = session.tier
        return {"work_mem": f"{tier.work_mem // 1024 // 1024}MB",
                "statement_timeout": f"{int(tier.statement_timeout * 1000)}ms",
                "application_name": f"o7s:{tier.name}:{session.tenant_slug}"}


class PlainBackend(ogelkit.Backend):
    """A backend without the capability (Redis-like)."""

    type_name = "plain"
    protocol = "plain"


def plugins():
    return isolated_plugins(("session", session_plugin))


def layer_config(body: str = "") -> str:
    return minimal_config('[[layers]]\ntype = "session"\n' + body)


async def make_layer(ctx) -> SessionLayer:
    spec = ctx.config.layers[0]
    layer = spec.cls(spec.options, name=spec.name, context=ctx)
    await layer.open()
    return layer


class TestSessionContract(LayerContract):
    layer_class = SessionLayer
    options = {"settings": {"search_path": "public"}, "tiers": {"pro": {"work_mem": "300MB"}}}

    def session_backend(self, ctx):
        """Every contract session has backend settings to merge (session_settings)."""
        return TierBackend(None, name="pg", context=ctx)

    async def provoke_refusal(self, drive):
        """A backend that cannot compute the tier's settings: refused, never unbounded."""
        broken = TierBackend(None, name="pg", context=drive.ctx)
        broken.broken = True
        session = await drive.connect(tier="free", backend=broken)
        assert session.rejection is not None
        assert session.rejection.reason == Reason.UNAVAILABLE


async def test_backend_settings_then_common_then_tier_then_unset():
    text = layer_config(
        'settings = { application_name = "gw:{tier}:{tenant}:{database}", '
        'lock_timeout = "5s", jit = false, max_parallel_workers_per_gather = 1 }\n'
        'unset = ["statement_timeout"]\n'
        '[layers.tiers.pro]\nwork_mem = "300MB"\nmax_parallel_workers_per_gather = 3\n')
    async with test_context(text, plugins=plugins()) as ctx:
        layer = await make_layer(ctx)
        backend = TierBackend(None, name="pg", context=ctx)

        free = make_session(ctx, tenant="acme", tier="free", database="main")
        free.backend = backend
        await layer.on_connect(free)
        assert free.settings == {
            "work_mem": "16MB",  # from the backend, tier free
            "application_name": "gw:free:acme:main",  # `settings` wins over the backend
            "lock_timeout": "5s",
            "jit": "off",
            "max_parallel_workers_per_gather": "1",
        }  # statement_timeout removed by `unset`

        pro = make_session(ctx, tenant="bigco", tier="pro", database="orders")
        pro.backend = backend
        await layer.on_connect(pro)
        assert pro.settings["work_mem"] == "300MB"  # tiers.pro wins over the backend
        assert pro.settings["max_parallel_workers_per_gather"] == "3"
        assert pro.settings["application_name"] == "gw:pro:bigco:orders"
        assert "statement_timeout" not in pro.settings


async def test_tier_change_recomputes_for_the_next_checkout():
    async with test_context(layer_config(), plugins=plugins()) as ctx:
        layer = await make_layer(ctx)
        chain = Chain([layer])
        session = make_session(ctx, tenant="acme", tier="free")
        session.backend = TierBackend(None, name="pg", context=ctx)
        await chain.connect(session)
        assert session.settings["work_mem"] == "16MB"
        assert session.settings["application_name"] == "o7s:free:acme"

        session.tier = ctx.tiers["pro"]  # what Directory.apply does before notifying
        chain.tier_changed(session)
        assert session.settings == {"work_mem": "256MB", "statement_timeout": "60000ms",
                                    "application_name": "o7s:pro:acme"}
        assert layer.describe()["reconfigured"] == 1
        text = ctx.metrics.render().decode()
        assert ('ogelkit_layer_decisions_total{decision="reconfigured",layer="session",'
                'reason="tier_change",tier="pro"} 1.0') in text
        assert 'decision="configured",layer="session",reason="tier",tier="free"} 1.0' in text


async def test_backend_without_the_capability_gets_only_configured_settings():
    text = layer_config('[layers.tiers.free]\nclient_label = "{tenant}"\n')
    async with test_context(text, plugins=plugins()) as ctx:
        layer = await make_layer(ctx)
        redis_like = make_session(ctx, tier="free")
        redis_like.backend = PlainBackend(None, name="r", context=ctx)
        await layer.on_connect(redis_like)
        assert redis_like.settings == {"client_label": "acme"}
        other_tier = make_session(ctx, tier="starter")
        other_tier.backend = PlainBackend(None, name="r", context=ctx)
        await layer.on_connect(other_tier)
        assert other_tier.settings == {}


async def test_without_options_the_backends_own_dict_is_handed_on():
    async with test_context(layer_config(), plugins=plugins()) as ctx:
        layer = await make_layer(ctx)
        backend = TierBackend(None, name="pg", context=ctx)
        shared = {"work_mem": "16MB"}
        backend.session_settings = lambda session: shared
        session = make_session(ctx)
        session.backend = backend
        await layer.on_connect(session)
        assert session.settings is shared  # front doors may compare by identity


async def test_backend_settings_can_be_switched_off():
    text = layer_config('backend_settings = false\nsettings = { work_mem = "1MB" }\n')
    async with test_context(text, plugins=plugins()) as ctx:
        layer = await make_layer(ctx)
        session = make_session(ctx, tier="enterprise")
        session.backend = TierBackend(None, name="pg", context=ctx)
        await layer.on_connect(session)
        assert session.settings == {"work_mem": "1MB"}


async def test_a_failing_backend_refuses_the_connection_instead_of_running_unbounded():
    async with test_context(layer_config(), plugins=plugins()) as ctx:
        layer = await make_layer(ctx)
        chain = Chain([layer])
        backend = TierBackend(None, name="pg", context=ctx)
        backend.broken = True
        session = make_session(ctx)
        session.backend = backend
        with pytest.raises(Reject) as info:
            await chain.connect(session)
        assert info.value.reason == "unavailable"
        assert info.value.layer == "session"
        assert session.rejection is info.value

        # During a tier change the client is closed so it reconnects with fresh limits.
        closed: list[Reject] = []
        ok = make_session(ctx)
        ok.backend = TierBackend(None, name="pg", context=ctx)
        ok.closer = closed.append
        await chain.connect(ok)
        before = dict(ok.settings)
        ok.backend.broken = True
        ok.tier = ctx.tiers["pro"]
        chain.tier_changed(ok)
        assert [r.reason for r in closed] == ["unavailable"]
        assert ok.settings == before


async def test_unknown_tier_in_options_fails_at_open():
    async with test_context(layer_config('[layers.tiers.platinum]\nwork_mem = "1GB"\n'),
                            plugins=plugins()) as ctx:
        spec = ctx.config.layers[0]
        layer = spec.cls(spec.options, name=spec.name, context=ctx)
        with pytest.raises(ValueError, match=r"tiers\.platinum names no tier"):
            await layer.open()


def test_setting_names_are_validated_with_the_config():
    errors = config_errors(layer_config('settings = { "work_mem; DROP TABLE x" = "1" }\n'),
                           plugins())
    assert len(errors) == 1 and "invalid setting name" in errors[0], errors
    errors = config_errors(layer_config('settings = { work_mem = [1] }\n'), plugins())
    assert errors and "layers[0].settings.work_mem" in errors[0], errors
    assert config_errors(layer_config('settings = { "app.org_id" = "x" }\n'), plugins()) == []
