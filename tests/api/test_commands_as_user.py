"""`manage.py apps ... --as-user NAME`: one test per permission, the actor in the history,
and one clear line (nothing changed) when the user may not."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from apps.supervisor import services
from apps.supervisor.models import Application, Deployment, StatusChange
from tests.api.conftest import CREATE, DELETE, DROP, START, VIEW, all_but, snapshot, staff
from tests.factories import make_app


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def refused(*args: str) -> str:
    """The command refuses with one line and changes nothing."""
    before = snapshot()
    with pytest.raises(CommandError) as caught:
        run(*args)
    message = str(caught.value)
    assert message and "\n" not in message, message
    assert caught.value.returncode == 2
    assert snapshot() == before
    return message


@pytest.mark.django_db
def test_unknown_inactive_or_empty_user_is_refused_in_one_line():
    make_app("shop")
    assert "no user named 'ghost'" in refused("apps", "list", "--as-user", "ghost")
    user = staff("gone", *all_but())
    user.is_active = False
    user.save()
    assert "inactive" in refused("apps", "stop", "shop", "--as-user", "gone")
    assert "user name" in refused("apps", "list", "--as-user", " ")


@pytest.mark.django_db
def test_view_permission_for_list_and_history():
    make_app("shop")
    staff("nosy", *all_but(VIEW))
    staff("reader", VIEW)
    for args in (("list",), ("history", "shop")):
        message = refused("apps", *args, "--as-user", "nosy")
        assert message.startswith("permission denied: nosy") and VIEW in message
    rows = json.loads(run("apps", "list", "--json", "--as-user", "reader"))
    assert [r["name"] for r in rows] == ["shop"]
    assert json.loads(run("apps", "history", "shop", "--json", "--as-user", "reader")) == []


@pytest.mark.django_db
def test_create_permission():
    services.environment_ensure_local()
    staff("nocreate", *all_but(CREATE))
    staff("creator", CREATE)
    args = ("apps", "create", "crm", "--title", "CRM", "--db-type", "sqlite")
    assert CREATE in refused(*args, "--as-user", "nocreate")
    assert not Application.objects.exists()
    [row] = json.loads(run(*args, "--json", "--as-user", "creator"))
    assert row["name"] == "crm" and Application.objects.filter(name="crm").exists()


@pytest.mark.django_db(transaction=True)
def test_start_stop_restart_permission_and_the_actor_is_the_user():
    make_app("shop")
    staff("nostart", *all_but(START))
    staff("operator", START)
    for action in ("start", "stop", "restart"):
        assert START in refused("apps", action, "shop", "--as-user", "nostart"), action
    assert not StatusChange.objects.exists()

    run("apps", "start", "shop", "--as-user", "operator")
    assert Deployment.objects.get().status == "running"
    run("apps", "stop", "shop", "--as-user", "operator")
    run("apps", "restart", "shop", "--as-user", "operator")
    assert Deployment.objects.get().status == "running"
    actors = set(StatusChange.objects.values_list("actor", flat=True))
    assert actors == {"operator"}, actors
    # Started twice (start, then restart of the stopped app), stopped once.
    assert StatusChange.objects.filter(new_status="running").count() == 2
    assert StatusChange.objects.filter(new_status="stopped").count() == 1


@pytest.mark.django_db
def test_delete_permission():
    make_app("shop")
    staff("nodelete", *all_but(DELETE))
    staff("remover", DELETE)
    assert DELETE in refused("apps", "delete", "shop", "--as-user", "nodelete")
    run("apps", "delete", "shop", "--as-user", "remover")
    assert not Application.objects.filter(name="shop").exists()


@pytest.mark.django_db(transaction=True)
def test_delete_with_database_permission(settings):
    app = make_app("shop")
    assert services.application_start(application=app, actor="test").ok
    db_file = settings.APP_SQLITE_DIR / "shop.sqlite3"
    staff("onlydelete", *all_but(DROP))
    staff("onlydrop", *all_but(DELETE))
    staff("dropper", DELETE, DROP)
    args = ("apps", "delete", "shop", "--drop-database", "--yes")
    message = refused(*args, "--as-user", "onlydelete")
    assert "may not delete with database" in message and DROP in message
    assert DELETE in refused(*args, "--as-user", "onlydrop")
    assert db_file.exists()
    run(*args, "--as-user", "dropper")
    assert not Application.objects.filter(name="shop").exists() and not db_file.exists()


@pytest.mark.django_db
def test_the_environment_variable_names_the_user_when_the_option_is_absent(monkeypatch):
    make_app("shop")
    staff("nosy", *all_but(VIEW))
    staff("reader", VIEW)
    monkeypatch.setenv("APPSUP_CLI_USER", "nosy")
    assert "permission denied: nosy" in refused("apps", "list")
    assert "shop" in run("apps", "list", "--as-user", "reader")  # the option wins


@pytest.mark.django_db(transaction=True)
def test_without_a_user_the_local_operator_acts_unchecked():
    make_app("shop")
    run("apps", "start", "shop")
    assert set(StatusChange.objects.values_list("actor", flat=True)) == {"cli"}


def test_help_says_who_acts_without_as_user(capsys):
    with pytest.raises(SystemExit):
        call_command("apps", "start", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--as-user NAME" in text and "local operator" in text
