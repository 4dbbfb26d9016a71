"""The JSON API (/api/v1/): authentication, one test per permission, status codes, paging."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.api.models import ApiToken
from apps.supervisor import services
from apps.supervisor.models import Application, Deployment, StatusChange
from tests.api.conftest import (
    CREATE,
    DELETE,
    DROP,
    START,
    VIEW,
    all_but,
    call,
    snapshot,
    staff,
    token_for,
)
from tests.factories import make_app
from tests.helpers import CSRF_RE, admin_login, wait_for_status

APPS = "/api/v1/apps/"
NEW_APP = {"name": "crm", "title": "CRM", "db_type": "sqlite", "environments": ["local"]}


def user_token(username: str, *perms: str) -> str:
    return token_for(staff(username, *perms))


# --- authentication ----------------------------------------------------------------------
@pytest.mark.django_db
def test_no_credentials_is_401_with_a_bearer_challenge(client):
    response = client.get(APPS)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "error" in response.json()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token appsup_x",
        "Bearer appsup_" + "A" * 43,  # well formed, never issued
        "Bearer not-a-token",
        "Bearer appsup_" + "é" * 43,
    ],
)
def test_malformed_or_unknown_tokens_are_401(client, header):
    staff("ops", VIEW)
    response = client.get(APPS, headers={"Authorization": header})
    assert response.status_code == 401, response.content
    assert "WWW-Authenticate" in response


@pytest.mark.django_db
def test_a_token_works_until_revoked_and_only_its_digest_is_stored(client):
    from apps.api import services as api_services

    user = staff("ops", VIEW)
    row, token = api_services.api_token_create(user=user)
    stored = ApiToken.objects.get(pk=row.pk)
    assert token not in (stored.digest, stored.prefix) and len(stored.digest) == 64
    assert not ApiToken.objects.filter(digest__contains=token[8:20]).exists()
    assert stored.last_used_at is None

    assert call(client, "GET", APPS, token).status_code == 200
    assert ApiToken.objects.get(pk=row.pk).last_used_at is not None

    assert api_services.api_token_revoke(token_id=row.pk) == 1
    assert call(client, "GET", APPS, token).status_code == 401


@pytest.mark.django_db
def test_the_token_of_an_inactive_user_is_refused(client):
    user = staff("ops", VIEW)
    token = token_for(user)
    user.is_active = False
    user.save()
    assert call(client, "GET", APPS, token).status_code == 401


@pytest.mark.django_db
def test_a_staff_session_may_read_and_write_with_csrf_only():
    user = staff("ops", VIEW, START)
    make_app("shop")
    browser = Client(enforce_csrf_checks=True)
    assert admin_login(browser, "/admin/", "ops", "s3cret-pass-word").status_code == 302
    assert browser.get(APPS).status_code == 200

    before = snapshot()
    refused = call(browser, "POST", f"{APPS}shop/stop")
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    assert snapshot() == before

    token = CSRF_RE.search(browser.get("/admin/password_change/").content.decode()).group(1)
    accepted = call(browser, "POST", f"{APPS}shop/stop", **{"X-CSRFToken": token})
    assert accepted.status_code == 202, accepted.content
    assert Deployment.objects.get().command_actor == user.get_username()


@pytest.mark.django_db
def test_a_session_of_a_non_staff_user_is_not_enough(client):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("someone", password="x-long-password")
    client.force_login(user)
    assert client.get(APPS).status_code == 401


# --- one test per permission -------------------------------------------------------------
@pytest.mark.django_db
def test_view_permission_is_needed_to_list_and_read(client):
    make_app("shop")
    denied = user_token("nosy", *all_but(VIEW))
    for url in (APPS, f"{APPS}shop/"):
        response = call(client, "GET", url, denied)
        assert response.status_code == 403 and VIEW in response.json()["error"]
    allowed = user_token("reader", VIEW)
    assert [a["name"] for a in call(client, "GET", APPS, allowed).json()["results"]] == ["shop"]
    detail = call(client, "GET", f"{APPS}shop/", allowed).json()
    assert detail["statuses"] == {"local": "stopped"} and detail["url"] == "/apps/shop/"


@pytest.mark.django_db
def test_create_permission(client):
    services.environment_ensure_local()
    denied = user_token("nocreate", *all_but(CREATE))
    before = snapshot()
    response = call(client, "POST", APPS, denied, NEW_APP)
    assert response.status_code == 403 and CREATE in response.json()["error"]
    assert snapshot() == before

    allowed = user_token("creator", CREATE)
    response = call(client, "POST", APPS, allowed, NEW_APP)
    assert response.status_code == 201, response.content
    assert response["Location"] == f"{APPS}crm/"
    body = response.json()
    assert body["name"] == "crm" and body["statuses"] == {"local": "stopped"}
    assert Application.objects.get(name="crm").title == "CRM"


@pytest.mark.django_db(transaction=True)
def test_start_stop_restart_permission(client):
    make_app("shop")
    denied = user_token("nostart", *all_but(START))
    for action in ("start", "stop", "restart"):
        before = snapshot()
        response = call(client, "POST", f"{APPS}shop/{action}", denied)
        assert response.status_code == 403 and START in response.json()["error"], action
        assert snapshot() == before

    allowed = user_token("operator", START)
    response = call(client, "POST", f"{APPS}shop/start", allowed)
    assert response.status_code == 202, response.content
    assert response.json()["action"] == "start" and response.json()["sent_to"] == ["local"]
    wait_for_status("shop", "running")
    assert Deployment.objects.get().command_actor == "operator"

    response = call(client, "POST", f"{APPS}shop/stop/", allowed)  # trailing slash works too
    assert response.status_code == 202 and response.json()["statuses"] == {"local": "stopped"}
    assert StatusChange.objects.filter(new_status="stopped", actor="operator").exists()

    response = call(client, "POST", f"{APPS}shop/restart", allowed)
    assert response.status_code == 202 and response.json()["ok"] is True
    wait_for_status("shop", "running")


@pytest.mark.django_db
def test_delete_permission(client, settings):
    make_app("shop")
    denied = user_token("nodelete", *all_but(DELETE))
    before = snapshot()
    response = call(client, "DELETE", f"{APPS}shop/", denied)
    assert response.status_code == 403 and DELETE in response.json()["error"]
    assert snapshot() == before

    allowed = user_token("remover", DELETE)
    response = call(client, "DELETE", f"{APPS}shop/?drop_database=false", allowed)
    assert response.status_code == 200, response.content
    assert response.json() == {"name": "shop", "deleted": True, "database_dropped": False}
    assert not Application.objects.filter(name="shop").exists()


@pytest.mark.django_db(transaction=True)
def test_delete_with_database_permission(client, settings):
    app = make_app("shop")
    assert services.application_start(application=app, actor="test").ok
    db_file = settings.APP_SQLITE_DIR / "shop.sqlite3"
    assert db_file.exists()
    url = f"{APPS}shop/?drop_database=true"

    for username, perms in (("onlydelete", all_but(DROP)), ("onlydrop", all_but(DELETE))):
        token = user_token(username, *perms)
        before = snapshot()
        response = call(client, "DELETE", url, token)
        assert response.status_code == 403, username
        assert snapshot() == before and db_file.exists()

    response = call(client, "DELETE", url, user_token("dropper", DELETE, DROP))
    assert response.status_code == 200, response.content
    assert response.json()["database_dropped"] is True
    assert not Application.objects.filter(name="shop").exists() and not db_file.exists()


# --- other status codes ------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "url", "allow"),
    [
        ("PUT", APPS, "GET, POST, HEAD"),
        ("PATCH", f"{APPS}shop/", "GET, DELETE, HEAD"),
        ("POST", f"{APPS}shop/", "GET, DELETE, HEAD"),
        ("GET", f"{APPS}shop/start", "POST"),
        ("DELETE", f"{APPS}shop/stop", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(client, method, url, allow):
    make_app("shop")
    token = user_token("ops", *all_but())
    before = snapshot()
    response = call(client, method, url, token)
    assert response.status_code == 405 and response["Allow"] == allow
    assert snapshot() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name", ["nope", "Shop", "sh%D0%BEp", "%2e%2e", "a" * 49, "shop%00", "main", "x%27%20OR%201=1"]
)
def test_unknown_or_impossible_app_names_are_404(client, name):
    make_app("shop")
    token = user_token("ops", *all_but())
    before = snapshot()
    for method, url in (
        ("GET", f"{APPS}{name}/"),
        ("POST", f"{APPS}{name}/start"),
        ("DELETE", f"{APPS}{name}/"),
    ):
        response = call(client, method, url, token)
        assert response.status_code == 404, (method, url, response.content)
        assert "error" in response.json()
    assert snapshot() == before


@pytest.mark.django_db
def test_unknown_endpoint_is_a_json_404(client):
    response = client.get("/api/v1/nothing/here")
    assert response.status_code == 404 and "error" in response.json()


@pytest.mark.django_db
def test_head_answers_like_get_without_a_body(client):
    token = user_token("ops", VIEW)
    response = call(client, "HEAD", APPS, token)
    assert response.status_code == 200 and response.content == b""


# --- paging and cost ---------------------------------------------------------------------
@pytest.mark.django_db
def test_list_is_paged(client):
    for i in range(7):
        make_app(f"app{i}")
    token = user_token("ops", VIEW)
    first = call(client, "GET", f"{APPS}?page_size=3", token).json()
    assert first["count"] == 7 and first["pages"] == 3 and first["previous"] is None
    assert [a["name"] for a in first["results"]] == ["app0", "app1", "app2"]
    assert first["next"] == f"{APPS}?page=2&page_size=3"
    last = call(client, "GET", f"{APPS}?page=3&page_size=3", token).json()
    assert [a["name"] for a in last["results"]] == ["app6"] and last["next"] is None
    assert call(client, "GET", f"{APPS}?page=4&page_size=3", token).status_code == 404


@pytest.mark.django_db
def test_list_query_count_does_not_grow_with_rows(client):
    token = user_token("ops", VIEW)
    services.environment_ensure_local()
    for i in range(3):
        make_app(f"app{i}")
    call(client, "GET", APPS, token)  # the token's first use writes last_used_at once

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = call(client, "GET", APPS, token)
        assert response.status_code == 200
        return len(captured.captured_queries)

    three = queries()
    for i in range(3, 40):
        make_app(f"app{i}")
    assert queries() == three
    assert len(call(client, "GET", APPS, token).json()["results"]) == 40


@pytest.mark.django_db
def test_last_used_is_written_at_most_once_a_minute(client):
    user = staff("ops", VIEW)
    token = token_for(user)
    call(client, "GET", APPS, token)
    first = ApiToken.objects.get().last_used_at
    call(client, "GET", APPS, token)
    assert ApiToken.objects.get().last_used_at == first
    long_ago = timezone.now() - timedelta(minutes=5)
    ApiToken.objects.update(last_used_at=long_ago)
    call(client, "GET", APPS, token)
    assert ApiToken.objects.get().last_used_at > long_ago + timedelta(minutes=4)


@pytest.mark.django_db
def test_passwords_are_never_shown(client):
    services.environment_ensure_local()
    token = user_token("ops", VIEW, CREATE)
    body = {
        **NEW_APP,
        "options": {"admin_username": "root", "admin_password": "a-long-secret-1"},
    }
    created = call(client, "POST", APPS, token, body)
    assert created.status_code == 201, created.content
    for response in (created, call(client, "GET", f"{APPS}crm/", token)):
        text = response.content.decode()
        assert "a-long-secret-1" not in text and "db_password" not in text
        assert response.json()["options"]["admin_username"] == "root"
