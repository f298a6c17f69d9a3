"""Validate plain TOML data against attrs classes, collecting every error with its path.

Plugins describe their options as ``attrs`` classes with type annotations; this module turns
a TOML table into an instance or into precise errors (unknown option with did-you-mean,
missing option, wrong type with what was expected and found). Supported annotations: ``str``,
``int``, ``float``, ``bool``, ``Duration`` (seconds), ``Size`` (bytes), ``Literal[...]``,
``X | None`` (also spelled ``"unlimited"`` for numbers), ``list[X]``, ``dict[str, X]``,
nested attrs classes and ``Any``.

Documentation for an option goes in ``attrs.field(metadata={"doc": "..."})``; the docs pages
and ``ogelkit check --options`` read it from there.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, TypeVar, Union

import attrs

from ogelkit.config.errors import ErrorCollector, describe_value, did_you_mean
from ogelkit.config.interpolate import Unresolved
from ogelkit.units import parse_duration, parse_size


class _Unit:
    def __init__(self, name: str, parse, expected: str):
        self.name = name
        self.parse = parse
        self.expected = expected

    def __repr__(self) -> str:
        return self.name


_DURATION = _Unit("duration", parse_duration, 'a duration such as "30s", "150ms" or "5min"')
_SIZE = _Unit("size", parse_size, 'a size such as "16MB" or a number of bytes')

#: A duration option, stored in seconds.
Duration = Annotated[float, _DURATION]
#: A size option, stored in bytes.
Size = Annotated[int, _SIZE]

_INVALID = object()
UNLIMITED = "unlimited"


def option(default: Any = attrs.NOTHING, *, doc: str, factory: Any = None,
           unlimited: bool = False, **kw: Any) -> Any:
    """``attrs.field`` with a ``doc`` string, the way every option should be declared.

    ``unlimited=True`` documents that ``None`` (spelled ``"unlimited"`` in TOML) means no
    limit; otherwise ``None`` reads as "not set".
    """
    metadata = {"doc": doc, "unlimited": unlimited}
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata, **kw)
    return attrs.field(default=default, metadata=metadata, **kw)


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def describe_type(tp: Any, *, unlimited: bool = True) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        unit = typing.get_args(tp)[1]
        return unit.expected if isinstance(unit, _Unit) else describe_type(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' if isinstance(a, str) else str(a)
                                     for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " or ".join(describe_type(a) for a in args)
        if unlimited and type(None) in typing.get_args(tp):
            return f'{inner} or "{UNLIMITED}"'
        return inner
    if origin is list:
        return f"an array of {_plural(describe_type(typing.get_args(tp)[0]))}"
    if origin is dict:
        return "a table"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if attrs.has(tp):
        return "a table"
    return "a value"


def _plural(desc: str) -> str:
    for article in ("an ", "a "):
        if desc.startswith(article):
            return desc[len(article):] + "s"
    return desc

T = TypeVar("T")


def default_options(cls: type[T]) -> T:
    """An options class with every default applied, as the config loader would build it
    from an empty table (durations and sizes converted)."""
    errors = ErrorCollector("defaults")
    value = structure(cls, {}, cls.__name__, errors)
    if value is None:
        raise ValueError(f"{cls.__qualname__} has required options: {errors}")
    return value


def structure(cls: type, data: Any, path: str, errors: ErrorCollector,
              *, ignore: tuple[str, ...] = ()) -> Any:
    """Build ``cls`` from ``data`` or record errors; returns None when invalid."""
    if isinstance(data, Unresolved):
        return None
    if not isinstance(data, dict):
        errors.add(path, "wrong type", expected="a table", found=describe_value(data))
        return None
    fields = attrs.fields_dict(cls)
    hints = field_types(cls)
    before = len(errors)
    for key in data:
        if key in fields or key in ignore:
            continue
        known = [f for f in fields if not f.startswith("_")]
        hint = did_you_mean(key, known)
        errors.add(_join(path, key), f'unknown option "{key}"',
                   hint=(hint + " " if hint else "") + f"Known options: {', '.join(known) or 'none'}.")
    kwargs = {}
    invalid = False
    for name, f in fields.items():
        if not f.init:
            continue
        if name in data:
            value = convert(hints[name], data[name], _join(path, name), errors)
            if value is _INVALID:
                invalid = True  # already reported (here or by interpolation)
            elif f.validator is not None and not _validate(f, value, data[name],
                                                          _join(path, name), errors):
                invalid = True
            else:
                kwargs[f.alias or name] = value
        elif f.default is attrs.NOTHING:
            errors.add(_join(path, name), "missing required option", expected=describe_type(hints[name]))
    if invalid or len(errors) > before:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        errors.add(path, str(exc))
        return None


def _validate(f: attrs.Attribute, value: Any, raw: Any, path: str,
              errors: ErrorCollector) -> bool:
    """Run one option's attrs validator on its own, so that every bad option of a table is
    reported at its own path (attrs, building the instance, stops at the first)."""
    try:
        f.validator(None, f, value)  # type: ignore[misc]
    except (TypeError, ValueError) as exc:
        errors.add(path, str(exc), found=describe_value(raw))
        return False
    return True


def convert(tp: Any, value: Any, path: str, errors: ErrorCollector) -> Any:
    if isinstance(value, Unresolved):
        return _INVALID
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, unit = typing.get_args(tp)[:2]
        if isinstance(unit, _Unit):
            try:
                return unit.parse(value)
            except (ValueError, TypeError) as exc:
                errors.add(path, str(exc), expected=unit.expected, found=describe_value(value))
                return _INVALID
        return convert(base, value, path, errors)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and isinstance(value, str) and value.lower() in (UNLIMITED, "none"):
            return None
        inner = [a for a in args if a is not type(None)]
        scratch = ErrorCollector(errors.file)
        for candidate in inner:
            result = convert(candidate, value, path, scratch)
            if result is not _INVALID:
                return result
        if len(inner) == 1:
            errors.errors.extend(scratch.errors)
        else:
            errors.add(path, "wrong type", expected=describe_type(tp), found=describe_value(value))
        return _INVALID
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = did_you_mean(str(value), [str(c) for c in choices])
        errors.add(path, "not an allowed value", expected=describe_type(tp),
                   found=describe_value(value), hint=hint)
        return _INVALID
    if origin is list:
        if not isinstance(value, list):
            errors.add(path, "wrong type", expected=describe_type(tp), found=describe_value(value))
            return _INVALID
        (item_tp,) = typing.get_args(tp)
        out = [convert(item_tp, v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return _INVALID if any(v is _INVALID for v in out) else out
    if origin is dict:
        if not isinstance(value, dict):
            errors.add(path, "wrong type", expected="a table", found=describe_value(value))
            return _INVALID
        _, item_tp = typing.get_args(tp)
        table = {k: convert(item_tp, v, _join(path, k), errors) for k, v in value.items()}
        return _INVALID if any(v is _INVALID for v in table.values()) else table
    if attrs.has(tp):
        result = structure(tp, value, path, errors)
        return _INVALID if result is None else result
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)  # environment variables are strings
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    errors.add(path, "wrong type", expected=describe_type(tp), found=describe_value(value))
    return _INVALID


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def options_table(cls: type) -> list[tuple[str, str, str, str]]:
    """``(name, type, default, doc)`` rows for the docs' options tables."""
    rows = []
    hints = field_types(cls)
    for name, f in attrs.fields_dict(cls).items():
        if name.startswith("_"):
            continue
        unlimited = bool(f.metadata.get("unlimited"))
        if f.default is attrs.NOTHING:
            default = "required"
        elif isinstance(f.default, attrs.Factory):  # type: ignore[arg-type]  # attrs types Factory as a function
            default = repr(f.default.factory())  # type: ignore[union-attr]  # narrowed by the isinstance above
        elif f.default is None:
            default = UNLIMITED if unlimited else "not set"
        else:
            default = _show_default(hints[name], f.default)
        rows.append((name, describe_type(hints[name], unlimited=unlimited), default,
                     f.metadata.get("doc", "")))
    return rows


def _show_default(tp: Any, value: Any) -> str:
    if value == "__missing__":  # tier options: absent means "the base tier's value"
        return "base tier's"
    from ogelkit.units import format_duration, format_size
    if typing.get_origin(tp) is Annotated:
        unit = typing.get_args(tp)[1]
        if unit is _DURATION:
            return format_duration(value)
        if unit is _SIZE:
            return format_size(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
