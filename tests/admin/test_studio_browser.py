"""Studio in a real headless Chromium (Debian's package, driven by Playwright): the operator
signs in, creates a tenant and a database, runs SQL in the console and sees a rate-limit
refusal appear in the live view; the tenant signs in with its own password and sees only
its own data. Screenshots go to docs/images/ when OGELKIT_SCREENSHOTS=1 (the docs show
them), to the test's temporary directory otherwise."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from .conftest import ADMIN_TOKEN

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@pytest.fixture
def page(tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(20_000)
        shots = DOCS_IMAGES if os.environ.get("OGELKIT_SCREENSHOTS") == "1" else tmp_path
        pg.shot = lambda name: pg.screenshot(path=str(shots / f"studio-{name}.png"),
                                             full_page=True)
        try:
            yield pg
        finally:
            browser.close()


def test_operator_and_tenant_in_the_browser(gw, page):
    slug = f"web-{secrets.token_hex(3)}"
    page.goto(gw.url("/"))
    page.fill("#operator-signin input[name=token]", ADMIN_TOKEN)
    page.click("#operator-signin button")
    expect(page.locator("#who")).to_have_text("operator")
    page.fill("#create-tenant input[name=slug]", slug)
    page.click("#create-tenant button")
    password = page.locator("#new-tenant-password").inner_text()
    assert len(password) >= 20
    page.shot("tenants")
    page.click(f"#tenants tr[data-tenant='{slug}'] a")
    page.fill("#create-database input[name=name]", "shop")
    page.select_option("#create-database select[name=kind]", "postgres")
    page.click("#create-database button")
    expect(page.locator("#new-db-dsn")).to_contain_text(f"{slug}:")
    expect(page.locator("#databases tr[data-db='shop']")).to_be_visible()
    page.click("#databases tr[data-db='shop'] a")
    page.fill("#sql-console textarea", "select 40 + 2 as answer")
    page.click("#sql-console button")
    expect(page.locator("#result-table td")).to_have_text("42")
    page.shot("console")
    # The free tier allows 3 operations/s: a burst of console runs is refused by the rate
    # limit, in the console and in the tenant's live view.
    refused = False
    for _ in range(12):
        page.click("#sql-console button")
        expect(page.locator("#console-result")).not_to_contain_text("running")
        if page.locator("#console-error").count():
            expect(page.locator("#console-error")).to_contain_text("ratelimit")
            refused = True
            break
    assert refused, "no console run was refused by the rate limit"
    page.goto(gw.url(f"/studio/#/tenant/{slug}"))
    expect(page.locator("#rejections tr[data-layer='ratelimit']")).to_be_visible(timeout=20_000)
    expect(page.locator("#recent-refusals")).to_contain_text("rate")
    page.shot("tenant")
    page.goto(gw.url("/studio/#/audit"))
    page.fill("#audit-search input[name=q]", slug)
    page.click("#audit-search button")
    expect(page.locator("#audit")).to_contain_text("operation_refused")
    # The tenant signs in with its own password and sees only itself.
    page.click("#signout")
    page.fill("#tenant-signin input[name=tenant]", slug)
    page.fill("#tenant-signin input[name=password]", password)
    page.click("#tenant-signin button")
    expect(page.locator("#who")).to_have_text(f"tenant {slug}")
    expect(page.locator("#databases tr[data-db='shop']")).to_be_visible()
    other = f"other-{secrets.token_hex(3)}"
    assert gw.api("POST", "/admin/tenants", json={"slug": other}).status_code == 201
    page.goto(gw.url(f"/studio/#/tenant/{other}"))
    expect(page.locator("main .error")).to_contain_text("no tenant")
    page.goto(gw.url("/studio/#/tenants"))
    expect(page.locator("#tenants")).to_have_count(0)  # a tenant has no tenant list
