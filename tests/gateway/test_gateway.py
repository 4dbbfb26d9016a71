"""Requests to /apps/<name>/...: served in-process from the app's own database, or a page."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client

from apps.notes.models import Note
from apps.runtime.routing import using_app
from apps.supervisor import selectors, services
from tests.factories import make_app, make_superuser
from tests.helpers import CSRF_RE, admin_login, wait_for_status

pytestmark = pytest.mark.django_db(transaction=True)

OWNER = {"admin_username": "owner", "admin_password": "owner-pass-123"}


def started(name: str, **fields):
    app = make_app(name, **fields)
    outcome = services.application_start(application=app, actor="test")
    assert outcome.ok, outcome.failed
    return app


def test_unknown_app_is_404_and_bad_names_never_reach_the_database(client):
    assert client.get("/apps/nope/admin/").status_code == 404
    for path in ("/apps/NOPE/admin/", "/apps/a%20b/", "/apps/admin/", "/apps/x..y/"):
        assert client.get(path).status_code == 404, path


def test_app_path_without_slash_redirects_keeping_the_query(client):
    response = client.get("/apps/shop?x=1")
    assert response.status_code == 302 and response["Location"] == "/apps/shop/?x=1"


def test_app_root_redirects_to_its_admin(client):
    started("shop")
    response = client.get("/apps/shop/")
    assert response.status_code == 302 and response["Location"] == "/apps/shop/admin/"


def test_running_app_serves_its_own_login_page_under_its_prefix(client):
    started("shop")
    response = client.get("/apps/shop/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/apps/shop/admin/login/?next=/apps/shop/admin/"
    page = client.get(response["Location"]).content.decode()
    assert "<title>Log in | Shop</title>" in page
    assert 'action="/apps/shop/admin/login/?next=/apps/shop/admin/"' in page
    assert 'href="/static/admin/css/base.css"' in page
    assert client.get("/static/admin/css/base.css").status_code == 200


def test_stopped_app_answers_503_with_a_page_and_json_on_request(client):
    app = started("shop")
    services.application_stop(application=app, actor="test")
    response = client.get("/apps/shop/admin/")
    assert response.status_code == 503
    assert "Shop is stopped." in response.content.decode()
    as_json = client.get("/apps/shop/admin/", HTTP_ACCEPT="application/json")
    assert as_json.status_code == 503 and as_json.json()["title"] == "Stopped"


def test_sessions_users_and_data_are_isolated_between_apps():
    started("shop", options=OWNER)
    started("blog", options={"admin_username": "writer", "admin_password": "writer-pass-123"})
    shop = Client()
    response = admin_login(shop, "/apps/shop/admin/", "owner", "owner-pass-123")
    assert response.status_code == 302 and response["Location"] == "/apps/shop/admin/"
    cookies = {name: morsel["path"] for name, morsel in shop.cookies.items()}
    assert cookies == {"sessionid_shop": "/apps/shop/", "csrftoken_shop": "/apps/shop/"}
    assert shop.get("/apps/shop/admin/").status_code == 200

    # Shop's session means nothing to blog or to the supervisor, even if presented there.
    shop.cookies["sessionid_blog"] = shop.cookies["sessionid_shop"].value
    shop.cookies["sessionid"] = shop.cookies["sessionid_shop"].value
    assert shop.get("/apps/blog/admin/").status_code == 302
    assert shop.get("/admin/").status_code == 302

    # Shop's user cannot log into blog, nor blog's into shop.
    blog = Client()
    failed = admin_login(blog, "/apps/blog/admin/", "owner", "owner-pass-123")
    assert failed.status_code == 200 and "correct username and password" in failed.content.decode()
    assert admin_login(blog, "/apps/blog/admin/", "writer", "writer-pass-123").status_code == 302

    # A note added through shop's admin lives in shop's database only.
    form = shop.get("/apps/shop/admin/notes/note/add/").content.decode()
    token = CSRF_RE.search(form).group(1)
    added = shop.post(
        "/apps/shop/admin/notes/note/add/",
        {"csrfmiddlewaretoken": token, "title": "Only in shop", "body": "x"},
    )
    assert added.status_code == 302, added.content.decode()[:500]
    shop_spec = selectors.application_spec(selectors.Application.objects.get(name="shop"))
    blog_spec = selectors.application_spec(selectors.Application.objects.get(name="blog"))
    with using_app(shop_spec.alias):
        assert list(Note.objects.values_list("title", flat=True)) == ["Only in shop"]
    with using_app(blog_spec.alias):
        assert Note.objects.count() == 0
    for spec in (shop_spec, blog_spec):
        connections[spec.alias].close()
    assert "Only in shop" not in blog.get("/apps/blog/admin/notes/note/").content.decode()


def test_supervisor_session_does_not_log_into_an_app():
    make_superuser("boss")
    started("shop")
    client = Client()
    assert admin_login(client, "/admin/", "boss", "s3cret-pass-word").status_code == 302
    assert client.get("/admin/").status_code == 200
    response = client.get("/apps/shop/admin/")
    assert response.status_code == 302 and "/apps/shop/admin/login/" in response["Location"]
    assert not get_user_model().objects.filter(username="admin").exists()


def test_first_visit_starts_the_app_and_shows_a_self_refreshing_page(client):
    make_app("lazy", start_mode="on_first_visit")
    response = client.get("/apps/lazy/admin/login/")
    assert response.status_code == 503
    assert response["Refresh"] == "2" and "starting" in response.content.decode()
    wait_for_status("lazy", "running")
    assert client.get("/apps/lazy/admin/login/").status_code == 200


def test_an_app_the_operator_stopped_is_not_restarted_by_a_visit(client):
    app = started("lazy", start_mode="on_first_visit")
    services.application_stop(application=app, actor="test")
    assert client.get("/apps/lazy/admin/login/").status_code == 503
    assert selectors.application_statuses(app) == {"local": "stopped"}


def test_app_in_error_answers_503_with_the_reason(client):
    app = make_app("broken", db_type="new_database", db_host="127.0.0.1", db_port=1)
    services.application_start(application=app, actor="test")
    response = client.get("/apps/broken/admin/")
    assert response.status_code == 503
    assert "cannot connect to PostgreSQL 127.0.0.1:1" in response.content.decode()


def test_custom_cookie_of_a_sub_app_is_scoped_to_its_prefix(client):
    started("shop")
    response = client.get("/apps/shop/admin/login/")
    assert response.cookies["csrftoken_shop"]["path"] == "/apps/shop/"
    assert "csrftoken" not in response.cookies
