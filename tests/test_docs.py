"""Docs cannot drift from code: option tables, the hook reference, one page per plugin."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ogelkit import hookspecs
from ogelkit.config.schema import options_table
from ogelkit.plugins import load_plugins

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = load_plugins()


def test_generated_tables_and_hook_reference_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_hook_has_a_reference_entry():
    page = (ROOT / "docs" / "dev" / "hooks.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("ogelkit_")]
    assert hooks
    for name in hooks:
        assert f"### `{name}`" in page, f"{name} is missing from docs/dev/hooks.md"
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"


def _page(kind: str, type_name: str, cls: type) -> Path:
    dist_dir = Path(sys.modules[cls.__module__.split(".")[0]].__file__).resolve().parents[2]
    candidates = [ROOT / "docs" / ("plugins" if kind == "backend" else "layers") / f"{type_name}.md",
                  dist_dir / "README.md"]
    for path in candidates:
        if path.exists() and f"options:{kind}:{type_name}" in path.read_text():
            return path
    return candidates[0]


@pytest.mark.parametrize(("kind", "type_name"),
                         [("backend", n) for n in sorted(PLUGINS.backends)] +
                         [("layer", n) for n in sorted(PLUGINS.layers)])
def test_every_plugin_type_has_a_page_with_every_option(kind, type_name):
    cls = (PLUGINS.backends if kind == "backend" else PLUGINS.layers)[type_name]
    page = _page(kind, type_name, cls)
    assert page.exists(), f"no docs page for {kind} {type_name}: expected {page.relative_to(ROOT)}"
    text = page.read_text()
    for name, *_ in options_table(cls.Config):
        assert re.search(rf"`{re.escape(name)}`", text), f"option {name} missing from {page}"


def test_readme_quickstart_commands_exist():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test.sh" in readme and "exec scripts/test.sh" in ci
    for script in re.findall(r"(scripts/[\w-]+\.sh)", readme):
        assert (ROOT / script).exists(), script
