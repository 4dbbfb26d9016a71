"""A real browser (Playwright + Debian chromium) that only ever reaches the supervisor."""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect, sync_playwright

from apps.supervisor import services
from apps.supervisor.models import Application
from tests.integration.test_multi_environment import create, wait_status

# Chromium and real processes: once per `make test` (its PostgreSQL half; see the Makefile).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.once]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = "/usr/bin/chromium"


@contextmanager
def browser_context():
    """Chromium driven by Playwright. Its sync API runs an event loop in this thread, so
    tests do their database work before entering this."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make test does it)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-gpu",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        context = browser.new_context()
        contacted: set[str] = set()
        context.on("request", lambda request: contacted.add(urlsplit(request.url).netloc))
        try:
            yield context, contacted
        finally:
            context.close()
            browser.close()


def test_choose_env_b_log_in_add_edit_watch_live_log_out_then_same_data_on_env_a(cluster):
    web = cluster.ensure_web()
    create(
        cluster,
        "crm",
        ["env_a", "env_b"],
        options={"admin_username": "owner", "admin_password": "owner-pass-123"},
    )
    services.application_start(application=Application.objects.get(name="crm"), actor="test")
    wait_status("crm", {"env_a": "running", "env_b": "running"})
    time.sleep(1.2)  # the web process trusts its route cache for a second
    with browser_context() as (context, contacted):
        _walk_through(context, web)
    assert contacted == {urlsplit(web).netloc}, contacted


def _walk_through(context, web: str) -> None:
    page = context.new_page()

    page.goto(f"{web}/apps/crm/admin/")
    expect(page.get_by_text("runs on several environments")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "proxy-chooser.png")
    page.get_by_role("link", name="Open on env_b").click()
    page.fill("#id_username", "owner")
    page.fill("#id_password", "owner-pass-123")
    page.get_by_role("button", name=re.compile("Log in")).click()
    expect(page.locator("#notes-note")).to_be_visible()

    live = context.new_page()
    live.goto(f"{web}/apps/crm/live/")
    expect(live.locator("#state")).to_have_text("live")
    expect(live.locator("#count")).to_have_text("0")

    page.goto(f"{web}/apps/crm/admin/notes/note/add/")
    page.fill("#id_title", "First note")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("was added successfully")).to_be_visible()
    expect(live.locator("#count")).to_have_text("1")  # pushed over the proxied websocket
    live.screenshot(path=ARTIFACTS / "proxy-live-notes.png")

    page.locator("#result_list").get_by_role("link", name="First note").click()
    page.fill("#id_title", "First note, edited")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_text("was changed successfully")).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("Logged out")).to_be_visible()

    page.goto(f"{web}/apps/crm/?_environment=env_a")
    page.fill("#id_username", "owner")
    page.fill("#id_password", "owner-pass-123")
    page.get_by_role("button", name=re.compile("Log in")).click()
    page.goto(f"{web}/apps/crm/admin/notes/note/")
    expect(
        page.locator("#result_list").get_by_role("link", name="First note, edited")
    ).to_be_visible()
    page.screenshot(path=ARTIFACTS / "proxy-env-a-same-data.png")


def test_supervisor_ui_live_badges_proxy_stop_history_and_socket_recovery(cluster):
    """Issue 5: create on two environments, start, watch both badges turn `running` without a
    reload, open through the proxy, stop, see the history; the page survives a web restart."""
    web = cluster.ensure_web()
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser(username="operator", password="operator-pass-1")
    with browser_context() as (context, contacted):
        page = context.new_page()
        page.goto(f"{web}/admin/login/")
        page.fill("#id_username", "operator")
        page.fill("#id_password", "operator-pass-1")
        page.get_by_role("button", name=re.compile("Log in")).click()
        expect(page.locator("#supervisor-dashboard")).to_be_visible()

        page.goto(f"{web}/admin/supervisor/application/add/")
        page.fill("#id_name", "shop")
        page.fill("#id_title", "Shop")
        page.get_by_label("env_a").check()
        page.get_by_label("env_b").check()
        page.select_option("#id_db_type", "sqlite")
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.get_by_text("was added successfully")).to_be_visible()

        page.goto(f"{web}/admin/supervisor/application/")
        expect(page.locator("#live-status-banner")).to_have_text("Live")
        row = page.locator("tr", has=page.get_by_role("link", name="shop", exact=True))
        badges = row.locator("[data-deployment] .app-status")
        expect(badges).to_have_count(2)
        row.locator("input.action-select").check()
        page.select_option("select[name=action]", "start_apps")
        page.get_by_role("button", name="Go").first.click()
        expect(page.get_by_text("Start requested")).to_be_visible()
        # From here on the page is never reloaded: the badges change by themselves.
        page.evaluate("window.__notReloaded = true")
        expect(badges.nth(0)).to_have_text("running", timeout=60_000)
        expect(badges.nth(1)).to_have_text("running", timeout=60_000)
        assert page.evaluate("window.__notReloaded") is True
        page.screenshot(path=ARTIFACTS / "supervisor-app-list-live.png", full_page=True)

        with context.expect_page() as opened:
            row.get_by_role("link", name="Visit").click()
        visit = opened.value
        expect(visit.get_by_text("runs on several environments")).to_be_visible()
        visit.screenshot(path=ARTIFACTS / "supervisor-chooser.png")
        visit.get_by_role("link", name="Open on env_a").click()
        expect(visit.locator("#id_username")).to_be_visible()  # shop's own login page
        visit.close()

        row.locator("input.action-select").check()
        page.select_option("select[name=action]", "stop_apps")
        page.get_by_role("button", name="Go").first.click()
        expect(badges.nth(0)).to_have_text("stopped", timeout=30_000)
        expect(badges.nth(1)).to_have_text("stopped", timeout=30_000)

        # The web process goes away: the page says so; it comes back: the page reconnects.
        cluster.procs["web"].stop()
        expect(page.locator("#live-status-banner")).to_contain_text("disconnected")
        cluster.procs["web"].start()
        expect(page.locator("#live-status-banner")).to_have_text("Live", timeout=45_000)

        row.get_by_role("link", name="shop", exact=True).click()
        history = page.locator(".field-history")
        expect(history).to_contain_text("running → stopped")
        expect(history).to_contain_text("operator")
        expect(page.locator(".field-status_detail")).to_contain_text("stopped")
        page.screenshot(path=ARTIFACTS / "supervisor-app-history.png", full_page=True)

        page.goto(f"{web}/admin/supervisor/environment/")
        expect(page.locator("[data-env-state=env_a]")).to_have_text("online")
        expect(page.locator("[data-heartbeat=env_a]")).to_contain_text("s ago")
        page.screenshot(path=ARTIFACTS / "supervisor-environments.png", full_page=True)
    assert contacted == {urlsplit(web).netloc}, contacted
