"""No ``log.<level>(..., extra={...})`` in the core or a first-party plugin uses a key that
``logging`` reserves: such a call raises ``KeyError`` as soon as its level is enabled, and
takes the calling code down with it (a cloud-driver project creation once did)."""

from __future__ import annotations

import ast
from pathlib import Path

from ogelkit.logs import RESERVED

ROOT = Path(__file__).resolve().parents[3]


def _extras(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "extra" and isinstance(kw.value, ast.Dict):
                    for key in kw.value.keys:
                        if isinstance(key, ast.Constant) and isinstance(key.value, str):
                            yield node.lineno, key.value


def test_no_log_extra_uses_a_reserved_name():
    sources = [p for p in ROOT.glob("ogelkit/**/src/**/*.py") if ".venv" not in p.parts]
    assert len(sources) > 100  # the scan really ran over the workspace
    bad = [f"{path.relative_to(ROOT)}:{line}: extra key {key!r}"
           for path in sources for line, key in _extras(ast.parse(path.read_text()))
           if key in RESERVED]
    assert not bad, "\n".join(bad)


def test_the_scan_finds_a_reserved_key():
    tree = ast.parse('log.info("x", extra={"project": 1, "name": "n"})')
    assert [k for _, k in _extras(tree) if k in RESERVED] == ["name"]
