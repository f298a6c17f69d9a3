"""``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` in string values, after parsing.

Interpolating after TOML parsing (not on the raw text) means a variable can never inject
TOML syntax, and errors point at the dotted path of the value that used it. ``$${`` is a
literal ``${``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ogelkit.config.errors import ErrorCollector

_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-|:\?|\?)([^}]*))?\}")


class Unresolved(str):
    """A value whose variable was missing; validation skips it (the error is already out)."""


def interpolate(data: Any, env: Mapping[str, str], errors: ErrorCollector, path: str = "") -> Any:
    if isinstance(data, dict):
        return {k: interpolate(v, env, errors, _join(path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, errors, f"{path}[{i}]") for i, v in enumerate(data)]
    if isinstance(data, str) and "$" in data:
        return _expand(data, env, errors, path)
    return data


def _expand(text: str, env: Mapping[str, str], errors: ErrorCollector, path: str) -> str:
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        if m.group(0) == "$${":
            return "${"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return (arg or "") if (value is None if op == "-" else empty) else (value or "")
        if op in (":?", "?"):
            if value is None if op == "?" else empty:
                missing = True
                errors.add(path, f"environment variable {name} is not set: {arg or 'required'}",
                           expected=f"${name} to be set", found="nothing")
                return ""
            return value or ""
        if value is None:
            missing = True
            errors.add(path, f"environment variable {name} is not set",
                       expected=f"${name} to be set (or a default: ${{{name}:-value}})",
                       found="nothing")
            return ""
        return value

    result = _REF.sub(sub, text)
    return Unresolved(result) if missing else result


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)
