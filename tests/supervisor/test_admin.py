"""The supervisor UI: changelist cost, permissions, create form, one-time password."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.supervisor import services
from apps.supervisor.models import Application, Deployment, StatusChange
from tests.factories import make_app, make_staff, make_superuser
from tests.helpers import wait_for_status

CHANGELIST = "/admin/supervisor/application/"


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured.captured_queries)


@pytest.mark.django_db
def test_changelist_query_count_does_not_grow_with_rows(client):
    client.force_login(make_superuser())
    for i in range(5):
        make_app(f"app{i}")
    five = _queries(client, CHANGELIST)
    filtered_five = _queries(client, CHANGELIST + "?status=stopped&environment=local")
    for i in range(5, 50):
        make_app(f"app{i}")
    fifty = _queries(client, CHANGELIST)
    assert five == fifty
    assert filtered_five == _queries(client, CHANGELIST + "?status=stopped&environment=local")
    page = client.get(CHANGELIST).content.decode()
    assert page.count('class="app-status app-status-stopped"') == 50
    assert 'href="/apps/app7/admin/"' in page


@pytest.mark.django_db
def test_status_and_environment_filters_match_what_the_badges_show(client):
    from apps.supervisor.models import Environment

    client.force_login(make_superuser())
    for name, status in (("env_a", "online"), ("env_b", "online"), ("env_c", "offline")):
        Environment.objects.create(name=name, url=f"http://{name}.test", status=status)
    states = {
        "both": {"env_a": "running", "env_b": "running"},
        "half": {"env_a": "running", "env_c": "running"},  # env_c offline: `unknown` there
        "idle": {"env_b": "stopped"},
        "lost": {"env_c": "running"},
    }
    for name, where in states.items():
        app = make_app(name, environments=list(where))
        for env, status in where.items():
            Deployment.objects.filter(application=app, environment__name=env).update(status=status)

    def listed(query: str) -> set[str]:
        response = client.get(f"{CHANGELIST}?{query}")
        assert response.status_code == 200
        return {a.name for a in response.context["cl"].result_list}

    assert listed("status=running") == {"both", "half"}
    assert listed("status=unknown") == {"half", "lost"}
    assert listed("status=stopped") == {"idle"}
    assert listed("environment=env_b") == {"both", "idle"}
    assert listed("status=running&environment=env_c") == {"half"}
    assert listed("status=error") == set()


@pytest.mark.django_db
def test_environments_list_shows_the_local_environment(client):
    client.force_login(make_superuser())
    services.environment_ensure_local()
    page = client.get("/admin/supervisor/environment/").content.decode()
    assert "local" in page and "app-status-online" in page


@pytest.mark.django_db
def test_create_form_creates_the_app_on_the_chosen_environment(client):
    client.force_login(make_superuser())
    services.environment_ensure_local()
    response = client.post(
        "/admin/supervisor/application/add/",
        {
            "name": "crm",
            "title": "CRM",
            "start_mode": "on_first_visit",
            "db_type": "sqlite",
            "run_on": ["local"],
            "options": "{}",
            "icon": "",
            "custom_domain": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    deployment = Deployment.objects.select_related("environment").get(application__name="crm")
    assert deployment.environment.name == "local" and deployment.status == "stopped"


@pytest.mark.django_db
def test_create_form_shows_field_errors_and_stores_nothing(client):
    client.force_login(make_superuser())
    services.environment_ensure_local()
    response = client.post(
        "/admin/supervisor/application/add/",
        {
            "name": "Bad Name",
            "title": "",
            "start_mode": "on_first_visit",
            "db_type": "sqlite",
            "run_on": ["local"],
            "options": '{"nope": 1}',
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) >= {"name", "title", "options"}
    assert Application.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_start_action_runs_in_background_and_password_is_shown_once(client):
    client.force_login(make_superuser())
    app = make_app("shop")
    response = client.post(CHANGELIST, {"action": "start_apps", "_selected_action": [app.pk]})
    assert response.status_code == 302
    wait_for_status("shop", "running")
    change = f"/admin/supervisor/application/{app.pk}/change/"
    first = [str(m) for m in client.get(change).context["messages"]]
    assert any("Initial superuser of shop: admin / " in m for m in first)
    second = [str(m) for m in client.get(change).context["messages"]]
    assert not any("Initial superuser" in m for m in second)
    assert Application.objects.get(pk=app.pk).pending_admin_password == ""


@pytest.mark.django_db(transaction=True)
def test_stop_and_restart_actions_record_history_with_the_actor(client):
    client.force_login(make_superuser("boss"))
    app = make_app("shop")
    services.application_start(application=app, actor="test")
    client.post(CHANGELIST, {"action": "stop_apps", "_selected_action": [app.pk]})
    assert wait_for_status("shop", "stopped")
    change = StatusChange.objects.filter(new_status="stopped").get()
    assert change.actor == "boss" and change.command_id is not None


@pytest.mark.django_db
def test_actions_are_offered_only_with_their_permissions(client):
    make_app("shop")
    client.force_login(make_staff("viewer", "supervisor.view_application"))
    form = client.get(CHANGELIST).context["action_form"]
    names = {name for name, _ in form.fields["action"].choices} if form else set()
    assert not names & {
        "start_apps",
        "stop_apps",
        "restart_apps",
        "delete_apps",
        "delete_apps_with_data",
    }
    client.force_login(
        make_staff("operator", "supervisor.view_application", "supervisor.start_application")
    )
    names = {n for n, _ in client.get(CHANGELIST).context["action_form"].fields["action"].choices}
    assert {"start_apps", "stop_apps", "restart_apps"} <= names
    assert "delete_apps_with_data" not in names
    # Posting an action one lacks the permission for does nothing.
    app = Application.objects.get(name="shop")
    client.post(
        CHANGELIST,
        {"action": "delete_apps_with_data", "_selected_action": [app.pk], "confirmed": "yes"},
    )
    assert Application.objects.filter(name="shop").exists()


@pytest.mark.django_db(transaction=True)
def test_delete_with_database_needs_confirmation_then_drops_it(client, settings):
    client.force_login(make_superuser())
    app = make_app("shop")
    services.application_start(application=app, actor="test")
    db_file = settings.APP_SQLITE_DIR / "shop.sqlite3"
    assert db_file.exists()
    confirm = client.post(
        CHANGELIST, {"action": "delete_apps_with_data", "_selected_action": [app.pk]}
    )
    assert confirm.status_code == 200 and "cannot be recovered" in confirm.content.decode()
    assert Application.objects.filter(pk=app.pk).exists() and db_file.exists()
    client.post(
        CHANGELIST,
        {"action": "delete_apps_with_data", "_selected_action": [app.pk], "confirmed": "yes"},
    )
    assert not Application.objects.filter(pk=app.pk).exists()
    assert not db_file.exists()


@pytest.mark.django_db(transaction=True)
def test_delete_keeping_data_leaves_the_database(client, settings):
    client.force_login(make_superuser())
    app = make_app("shop")
    services.application_start(application=app, actor="test")
    client.post(
        CHANGELIST, {"action": "delete_apps", "_selected_action": [app.pk], "confirmed": "yes"}
    )
    assert not Application.objects.filter(pk=app.pk).exists()
    assert (settings.APP_SQLITE_DIR / "shop.sqlite3").exists()
