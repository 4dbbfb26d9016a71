"""Polling and login helpers shared by tests."""

from __future__ import annotations

import re
import time

from django.db import close_old_connections

from apps.supervisor import selectors
from apps.supervisor.models import Application


def wait_for_status(name: str, expected: str, *, env: str = "local", timeout: float = 30.0):
    """Wait until the app shows `expected` on `env` (background starts run in threads)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        close_old_connections()
        application = selectors.application_list_with_status().get(name=name)
        seen = selectors.application_statuses(application).get(env)
        if seen == expected:
            return application
        time.sleep(0.05)
    raise AssertionError(f"{name}@{env} stayed {seen!r}, expected {expected!r}")


CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def admin_login(client, prefix: str, username: str, password: str):
    """Log in through an admin login form under `prefix` ("/apps/shop/admin/" or "/admin/")."""
    page = client.get(f"{prefix}login/")
    assert page.status_code == 200, page.status_code
    token = CSRF_RE.search(page.content.decode()).group(1)
    return client.post(
        f"{prefix}login/?next={prefix}",
        {"csrfmiddlewaretoken": token, "username": username, "password": password, "next": prefix},
    )


def app_row(name: str) -> Application:
    return Application.objects.get(name=name)
