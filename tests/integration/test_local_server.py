"""The "Done when" of the foundation, with real processes: manage.py commands in one shell,
the ASGI server (uvicorn) in another, a browser-like HTTP client against it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg2
import pytest
from django.conf import settings
from django.db import connection
from psycopg2 import sql

from supervisor_project.processes import asgi_server_argv
from tests.conftest import RUN_ID
from tests.integration.cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORD_RE = re.compile(r"superuser: admin / (\S+)")


@pytest.fixture
def env(tmp_path, pg_server) -> dict[str, str]:
    """A fresh local-mode installation: its own storage, and its own database on PostgreSQL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "APP_"))}
    env.update(STORAGE_DIR=str(tmp_path), APP_DB_PREFIX=settings.APP_DB_PREFIX, DEBUG="false")
    if connection.vendor == "postgresql":
        name = f"{settings.APP_DB_PREFIX}supervisor"
        conn = psycopg2.connect(
            host=pg_server.host,
            port=pg_server.port,
            user=pg_server.user,
            password=pg_server.password,
            dbname="postgres",
        )
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.close()
        env.update(
            DB_DIALECT="postgres",
            DB_HOST=pg_server.host,
            DB_PORT=str(pg_server.port),
            DB_USER=pg_server.user,
            DB_PASSWORD=pg_server.password,
            DB_DATABASE=name,
            APP_SCHEMA_DATABASE=f"{RUN_ID}_schemas",
        )
    else:
        env["DB_DIALECT"] = "sqlite"
    return env


def manage(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def server(env):
    """`make run`'s sequence: migrate, bootstrap, then the ASGI server on a free port."""
    manage(env, "migrate", "--noinput", "-v0")
    boot = manage(env, "bootstrap_local").stdout
    port = free_port()
    proc = subprocess.Popen(
        asgi_server_argv("127.0.0.1", port, "--lifespan", "on"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/admin/login/", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"server did not come up: {proc.stdout.read()}")
            time.sleep(0.1)
    yield base, boot
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def login(client: httpx.Client, base: str, app: str, password: str) -> httpx.Response:
    page = client.get(f"{base}/apps/{app}/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return client.post(
        f"{base}/apps/{app}/admin/login/?next=/apps/{app}/admin/",
        data={"csrfmiddlewaretoken": token, "username": "admin", "password": password},
    )


def test_cli_created_app_is_served_with_its_own_admin_and_users(env, server):
    base, boot = server
    assert "Supervisor superuser: admin / " in boot
    demo_password = re.search(r"Demo app superuser: admin / (\S+)", boot).group(1)

    manage(env, "apps", "create", "shop", "--title", "Shop")
    started = manage(env, "apps", "start", "shop").stdout
    shop_password = PASSWORD_RE.search(started).group(1)
    assert "shown once" in started

    with httpx.Client() as browser:
        first = browser.get(f"{base}/apps/shop/admin/")
        assert first.status_code == 302
        assert first.headers["location"] == "/apps/shop/admin/login/?next=/apps/shop/admin/"
        assert (
            "<title>Log in | Shop</title>" in browser.get(f"{base}{first.headers['location']}").text
        )
        done = login(browser, base, "shop", shop_password)
        assert done.status_code == 302 and done.headers["location"] == "/apps/shop/admin/"
        index = browser.get(f"{base}/apps/shop/admin/")
        assert index.status_code == 200 and "Notes" in index.text

    with httpx.Client() as other:
        refused = login(other, base, "demo", shop_password)
        assert refused.status_code == 200 and "correct username and password" in refused.text
        assert login(other, base, "demo", demo_password).status_code == 302

    listed = json.loads(manage(env, "apps", "list", "--json").stdout)
    assert {a["name"]: a["statuses"] for a in listed} == {
        "demo": {"local": "running"},
        "shop": {"local": "running"},
    }


def test_cli_stop_reaches_the_running_server_and_a_start_brings_it_back(env, server):
    base, _ = server
    manage(env, "apps", "create", "shop", "--title", "Shop")
    manage(env, "apps", "start", "shop")
    assert httpx.get(f"{base}/apps/shop/admin/login/").status_code == 200
    manage(env, "apps", "stop", "shop")
    time.sleep(
        settings.APP_ROUTE_CACHE_SECONDS + 0.3
    )  # the server trusts its route cache this long
    stopped = httpx.get(f"{base}/apps/shop/admin/login/")
    assert stopped.status_code == 503 and "Shop is stopped." in stopped.text
    manage(env, "apps", "start", "shop")
    time.sleep(settings.APP_ROUTE_CACHE_SECONDS + 0.3)
    assert httpx.get(f"{base}/apps/shop/admin/login/").status_code == 200


def test_bad_configuration_stops_the_server_with_one_line(env):
    env = {**env, "APP_MODE": "worker", "ENVIRONMENT_NAME": ""}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "supervisor_project.asgi:application",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "supervisor.E003: APP_MODE=worker needs ENVIRONMENT_NAME." in result.stderr
