import pytest

from ogelkit.tiers import DEFAULT_TIER_TABLE
from ogelkit.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0), ("150ms", 0.15), ("5min", 300.0), ("2h", 7200.0), (3, 3.0), ("1.5", 1.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["ten seconds", "-1s", True, "5 parsecs"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "size"), [
    ("16MB", 16 * 1024**2), ("1GiB", 1024**3), (512, 512), ("64kB", 65536),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_format_roundtrip():
    assert format_duration(600.0) == "10min"
    assert format_duration(0.25) == "250ms"
    assert format_size(16 * 1024**2) == "16MB"
    assert format_size(None) == "unlimited"


def test_default_tier_table_matches_design():
    free, starter, pro, ent = (DEFAULT_TIER_TABLE[n] for n in ("free", "starter", "pro", "enterprise"))
    assert [t.connections for t in (free, starter, pro, ent)] == [5, 10, 50, 100]
    assert [t.ops_per_second for t in (free, starter, pro, ent)] == [10, 50, 200, None]
    assert [t.burst for t in (free, starter, pro, ent)] == [20, 100, 400, None]
    assert [t.statement_timeout for t in (free, starter, pro, ent)] == [10, 30, 60, 120]
    assert [t.cost_ceiling for t in (free, starter, pro, ent)] == [10_000, 50_000, 200_000, None]
    assert [t.idle_before_sleep for t in (free, starter, pro, ent)] == [300, 900, None, None]
    assert free.work_mem == 16 * 1024**2 and ent.work_mem == 512 * 1024**2
    assert ent.storage == 1024**4


def test_upgrade_hint_names_the_next_bigger_tier():
    free = DEFAULT_TIER_TABLE["free"]
    hint = DEFAULT_TIER_TABLE.upgrade_hint(free, "connections", lambda n: f"{n} connections")
    assert hint == "Upgrade to starter for 10 connections."
    ent = DEFAULT_TIER_TABLE["enterprise"]
    assert DEFAULT_TIER_TABLE.upgrade_hint(ent, "connections", str) is None
    pro = DEFAULT_TIER_TABLE["pro"]
    assert DEFAULT_TIER_TABLE.next_with(pro, "cost_ceiling").name == "enterprise"
