"""The admin: one test per permission (create, start/stop/restart, delete, delete with
database). A user holding every other permission is refused: posting the action does nothing
and nothing stored changes."""

from __future__ import annotations

import pytest

from apps.supervisor import services
from apps.supervisor.models import Application, Deployment, StatusChange
from tests.api.conftest import CREATE, DELETE, DROP, START, VIEW, all_but, snapshot, staff
from tests.factories import make_app
from tests.helpers import wait_for_status

CHANGELIST = "/admin/supervisor/application/"
ADD = "/admin/supervisor/application/add/"
FORM = {
    "name": "crm",
    "title": "CRM",
    "start_mode": "on_first_visit",
    "db_type": "sqlite",
    "run_on": ["local"],
    "options": "{}",
    "icon": "",
    "custom_domain": "",
}


def offered_actions(client) -> set[str]:
    form = client.get(CHANGELIST).context["action_form"]
    return {name for name, _ in form.fields["action"].choices} if form else set()


def post_action(client, action: str, app: Application, **extra):
    return client.post(CHANGELIST, {"action": action, "_selected_action": [app.pk], **extra})


@pytest.mark.django_db
def test_create_permission(client):
    services.environment_ensure_local()
    client.force_login(staff("nocreate", *all_but(CREATE)))
    before = snapshot()
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, FORM).status_code == 403
    assert snapshot() == before

    client.force_login(staff("creator", VIEW, CREATE))
    assert client.get(ADD).status_code == 200
    response = client.post(ADD, FORM)
    assert response.status_code == 302, response.content.decode()[:1000]
    assert Application.objects.filter(name="crm").exists()


@pytest.mark.django_db(transaction=True)
def test_start_stop_restart_permission(client):
    app = make_app("shop")
    client.force_login(staff("nostart", *all_but(START)))
    assert not offered_actions(client) & {"start_apps", "stop_apps", "restart_apps"}
    for action in ("start_apps", "stop_apps", "restart_apps"):
        before = snapshot()
        post_action(client, action, app)
        assert snapshot() == before, action

    client.force_login(staff("operator", VIEW, START))
    assert {"start_apps", "stop_apps", "restart_apps"} <= offered_actions(client)
    assert post_action(client, "start_apps", app).status_code == 302
    wait_for_status("shop", "running")
    post_action(client, "stop_apps", app)
    wait_for_status("shop", "stopped")
    post_action(client, "restart_apps", app)
    wait_for_status("shop", "running")
    assert set(StatusChange.objects.values_list("actor", flat=True)) == {"operator"}


@pytest.mark.django_db
def test_delete_permission(client):
    app = make_app("shop")
    client.force_login(staff("nodelete", *all_but(DELETE)))
    assert "delete_apps" not in offered_actions(client)
    before = snapshot()
    post_action(client, "delete_apps", app, confirmed="yes")
    assert snapshot() == before

    client.force_login(staff("remover", VIEW, DELETE))
    assert "delete_apps" in offered_actions(client)
    assert "delete_apps_with_data" not in offered_actions(client)
    post_action(client, "delete_apps", app, confirmed="yes")
    assert not Application.objects.filter(pk=app.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_delete_with_database_permission(client, settings):
    app = make_app("shop")
    assert services.application_start(application=app, actor="test").ok
    db_file = settings.APP_SQLITE_DIR / "shop.sqlite3"
    for username, perms in (("onlydelete", all_but(DROP)), ("onlydrop", all_but(DELETE))):
        client.force_login(staff(username, *perms))
        assert "delete_apps_with_data" not in offered_actions(client), username
        before = snapshot()
        post_action(client, "delete_apps_with_data", app, confirmed="yes")
        assert snapshot() == before and db_file.exists(), username

    client.force_login(staff("dropper", VIEW, DELETE, DROP))
    assert "delete_apps_with_data" in offered_actions(client)
    post_action(client, "delete_apps_with_data", app, confirmed="yes")
    assert not Application.objects.filter(pk=app.pk).exists() and not db_file.exists()
    assert not Deployment.objects.exists()
