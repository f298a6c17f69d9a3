"""The audit log through the Postgres front door: a failed login, a refused connection, a
rate-limited operation and a tier change each give one line (no password in any) and are
found again through GET /admin/audit."""

from __future__ import annotations

import logging

import httpx
import psycopg
import pytest

from . import conftest
from .conftest import Tenant, thread_gateway

LAYERS = '[[layers]]\ntype = "gatekeeper"\n\n[[layers]]\ntype = "ratelimit"\n'
TIERS = '[tiers.free]\nconnections = 1\nops_per_second = 2\nburst = 2\n'
ADMIN = {"authorization": "Bearer test-admin-token"}


@pytest.fixture(autouse=True)
def _layers(monkeypatch):
    monkeypatch.setattr(conftest, "PLUGINS", conftest.PLUGINS + ",gatekeeper,ratelimit")
    monkeypatch.setenv("OGELKIT_LOAD_PLUGINS", conftest.PLUGINS)


def test_refusals_failed_logins_and_tier_changes_are_audited(workdir, caplog):
    caplog.set_level(logging.INFO, logger="ogelkit.audit")
    tenant = Tenant("free")
    with thread_gateway(workdir, [tenant], layers=LAYERS, extra=TIERS) as gw:
        out = gw.psql(tenant, "-c", "SELECT 1", password="not-the-password")
        assert out.returncode != 0
        out = gw.psql(Tenant("free"), "-c", "SELECT 1")  # a tenant that does not exist
        assert out.returncode != 0
        with psycopg.connect(gw.conninfo(tenant), autocommit=True) as conn:
            # the tier allows one connection: a second one is refused at the cap
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(gw.conninfo(tenant), autocommit=True)
            refused = 0
            for _ in range(8):  # 2/s with a burst of 2: most of these are refused
                try:
                    conn.execute("SELECT 1")
                except psycopg.errors.DatabaseError:
                    refused += 1
            assert refused >= 4
        base = gw.running.url("/admin")
        r = httpx.patch(f"{base}/tenants/{tenant.slug}", json={"tier": "starter"},
                        headers=ADMIN)
        assert r.status_code == 200, r.text

        def audit(**params: str) -> list[dict]:
            r = httpx.get(f"{base}/audit", params=params, headers=ADMIN)
            assert r.status_code == 200, r.text
            return r.json()["items"]

        failed = audit(event="login_failed")
        assert {e["user"] for e in failed} >= {tenant.slug}
        assert all(e["reason"] == "auth" and e["protocol"] == "postgres" and e["client"]
                   for e in failed)
        capped = audit(event="connection_refused", tenant=tenant.slug)
        assert capped and capped[0]["layer"] == "gatekeeper" \
            and capped[0]["reason"] == "connections"
        ops = audit(event="operation_refused", tenant=tenant.slug)
        assert len(ops) == refused
        assert all(e["layer"] == "ratelimit" and e["reason"] == "rate" for e in ops)
        changed = audit(event="tier_changed", tenant=tenant.slug)
        assert [(e["previous"], e["tier"]) for e in changed] == [("free", "starter")]
        assert len(audit(limit="2")) == 2
        assert httpx.get(f"{base}/audit", params={"limit": "0"},
                         headers=ADMIN).status_code == 400
        assert httpx.get(f"{base}/audit").status_code == 401

    lines = [r for r in caplog.records if r.name == "ogelkit.audit"]
    assert {r.getMessage() for r in lines} >= {"login_failed", "connection_refused",
                                               "operation_refused", "tier_changed"}
    for record in lines:
        assert tenant.password not in str(vars(record)) and "not-the-password" not in \
            str(vars(record))
