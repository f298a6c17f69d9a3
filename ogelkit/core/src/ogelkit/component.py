"""What backends and layers have in common: a TOML type name, an options model, an instance
name, the gateway context, and optional methods detected from what a subclass overrides."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import attrs

if TYPE_CHECKING:
    from ogelkit.context import GatewayContext


@attrs.define(kw_only=True)
class NoOptions:
    """Config model for a plugin without options."""


#: The options type of a component: ``class MyLayer(ogelkit.Layer[MyOptions])`` makes
#: ``self.config`` a ``MyOptions`` for type checkers, with no re-annotation.
OptionsT = TypeVar("OptionsT")


class Component(Generic[OptionsT]):
    type_name: ClassVar[str] = ""  # the TOML ``type``
    Config: ClassVar[type] = NoOptions  # attrs class of the plugin's options

    def __init__(self, config: OptionsT, *, name: str, context: GatewayContext):
        """Take the validated config. No I/O here: that belongs in ``open``."""
        self.config = config
        self.name = name
        self.context = context

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def overridden(cls: type, base: type, names: tuple[str, ...]) -> frozenset[str]:
    """The methods among ``names`` that ``cls`` implements itself (not inherited from base)."""
    return frozenset(n for n in names if getattr(cls, n) is not getattr(base, n))
