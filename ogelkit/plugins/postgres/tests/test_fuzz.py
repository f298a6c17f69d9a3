"""The CI-sized run of ``bench/fuzz_postgres.py``: a few thousand random and mutated frames
at the Postgres door, with another tenant's canary client (issue 16)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[4] / "bench" / "fuzz_postgres.py"


def _fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_postgres", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_postgres"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_fuzzed_frames_give_no_crash_no_hang_and_the_canary_is_served(mode):
    figures = _fuzzer().run(frames=3000, seconds=25, seed=11, mode=mode)
    print(figures.line())
    assert figures.frames >= 1000, figures.line()
    assert figures.crashes == 0, figures.crash_samples
    assert figures.hangs == 0, figures.hang_samples
    assert figures.canary_failures == 0
    assert figures.canary_queries > 0


def test_the_fuzzer_counts_crashes(monkeypatch):
    """The fuzzer must be able to fail: a relay that raises on a Bind is counted."""
    from ogelkit_postgres.connection import PostgresConnection

    original = PostgresConnection._bind

    def broken(self, data, pos, end, run, srv):
        if data.find(b"p1", pos, end) >= 0:
            raise RuntimeError("planted bug")
        return original(self, data, pos, end, run, srv)

    monkeypatch.setattr(PostgresConnection, "_bind", broken)
    figures = _fuzzer().run(frames=600, seconds=20, seed=5, preauth_share=0.0)
    assert figures.crashes > 0
