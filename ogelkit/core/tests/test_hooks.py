"""One error policy for every hook: a failing implementation is logged and skipped."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import ogelkit
from ogelkit.testing import isolated_plugins, minimal_config


class Broken:
    @ogelkit.hookimpl
    def ogelkit_tenant_created(self, tenant):
        raise RuntimeError("exporter bug")


class Recording:
    def __init__(self):
        self.seen = []

    @ogelkit.hookimpl
    def ogelkit_tenant_created(self, tenant):
        self.seen.append(tenant)


def test_a_failing_implementation_is_logged_and_the_others_still_run(caplog):
    recording = Recording()
    plugins = isolated_plugins(("broken", Broken()), ("recording", recording))
    with caplog.at_level(logging.ERROR, logger="ogelkit.hooks"):
        plugins.hooks.tenant_created("acme")
    assert recording.seen == ["acme"]
    (record,) = [r for r in caplog.records if r.name == "ogelkit.hooks"]
    assert record.hook == "ogelkit_tenant_created" and record.plugin == "broken"


PLUGIN_SOURCE = '''
import ogelkit

@ogelkit.hookimpl
def ogelkit_tenant_created(tenant):
    raise RuntimeError("a third-party hook that fails")
'''


def test_tenant_create_prints_the_password_even_when_a_hook_fails(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "failing_hook.py").write_text(PLUGIN_SOURCE)
    info = site / "failing_hook-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: failing-hook\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ogelkit]\nfailing = failing_hook\n")
    config = tmp_path / "config.toml"
    config.write_text(minimal_config(control_url=f"sqlite:///{tmp_path}/cp.db"))
    env = {**os.environ, "PYTHONPATH": str(site), "OGELKIT_CONFIG": str(config)}
    result = subprocess.run([sys.executable, "-m", "ogelkit", "tenants", "create", "acme"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "password: " in result.stdout
    assert "a third-party hook that fails" in result.stderr  # logged, not swallowed


def test_a_plugin_declares_its_own_hooks():
    from ogelkit_layer_usage import plugin as usage_plugin

    class Exporter:
        def __init__(self):
            self.batches = []

        @ogelkit.hookimpl
        def ogelkit_usage_flushed(self, context, events):
            self.batches.append(events)

    exporter = Exporter()
    plugins = isolated_plugins(("usage", usage_plugin), ("exporter", exporter))
    assert not plugins.errors
    plugins.hooks.fire("ogelkit_usage_flushed", context=None, events=[{"id": "1"}])
    assert exporter.batches == [[{"id": "1"}]]
    # without the usage plugin the hook is unknown: a misspelt or orphan impl is reported
    orphan = isolated_plugins(("exporter", Exporter()))
    assert any("ogelkit_usage_flushed" in e for e in orphan.errors)
