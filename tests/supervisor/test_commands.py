"""The supervisor's management commands, called as an operator calls them.

Commands that start apps run migrations on another database alias, so those tests use
transactional databases (as test_smoke.py does). Sub-app databases outlive a test (files under
APP_SQLITE_DIR, or databases of this run on PostgreSQL), so every test names its apps uniquely.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection

from apps.runtime.runtime import register_alias
from apps.supervisor import selectors, services
from apps.supervisor.models import Application, Deployment, Environment, StatusChange
from tests.factories import make_app

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_KEYS = {"name", "title", "environments", "statuses"}
HISTORY_KEYS = {"environment", "old_status", "new_status", "at", "reason", "command_id"}
ENVIRONMENT_KEYS = {"name", "status", "url", "proxy_url", "version", "last_heartbeat_at"}


@pytest.fixture
def name() -> str:
    """An app name no other test of this run uses (their databases outlive the test)."""
    return f"cmd_{uuid.uuid4().hex[:12]}"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def run_json(*args: str):
    return json.loads(run(*args, "--json"))


def statuses(app_name: str) -> dict[str, str]:
    return selectors.application_statuses(
        selectors.application_list_with_status().get(name=app_name)
    )


def sqlite_file(app_name: str) -> Path:
    return Path(settings.APP_SQLITE_DIR) / f"{app_name}.sqlite3"


def snapshot() -> tuple:
    """Everything the commands can change in the supervisor database."""
    return (
        list(
            Application.objects.order_by("pk").values_list(
                "pk", "name", "title", "db_type", "start_mode", "options", "updated_at"
            )
        ),
        list(
            Deployment.objects.order_by("pk").values_list("pk", "desired", "status", "command_id")
        ),
        list(Environment.objects.order_by("pk").values_list("pk", "name", "status")),
        StatusChange.objects.count(),
    )


def assert_one_line_error(*args: str) -> str:
    """The command refuses with a single-line CommandError and changes nothing."""
    before = snapshot()
    with pytest.raises(CommandError) as caught:
        run(*args)
    message = str(caught.value)
    assert message.strip(), "the error says why"
    assert "\n" not in message and "\r" not in message, message
    assert snapshot() == before
    return message


# --- create ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_create_prints_the_new_app_as_a_table_row(name):
    output = run("apps", "create", name, "--title", "Corner Shop")

    header, row = output.splitlines()
    assert header.split() == ["NAME", "TITLE", "STATUSES"]
    assert row.startswith(name) and "Corner Shop" in row and row.endswith("local=stopped")
    application = Application.objects.get(name=name)
    assert application.title == "Corner Shop"
    assert statuses(name) == {"local": "stopped"}


@pytest.mark.django_db
def test_create_json_describes_the_new_app_with_the_vendor_default_db_type(name):
    [row] = run_json("apps", "create", name, "--title", "Corner Shop")

    assert row["name"] == name and row["title"] == "Corner Shop"
    assert row["environments"] == ["local"]
    assert row["statuses"] == {"local": "stopped"}
    assert row["start_mode"] == "on_first_visit"
    # With no --db-type an app gets its own database where the supervisor has a server.
    expected = "new_database" if connection.vendor == "postgresql" else "sqlite"
    assert row["db_type"] == expected == Application.objects.get(name=name).db_type


@pytest.mark.django_db
def test_create_stores_env_db_type_start_mode_and_options(name):
    services.environment_ensure_local()

    [row] = run_json(
        "apps",
        "create",
        name,
        "--title",
        "Shop",
        "--env",
        "local",
        "--db-type",
        "sqlite",
        "--start-mode",
        "with_supervisor",
        "--options",
        '{"admin_username":"root","admin_password":"a-long-password-1"}',
    )

    assert row["environments"] == ["local"]
    application = Application.objects.get(name=name)
    assert application.db_type == "sqlite"
    assert application.start_mode == "with_supervisor"
    assert application.options == {"admin_username": "root", "admin_password": "a-long-password-1"}


@pytest.mark.django_db
def test_create_with_env_local_works_on_a_fresh_database(name):
    assert not Environment.objects.exists()

    [row] = run_json("apps", "create", name, "--title", "Shop", "--env", "local")

    assert row["environments"] == ["local"]


# --- list --------------------------------------------------------------------------------
@pytest.mark.django_db
def test_list_shows_every_app_with_its_status_per_environment(name):
    other = f"{name}_b"
    make_app(name, title="First")
    make_app(other, title="Second")

    table = run("apps", "list")
    rows = run_json("apps", "list")

    assert table.splitlines()[0].split() == ["NAME", "TITLE", "STATUSES", "START_MODE", "DB_TYPE"]
    assert any(line.startswith(name) and "First" in line for line in table.splitlines())
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {name, other}
    for app_name, title in ((name, "First"), (other, "Second")):
        assert set(by_name[app_name]) >= APP_KEYS
        assert by_name[app_name]["title"] == title
        assert by_name[app_name]["environments"] == ["local"]
        assert by_name[app_name]["statuses"] == {"local": "stopped"}


@pytest.mark.django_db
def test_list_with_no_apps_says_none():
    assert run("apps", "list").strip() == "(none)"
    assert run_json("apps", "list") == []


# --- start, stop, restart ----------------------------------------------------------------
def superuser_password_works(app_name: str, username: str, password: str) -> bool:
    application = Application.objects.get(name=app_name)
    alias = register_alias(selectors.application_spec(application))
    user = get_user_model()._default_manager.db_manager(alias).get(username=username)
    return user.is_superuser and user.check_password(password)


@pytest.mark.django_db(transaction=True)
def test_start_prints_the_generated_superuser_password_only_the_first_time(name):
    make_app(name)

    first = run("apps", "start", name)

    password_lines = [line for line in first.splitlines() if line.startswith("Initial superuser")]
    assert len(password_lines) == 1, first
    assert f"{name}@local: done" in first
    assert "shown once" in password_lines[0]
    credentials = password_lines[0].removeprefix("Initial superuser: ").split("  (")[0]
    username, password = credentials.split(" / ")
    assert username == "admin" and len(password) >= 12
    assert superuser_password_works(name, username, password)
    assert statuses(name) == {"local": "running"}

    second = run("apps", "start", name)

    assert f"{name}@local: done" in second
    assert "superuser" not in second.lower() and password not in second
    assert statuses(name) == {"local": "running"}


@pytest.mark.django_db(transaction=True)
def test_start_json_includes_the_superuser_password_only_the_first_time(name):
    make_app(name)

    [first] = run_json("apps", "start", name)
    [second] = run_json("apps", "start", name)

    assert first["name"] == name and first["done"] == ["local"] and first["failed"] == {}
    assert first["superuser"] == "admin"
    assert superuser_password_works(name, "admin", first["superuser_password"])
    assert second["done"] == ["local"] and second["failed"] == {}
    assert "superuser_password" not in second and "superuser" not in second
    assert statuses(name) == {"local": "running"}


@pytest.mark.django_db(transaction=True)
def test_start_with_the_password_in_options_never_prints_it(name):
    make_app(name, options={"admin_username": "root", "admin_password": "a-long-password-1"})

    output = run("apps", "start", name)

    assert "Initial superuser: root (from options)" in output
    assert "a-long-password-1" not in output
    assert superuser_password_works(name, "root", "a-long-password-1")


@pytest.mark.django_db(transaction=True)
def test_stop_then_restart_change_the_status_and_keep_the_data(name):
    make_app(name)
    run("apps", "start", name)

    stopped = run("apps", "stop", name)

    assert stopped.strip() == f"{name}@local: done"
    assert statuses(name) == {"local": "stopped"}
    assert Deployment.objects.get(application__name=name).desired == "stopped"
    assert sqlite_file(name).exists()

    restarted = run("apps", "restart", name)

    assert f"{name}@local: done" in restarted
    assert "Initial superuser" not in restarted  # the data (and its superuser) stayed
    assert statuses(name) == {"local": "running"}
    assert Deployment.objects.get(application__name=name).desired == "running"


# --- history -----------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_history_json_lists_status_changes_newest_first(name):
    make_app(name)
    run("apps", "start", name)
    run("apps", "stop", name)

    entries = run_json("apps", "history", name)

    assert len(entries) >= 3
    for entry in entries:
        assert set(entry) >= HISTORY_KEYS, entry
        assert entry["environment"] == "local"
        assert isinstance(entry["reason"], str)
        assert datetime.fromisoformat(entry["at"]).tzinfo is not None
        uuid.UUID(entry["command_id"])
    times = [datetime.fromisoformat(e["at"]) for e in entries]
    assert times == sorted(times, reverse=True)
    # Newest first: the stop, and each change starts where the one before it (older) ended.
    assert (entries[0]["old_status"], entries[0]["new_status"]) == ("running", "stopped")
    assert entries[-1]["old_status"] == "stopped"
    for newer, older in pairwise(entries):
        assert newer["old_status"] == older["new_status"]
    assert entries[0]["command_id"] != entries[1]["command_id"]  # stop and start differ
    assert len(run_json("apps", "history", name, "--limit", "2")) == 2


# --- delete ------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_delete_removes_the_app_and_keeps_its_sqlite_file(name):
    make_app(name, db_type="sqlite")
    run("apps", "start", name)
    assert sqlite_file(name).exists()

    [row] = run_json("apps", "delete", name)

    assert row == {"name": name, "deleted": True, "database_dropped": False}
    assert not Application.objects.filter(name=name).exists()
    assert not Deployment.objects.filter(application__name=name).exists()
    assert sqlite_file(name).exists()


@pytest.mark.django_db(transaction=True)
def test_delete_with_drop_database_needs_yes_and_then_removes_the_file(name):
    make_app(name, db_type="sqlite")
    run("apps", "start", name)

    message = assert_one_line_error("apps", "delete", name, "--drop-database")

    assert "--yes" in message
    assert sqlite_file(name).exists()
    assert statuses(name) == {"local": "running"}

    output = run("apps", "delete", name, "--drop-database", "--yes")

    assert name in output
    assert not Application.objects.filter(name=name).exists()
    assert not sqlite_file(name).exists()


# --- environments ------------------------------------------------------------------------
@pytest.mark.django_db
def test_environments_list_shows_the_local_environment():
    services.environment_ensure_local()

    table = run("environments", "list")
    [row] = run_json("environments", "list")

    assert table.splitlines()[0].split() == [
        "NAME",
        "STATUS",
        "VERSION",
        "URL",
        "LAST_HEARTBEAT_AT",
    ]
    assert table.splitlines()[1].split()[:2] == ["local", "online"]
    assert set(row) == ENVIRONMENT_KEYS
    assert (row["name"], row["status"], row["last_heartbeat_at"]) == ("local", "online", None)


@pytest.mark.django_db
def test_environments_list_reports_heartbeats_as_iso_8601():
    environment = services.environment_ensure_local()
    beat = datetime.fromisoformat("2026-01-02T03:04:05+00:00")
    Environment.objects.filter(pk=environment.pk).update(last_heartbeat_at=beat)

    [row] = run_json("environments", "list")

    assert datetime.fromisoformat(row["last_heartbeat_at"]) == beat


# --- bad input ---------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("action", ["start", "stop", "restart", "delete", "history"])
def test_unknown_app_is_refused_on_one_line(action, name):
    make_app(name)  # something that must stay as it is

    message = assert_one_line_error("apps", action, "nosuchapp")

    assert "nosuchapp" in message


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        pytest.param(["--env", "mars"], "mars", id="unknown-env"),
        pytest.param(["--options", "{not json"], "--options", id="options-not-json"),
        pytest.param(["--options", '{"admin_password": "short"}'], "admin_password", id="schema"),
        pytest.param(["--options", '{"colour": "red"}'], "colour", id="unknown-option"),
        pytest.param(["--domain", "Not A Host"], "custom_domain", id="bad-domain"),
    ],
)
def test_create_with_bad_input_is_refused_on_one_line(extra, fragment, name):
    make_app(f"{name}_kept")

    message = assert_one_line_error("apps", "create", name, "--title", "T", *extra)

    assert fragment in message
    assert not Application.objects.filter(name=name).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("bad_name", ["Bad-Name", "admin", "sh\u043ep", "../x"])
def test_create_with_a_bad_name_is_refused_on_one_line(bad_name):
    message = assert_one_line_error("apps", "create", bad_name, "--title", "T")

    assert "name" in message


@pytest.mark.django_db
def test_create_with_a_duplicate_name_is_refused_and_keeps_the_original(name):
    make_app(name, title="Original")

    message = assert_one_line_error("apps", "create", name, "--title", "Impostor")

    assert name in message
    assert Application.objects.get(name=name).title == "Original"


@pytest.mark.django_db
def test_history_limit_below_one_is_refused(name):
    make_app(name)

    message = assert_one_line_error("apps", "history", name, "--limit", "0")

    assert "--limit" in message


def test_command_error_exits_non_zero_with_one_line_on_stderr(tmp_path):
    """The real CLI: exit status and stderr, after migrating a fresh SQLite database."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DB_", "APP_", "ENVIRONMENT_")) and key != "ENV_FILE"
    }
    env.update(
        DJANGO_SETTINGS_MODULE="supervisor_project.settings",
        DB_DIALECT="sqlite",
        STORAGE_DIR=str(tmp_path),
    )

    def manage(*args: str):
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    migrated = manage("migrate", "-v0")
    assert migrated.returncode == 0, migrated.stderr

    result = manage("apps", "start", "nosuchapp")

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("CommandError:") and "nosuchapp" in lines[0]
    assert result.stdout == ""
