"""The proxy's "not running" page and its Start button (/apps-control/<name>/start/)."""

from __future__ import annotations

import asyncio

import pytest
from django.test import Client
from django.urls import reverse

from apps.adapters.base import AppRoute, DeploymentRoute
from apps.gateway import proxy, routing
from apps.gateway.middleware import page_body
from apps.runtime.spec import AppSpec, DbSpec
from apps.supervisor.models import Deployment
from tests.api.conftest import START, all_but, snapshot, staff
from tests.factories import make_app
from tests.helpers import CSRF_RE, admin_login, wait_for_status

START_URL = "/apps-control/shop/start/"


def stopped_app():
    """An app that does not start on first visit: its page says "stopped"."""
    return make_app("shop", title="Shop", start_mode="with_supervisor")


def route(status: str, *, desired: str = "stopped", error: str = "") -> AppRoute:
    spec = AppSpec(name="shop", title="Shop", db=DbSpec(type="sqlite", name="/x.sqlite3"))
    deployment = DeploymentRoute("local", desired, status, error=error, proxy_url="http://e")
    return AppRoute(spec=spec, start_mode="with_supervisor", deployments=(deployment,))


def test_the_url_on_the_page_is_the_views_url():
    assert reverse("app-control-start", args=["shop"]) == START_URL
    assert routing.START_URL.format(name="shop") == START_URL
    assert routing.decide(START_URL) is None  # the supervisor's, never forwarded to the app


@pytest.mark.parametrize(
    ("status", "desired", "button"),
    [
        ("stopped", "stopped", True),
        ("error", "running", True),
        ("preparing", "running", False),
        ("commanding", "running", False),
        ("unknown", "running", False),
    ],
)
def test_not_running_pages_offer_start_when_it_can_help(settings, status, desired, button):
    settings.ENVIRONMENT_NAME = "local"
    page = routing.decide("/apps/shop/admin/", route=route(status, desired=desired, error="x"))
    assert isinstance(page, routing.Page) and page.status in (502, 503)
    # page_body is what the ASGI proxy (send_page) and the middleware both send.
    html = page_body(page, as_json=False)[0].decode()
    assert (f'action="{START_URL}"' in html) is button
    assert ("Start Shop</button>" in html) is button


@pytest.mark.parametrize("environment", ["local", ""])  # served here / forwarded
def test_the_asgi_proxy_sends_the_button_too(settings, environment):
    settings.ENVIRONMENT_NAME = environment
    page = routing.decide("/apps/shop/admin/", route=route("stopped"))
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(proxy.send_page(send, page, {"headers": []}))
    assert sent[0]["status"] == 503
    assert f'action="{START_URL}"' in sent[1]["body"].decode()


@pytest.mark.django_db
def test_the_stopped_apps_page_shows_the_start_button(client):
    stopped_app()
    response = client.get("/apps/shop/admin/")
    assert response.status_code == 503
    html = response.content.decode()
    assert f'<form method="get" action="{START_URL}" class="start-app">' in html
    assert "Start Shop</button>" in html


@pytest.mark.django_db
def test_not_logged_in_is_sent_to_the_login_page_and_nothing_starts(client):
    stopped_app()
    before = snapshot()
    for response in (client.get(START_URL), client.post(START_URL)):
        assert response.status_code == 302
        assert response["Location"] == f"/admin/login/?next={START_URL}"
    assert snapshot() == before


@pytest.mark.django_db
def test_start_permission_is_needed(client):
    stopped_app()
    client.force_login(staff("nostart", *all_but(START)))
    before = snapshot()
    for response in (client.get(START_URL), client.post(START_URL)):
        assert response.status_code == 403
        assert START in response.content.decode()
    assert snapshot() == before


@pytest.mark.django_db
def test_a_non_staff_user_with_the_permission_is_refused(client):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    stopped_app()
    user = get_user_model().objects.create_user("outsider", password="x-long-password")
    user.user_permissions.add(Permission.objects.get(codename="start_application"))
    client.force_login(user)
    before = snapshot()
    assert client.post(START_URL).status_code == 403
    assert snapshot() == before


@pytest.mark.django_db
def test_unknown_app_is_404_for_a_permitted_user(client):
    client.force_login(staff("operator", START))
    assert client.get("/apps-control/nope/start/").status_code == 404
    assert client.get("/apps-control/N%C3%B6pe/start/").status_code == 404


@pytest.mark.django_db
def test_get_only_confirms_and_a_post_without_csrf_is_refused():
    stopped_app()
    staff("operator", START)
    browser = Client(enforce_csrf_checks=True)
    admin_login(browser, "/admin/", "operator", "s3cret-pass-word")
    before = snapshot()
    confirm = browser.get(START_URL)
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert f'<form method="post" action="{START_URL}">' in html
    assert 'name="csrfmiddlewaretoken"' in html and "Start Shop</button>" in html
    assert browser.post(START_URL).status_code == 403  # no CSRF token
    assert snapshot() == before


@pytest.mark.django_db(transaction=True)
def test_the_button_starts_the_app_as_the_user_and_goes_back_to_it():
    stopped_app()
    staff("operator", START)
    browser = Client(enforce_csrf_checks=True)
    admin_login(browser, "/admin/", "operator", "s3cret-pass-word")
    token = CSRF_RE.search(browser.get(START_URL).content.decode()).group(1)
    response = browser.post(START_URL, {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == "/apps/shop/"
    deployment = Deployment.objects.get()
    assert deployment.desired == "running" and deployment.command_actor == "operator"
    wait_for_status("shop", "running")
    assert browser.get("/apps/shop/admin/").status_code == 302  # served: its own login
