#!/usr/bin/env python3
"""Write the option tables in the docs from the config models, so docs cannot drift.

    python scripts/gen_docs.py          # rewrite the tables in place
    python scripts/gen_docs.py --check  # exit 1 and name the files that are out of date

A table lives between ``<!-- BEGIN options:<key> -->`` and ``<!-- END options:<key> -->``.
Keys: the core sections (listen, gateway, control, state, plugins, tiers, price, tenants,
databases) and ``backend:<type>`` / ``layer:<type>`` for every installed plugin type.
``<!-- BEGIN hooks -->`` ... ``<!-- END hooks -->`` holds the hook reference, rendered from
the docstrings in ``ogelkit.hookspecs``.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
from pathlib import Path

from ogelkit import hookspecs
from ogelkit.config import models, options_table
from ogelkit.plugins import load_plugins

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- BEGIN options:(?P<key>[\w:-]+) -->\n)(?P<body>.*?)(<!-- END options:(?P=key) -->)",
                   re.DOTALL)

CORE = {
    "listen": models.ListenConfig,
    "gateway": models.GatewayConfig,
    "control": models.ControlConfig,
    "state": models.StateConfig,
    "lifecycle": models.LifecycleConfig,
    "audit": models.AuditConfig,
    "limits": models.LimitsConfig,
    "plugins": models.PluginsConfig,
    "tiers": models.TierConfig,
    "price": models.PriceConfig,
    "tenants": models.TenantSeed,
    "databases": models.DatabaseSeed,
}


def models_by_key() -> dict[str, type]:
    out = dict(CORE)
    plugins = load_plugins()
    for name, cls in plugins.backends.items():
        out[f"backend:{name}"] = cls.Config
    for name, cls in plugins.layers.items():
        out[f"layer:{name}"] = cls.Config
    return out


def table(model: type) -> str:
    rows = ["| option | type | default | description |", "|---|---|---|---|"]
    for name, typ, default, doc in options_table(model):
        doc = " ".join(doc.split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {typ} | {default} | {doc} |")
    return "\n".join(rows) + "\n"


HOOKS = re.compile(r"(<!-- BEGIN hooks -->\n)(.*?)(<!-- END hooks -->)", re.DOTALL)


def hook_functions() -> dict[str, tuple[object, str | None]]:
    """Every hook spec: the core's, and those plugins declare (``ogelkit_add_hookspecs``),
    with the module that declares a plugin's."""
    specs: dict[str, tuple[object, str | None]] = {
        n: (getattr(hookspecs, n), None) for n in dir(hookspecs) if n.startswith("ogelkit_")}
    pm = load_plugins().pm
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name)
        spec = getattr(caller, "spec", None)
        if name.startswith("ogelkit_") and spec is not None and name not in specs:
            specs[name] = (spec.function, spec.function.__module__)
    return specs


def hooks_reference() -> str:
    parts = []
    for name, (fn, module) in sorted(hook_functions().items()):
        sig = str(inspect.signature(fn)).replace("'", "")
        doc = inspect.cleandoc(fn.__doc__ or "").replace("``", "`")
        doc = re.sub(r":param (\w+):", r"- `\1`:", doc)
        doc = doc.replace(":return:", "- returns:").replace(".. versionadded::", "Added in")
        head, _, example = doc.partition("Example::")
        # Continuation lines of a list item join the item (indented text is code in Markdown).
        doc = re.sub(r"\n {4}(?=\S)", " ", head)
        if example:
            doc += "Example:\n\n```python\n" + textwrap.dedent(example).strip() + "\n```"
        where = f"Declared by a plugin, in `{module}`.\n\n" if module else ""
        parts.append(f"### `{name}`\n\n{where}```python\n{name}{sig}\n```\n\n{doc.strip()}\n")
    return "\n".join(parts)


def render(text: str, known: dict[str, type]) -> tuple[str, list[str]]:
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        key = m.group("key")
        if key not in known:
            missing.append(key)
            return m.group(0)
        return m.group(1) + table(known[key]) + m.group(4)

    text = HOOKS.sub(lambda m: m.group(1) + hooks_reference() + m.group(3), text)
    return BLOCK.sub(sub, text), missing


def main(argv: list[str]) -> int:
    check = "--check" in argv
    known = models_by_key()
    stale, problems = [], []
    pages = sorted((ROOT / "docs").rglob("*.md")) + sorted(ROOT.glob("examples/plugins/*/README.md"))
    for path in pages:
        text = path.read_text()
        new, missing = render(text, known)
        problems += [f"{path.relative_to(ROOT)}: no installed model for options:{k}" for k in missing]
        if new != text:
            stale.append(str(path.relative_to(ROOT)))
            if not check:
                path.write_text(new)
    for p in problems:
        print(p, file=sys.stderr)
    if check and stale:
        print("out of date (run python scripts/gen_docs.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
