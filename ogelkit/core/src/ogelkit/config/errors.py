"""Config errors: every problem at once, each with file, dotted path, expected and found."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

import attrs


@attrs.frozen
class ConfigError:
    file: str
    path: str  # dotted path, "backends.main.port" or "layers[1].rate"
    message: str
    expected: str | None = None
    found: str | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        text = f"{where}: {self.message}"
        if self.expected is not None or self.found is not None:
            parts = []
            if self.expected is not None:
                parts.append(f"expected {self.expected}")
            if self.found is not None:
                parts.append(f"found {self.found}")
            text += f" ({', '.join(parts)})"
        if self.hint:
            text += f"\n  {self.hint}"
        return text


class ConfigErrors(Exception):
    """Raised with *all* problems found; ``messages`` are the lines a user sees."""

    def __init__(self, errors: Iterable[ConfigError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    @property
    def messages(self) -> list[str]:
        return [str(e) for e in self.errors]


class ErrorCollector:
    """Collects errors for one file while validation walks the whole document."""

    def __init__(self, file: str):
        self.file = file
        self.errors: list[ConfigError] = []

    def add(self, path: str, message: str, *, expected: str | None = None,
            found: str | None = None, hint: str | None = None) -> None:
        self.errors.append(ConfigError(self.file, path, message, expected, found, hint))

    def __len__(self) -> int:
        return len(self.errors)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ConfigErrors(self.errors)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'Did you mean "{close[0]}"?' if close else None


def describe_value(value: object) -> str:
    """How a found value reads in an error: ``the string "5432x"``, ``the integer 5``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value:g}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f'the string "{shown}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
