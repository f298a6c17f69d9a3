"""Human units in config: durations ("150ms", "10s", "5min", "2h") and sizes ("16MB", "1GiB").

Config values are stored as plain numbers (seconds as ``float``, bytes as ``int``) so the
hot path never re-parses them; these helpers exist only for loading and for printing.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {
    None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    None: 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``10``, ``"10s"``, ``"150ms"``, ``"5min"``, ``"2h"``. Raises ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError('expected a duration such as "30s", "150ms", "5min" or a number of seconds')
    unit = m.group(2).lower() if m.group(2) else None
    return float(m.group(1)) * _DURATION_FACTORS[unit]


def parse_size(value: str | int) -> int:
    """Bytes from ``1024``, ``"16MB"``, ``"1GiB"`` (binary multiples: Postgres reads MB that way)."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, float):
        raise ValueError('expected a whole number of bytes or a size such as "16MB"')
    m = _SIZE.match(value)
    if not m:
        raise ValueError('expected a size such as "16MB", "1GiB" or a number of bytes')
    unit = m.group(2).lower() if m.group(2) else None
    return int(float(m.group(1)) * _SIZE_FACTORS[unit])


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unlimited"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{int(seconds // 60)}min"
    return f"{seconds:g}s"


def format_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, factor in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"
