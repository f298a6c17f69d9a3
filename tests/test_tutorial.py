"""docs/dev/tutorial.md, followed as written: a third-party plugin installed beside the
workspace with `uv pip install -e` is discovered, and survives the bootstrap that
scripts/test.sh runs (uv sync --inexact)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "plugins" / "ogelkit-layer-denylist"
DIST = "ogelkit-layer-tutorialcheck"


def _copy_as_new_plugin(dest: Path) -> Path:
    """The tutorial's plugin under another name, so it is not a workspace member."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    (dest / "src" / "ogelkit_layer_denylist").rename(dest / "src" / "ogelkit_layer_tutorialcheck")
    for path in [dest / "pyproject.toml", *dest.rglob("*.py")]:
        text = path.read_text()
        text = text.replace("ogelkit-layer-denylist", DIST)
        text = text.replace("ogelkit_layer_denylist", "ogelkit_layer_tutorialcheck")
        text = text.replace('type_name = "denylist"', 'type_name = "tutorialcheck"')
        text = text.replace("denylist = ", "tutorialcheck = ")
        path.write_text(text)
    pyproject = dest / "pyproject.toml"
    # Outside the workspace: depend on the installed core, not on a workspace source.
    pyproject.write_text(pyproject.read_text().replace(
        "[tool.uv.sources]\nogelkit-core = { workspace = true }\n", ""))
    return dest


def _plugins() -> str:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "ogelkit"), "plugins"], check=True,
                          capture_output=True, text=True, cwd=ROOT).stdout


def test_a_plugin_installed_beside_the_workspace_survives_the_bootstrap(tmp_path):
    plugin = _copy_as_new_plugin(tmp_path / DIST)
    python = str(ROOT / ".venv" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    try:
        subprocess.run(["uv", "pip", "install", "--quiet", "--python", python, "-e", str(plugin)],
                       check=True, cwd=ROOT, env=env)
        assert "tutorialcheck" in _plugins()
        subprocess.run(["bash", "scripts/bootstrap.sh"], check=True, cwd=ROOT, env=env,
                       capture_output=True)
        (line,) = [ln for ln in _plugins().splitlines() if ln.startswith("tutorialcheck ")]
        assert "layer:tutorialcheck" in line and line.endswith("loaded"), line
    finally:
        subprocess.run(["uv", "pip", "uninstall", "--quiet", "--python", python, DIST],
                       cwd=ROOT, env=env)
    assert "tutorialcheck" not in _plugins()

