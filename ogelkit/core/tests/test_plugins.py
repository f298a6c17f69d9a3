"""Plugin loading through real entry points (a throwaway dist-info on PYTHONPATH)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ogelkit
from ogelkit.plugins import load_plugins


def _dist(root: Path, dist: str, version: str, entry: str, module: str, code: str) -> None:
    pkg = root / module
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(code))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[ogelkit]\n{entry} = {module}\n")
    (info / "top_level.txt").write_text(module + "\n")


@pytest.fixture
def site(tmp_path):
    _dist(tmp_path, "ogelkit-layer-brokenx", "0.3.1", "brokenx", "brokenx_plugin",
          "raise ImportError('No module named cowsay_native')\n")
    _dist(tmp_path, "ogelkit-layer-goodx", "1.2.0", "goodx", "goodx_plugin", """
        import ogelkit

        class GoodLayer(ogelkit.Layer):
            type_name = "goodx"
            def on_complete(self, op):
                pass

        @ogelkit.hookimpl
        def ogelkit_register_layers(register):
            register.layer(GoodLayer)
    """)
    return tmp_path


def _plugins_cli(site, **env):
    full_env = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-m", "ogelkit", "plugins", "--json"],
                          capture_output=True, text=True, env=full_env)


def test_broken_plugin_is_reported_by_name_and_the_rest_load(site):
    result = _plugins_cli(site, OGELKIT_LOAD_PLUGINS="goodx,brokenx")
    assert result.returncode == 1  # something is broken: say so to scripts
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["brokenx"]["status"] == "failed"
    assert rows["brokenx"]["distribution"] == "ogelkit-layer-brokenx"
    assert rows["brokenx"]["version"] == "0.3.1"
    assert "cowsay_native" in rows["brokenx"]["error"]
    assert rows["goodx"]["status"] == "loaded"
    assert rows["goodx"]["provides"] == ["layer:goodx"]


def test_human_listing_and_error_text(site):
    full_env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-m", "ogelkit", "plugins"], capture_output=True,
                            text=True, env=full_env)
    assert "goodx" in result.stdout and "ogelkit-layer-goodx" in result.stdout
    assert ('plugin "brokenx" (ogelkit-layer-brokenx 0.3.1, entry point brokenx_plugin) failed '
            "to import") in result.stderr
    assert "OGELKIT_DISABLE_PLUGINS=brokenx" in result.stderr


def test_disable_env_skips_the_broken_plugin(site):
    # The allowlist keeps this test independent of whatever else is installed.
    result = _plugins_cli(site, OGELKIT_DISABLE_PLUGINS="brokenx",
                          OGELKIT_LOAD_PLUGINS="goodx,brokenx")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["brokenx"]["status"] == "disabled"
    assert rows["goodx"]["status"] == "loaded"


def test_load_allowlist(monkeypatch, site):
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", "goodx")
    import importlib
    importlib.invalidate_caches()
    plugins = load_plugins()
    assert plugins.infos["goodx"].status == "loaded"
    assert plugins.infos["brokenx"].status == "disabled"
    assert "goodx" in plugins.layers


class Misspelled:
    @ogelkit.hookimpl
    def ogelkit_register_layer(self, register):  # missing "s"
        pass


def test_misspelled_hook_is_an_error_with_suggestion():
    plugins = load_plugins(entry_points=False, extra=[("typo", Misspelled())])
    assert plugins.errors == ['plugin "typo" (Misspelled) implements '
                              'unknown hook "ogelkit_register_layer" (did you mean '
                              '"ogelkit_register_layers"?)']


class LayerA(ogelkit.Layer):
    type_name = "dup"

    def on_complete(self, op):
        pass


class LayerB(ogelkit.Layer):
    type_name = "dup"

    def on_complete(self, op):
        pass


class RegistersA:
    @ogelkit.hookimpl
    def ogelkit_register_layers(self, register):
        register.layer(LayerA)


class RegistersB:
    @ogelkit.hookimpl
    def ogelkit_register_layers(self, register):
        register.layer(LayerB)


def test_duplicate_type_name_names_both():
    plugins = load_plugins(entry_points=False, extra=[("a", RegistersA()), ("b", RegistersB())])
    (error,) = plugins.errors
    assert 'layer type "dup" is registered twice' in error
    assert "(LayerA)" in error and "(LayerB)" in error


class NotALayer:
    type_name = "nope"


class RegistersJunk:
    @ogelkit.hookimpl
    def ogelkit_register_layers(self, register):
        register.layer(NotALayer)


def test_registering_a_non_layer_is_an_error():
    plugins = load_plugins(entry_points=False, extra=[("junk", RegistersJunk())])
    assert "is not a subclass of ogelkit.Layer" in plugins.errors[0]


def test_fixture_registers_for_one_test(register_plugin, ogelkit_plugins):
    assert "dup" not in ogelkit_plugins.layers


def test_register_plugin_fixture(register_plugin, load_test_config):
    register_plugin(RegistersA(), name="a")
    from ogelkit.testing import minimal_config
    cfg = load_test_config(minimal_config('[[layers]]\ntype = "dup"\n'))
    assert cfg.layers[0].cls is LayerA
