"""attrs validators for plugin options: ``ogelkit.option(5.0, validator=validators.positive)``.

Their ``ValueError`` becomes a config error at the option's dotted path, with the message
naming the option, so every plugin words the same limit the same way.
"""

from __future__ import annotations

from typing import Any

import attrs


def positive(_inst: object, attribute: attrs.Attribute, value: Any) -> None:
    """Greater than 0."""
    if value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0")


def not_negative(_inst: object, attribute: attrs.Attribute, value: Any) -> None:
    """0 or more."""
    if value < 0:
        raise ValueError(f"{attribute.name} cannot be negative")


def at_least_one(_inst: object, attribute: attrs.Attribute, value: Any) -> None:
    """1 or more (counts, factors)."""
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1")


def ratio(_inst: object, attribute: attrs.Attribute, value: Any) -> None:
    """A share: greater than 0, at most 1."""
    if not 0 < value <= 1:
        raise ValueError(f"{attribute.name} must be in (0, 1]")


__all__ = ["at_least_one", "not_negative", "positive", "ratio"]
