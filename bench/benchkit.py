"""Pieces the bench/profile_*_path.py scripts share: an in-memory transport for timing a
front door's protocol without syscalls, and cProfile's report."""

from __future__ import annotations

import cProfile
import io
import pstats
from typing import Any


class FakeTransport:
    """Enough of an asyncio transport for the gateway's protocols; writes are counted."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def print_profile(prof: cProfile.Profile, sort: str, top: int) -> None:
    """Print ``prof``'s ``top`` functions by ``sort`` (a pstats key)."""
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats(sort).print_stats(top)
    print(buf.getvalue())
