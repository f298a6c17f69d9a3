"""The audit log: rate-limited lines, a bounded ring, search."""

from __future__ import annotations

import json
import logging

from ogelkit.audit import AuditLog
from ogelkit.logs import JsonFormatter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog) -> list[dict]:
    fmt = JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if r.name == "ogelkit.audit"]


def test_a_storm_is_rate_limited_and_the_next_line_says_how_much_was_left_out(caplog):
    clock = Clock()
    suppressed = []
    audit = AuditLog(keep=50, log_rate=2.0, log_burst=3, clock=clock,
                     on_suppressed=lambda: suppressed.append(1))
    caplog.set_level(logging.INFO, logger="ogelkit.audit")
    for i in range(10):
        audit.record("operation_refused", tenant="acme", reason="rate", n=i)
    assert len(_lines(caplog)) == 3  # the burst
    assert audit.suppressed == 7 and audit.suppressed_total == 7 and len(suppressed) == 7
    assert len(audit.entries) == 10  # every event is kept for the admin API
    clock.now += 1.0  # two more tokens
    audit.record("login_failed", tenant="acme", user="acme", client="10.0.0.1:5000")
    lines = _lines(caplog)
    assert len(lines) == 4
    last = lines[-1]
    assert last["msg"] == "login_failed" and last["suppressed"] == 7 and last["audit"] is True
    assert last["tenant"] == "acme" and last["client"] == "10.0.0.1:5000"
    assert audit.suppressed == 0


def test_the_ring_is_bounded_and_searchable():
    audit = AuditLog(keep=5, log_rate=1000, log_burst=1000)
    for i in range(8):
        audit.record("login_failed" if i % 2 else "connection_refused",
                     tenant=f"t{i % 3}", text=f"event number {i}", layer=None, database="")
    assert [e["seq"] for e in audit.entries] == [4, 5, 6, 7, 8]
    assert "layer" not in audit.entries[0] and "database" not in audit.entries[0]
    assert [e["seq"] for e in audit.query()] == [8, 7, 6, 5, 4]  # newest first
    assert [e["seq"] for e in audit.query(event="login_failed")] == [8, 6, 4]
    assert [e["seq"] for e in audit.query(event="login_failed,connection_refused",
                                          limit=2)] == [8, 7]
    assert [e["seq"] for e in audit.query(before=7, limit=2)] == [6, 5]
    assert [e["seq"] for e in audit.query(tenant="t1")] == [8, 5]
    assert [e["seq"] for e in audit.query(text="NUMBER 6")] == [7]


def test_fields_named_like_log_record_attributes_do_not_break_logging(caplog):
    caplog.set_level(logging.INFO, logger="ogelkit.audit")
    audit = AuditLog()
    audit.record("tenant_changed", name="x", msg="y", tenant="acme")
    line = _lines(caplog)[-1]
    assert line["a_name"] == "x" and line["a_msg"] == "y" and line["msg"] == "tenant_changed"
