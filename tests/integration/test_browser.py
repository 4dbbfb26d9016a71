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

pytestmark = pytest.mark.django_db(transaction=True)
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
