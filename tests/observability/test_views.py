"""/healthz, /readyz and /metrics through Django's test client: who may see them, what they say.

Readiness failures use real services: Redis pointed at a closed loopback port (nothing
listens), the machine's Redis with no Celery worker on it. Nothing is mocked.
"""

from __future__ import annotations

import socket
import time

import pytest
from django.test import Client

from tests.factories import make_staff

pytestmark = pytest.mark.django_db

TOKEN = "t" * 40
HOST = {"HTTP_HOST": "127.0.0.1"}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def client() -> Client:
    return Client(**HOST)


@pytest.fixture(autouse=True)
def _not_public(settings):
    settings.OBSERVABILITY_PUBLIC = False
    settings.METRICS_TOKEN = TOKEN


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


# --- /healthz ----------------------------------------------------------------------------


def test_healthz_is_public_plain_and_touches_no_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.content == b"ok\n"
    assert response["Content-Type"].startswith("text/plain")
    assert "no-cache" in response["Cache-Control"]


def test_healthz_answers_head_and_refuses_post(client):
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


# --- who may see /readyz and /metrics ----------------------------------------------------


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_not_public_by_default_403_not_a_login_redirect(client, path):
    response = client.get(path)
    assert response.status_code == 403
    assert b"Authorization: Bearer" in response.content
    assert "Location" not in response


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_forbidden_answers_json_when_asked(client, path):
    response = client.get(path, HTTP_ACCEPT="application/json")
    assert response.status_code == 403
    assert "forbidden" in response.json()["error"]


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_the_bearer_token_opens_them(client, path):
    assert client.get(path, **bearer()).status_code == 200


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
@pytest.mark.parametrize(
    "header",
    ["Bearer " + "x" * 40, "Bearer " + TOKEN[:-1], "Basic " + TOKEN, TOKEN, "Bearer", "Bearer  "],
)
def test_a_wrong_or_malformed_token_is_refused(client, path, header):
    assert client.get(path, HTTP_AUTHORIZATION=header).status_code == 403


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_no_token_configured_means_no_token_works(client, settings, path):
    settings.METRICS_TOKEN = ""
    assert client.get(path, HTTP_AUTHORIZATION="Bearer ").status_code == 403
    assert client.get(path, **bearer("")).status_code == 403


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_a_staff_user_sees_them_and_a_non_staff_user_does_not(client, path):
    staff = make_staff("watcher")
    client.force_login(staff)
    assert client.get(path).status_code == 200
    staff.is_staff = False
    staff.save()
    assert client.get(path).status_code == 403


@pytest.mark.parametrize("path", ["/readyz", "/metrics"])
def test_observability_public_opens_them_to_everyone(client, settings, path):
    settings.OBSERVABILITY_PUBLIC = True
    assert client.get(path).status_code == 200


# --- /readyz -----------------------------------------------------------------------------


def test_readyz_in_local_mode_checks_the_database_only(client):
    response = client.get("/readyz", **bearer())
    assert response.status_code == 200
    assert response.content == b"database: OK\n"
    assert response["Content-Type"].startswith("text/plain")
    assert "no-cache" in response["Cache-Control"]


def test_readyz_json_when_accept_asks(client):
    for kwargs in ({"HTTP_ACCEPT": "application/json"}, {"data": {"format": "json"}}):
        response = client.get("/readyz", **bearer(), **kwargs)
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["checks"]["database"]["ok"] is True
        assert body["checks"]["database"]["seconds"] >= 0


def test_readyz_text_for_curl_and_browsers(client):
    for accept in ("*/*", "text/html,application/xhtml+xml,*/*;q=0.8", "text/plain", "nonsense"):
        response = client.get("/readyz", HTTP_ACCEPT=accept, **bearer())
        assert response.content == b"database: OK\n", accept


@pytest.fixture
def supervisor_mode(settings):
    settings.APP_MODE = "supervisor"
    settings.ENVIRONMENT_NAME = ""
    settings.READYZ_TIMEOUT = 1.0
    return settings


def test_readyz_names_redis_and_the_cause_when_its_port_is_closed(client, supervisor_mode):
    url = f"redis://127.0.0.1:{closed_port()}/0"
    supervisor_mode.APP_SUPERVISOR_REDIS_URL = supervisor_mode.APP_COMMAND_REDIS_URL = url
    began = time.monotonic()
    response = client.get("/readyz", **bearer())
    elapsed = time.monotonic() - began
    assert response.status_code == 503
    lines = dict(line.split(": ", 1) for line in response.content.decode().splitlines())
    assert lines["database"] == "OK"
    port = url.split(":")[2].split("/")[0]
    assert lines["redis"] == f"Unavailable: 127.0.0.1:{port}/0: connection refused"
    assert lines["celery"] == (
        f"Unavailable: broker 127.0.0.1:{port}/0 unreachable: connection refused"
    )
    assert elapsed < 2.5, elapsed


def test_readyz_json_names_each_failing_component(client, supervisor_mode):
    url = f"redis://user:secret-password@127.0.0.1:{closed_port()}/3"
    supervisor_mode.APP_SUPERVISOR_REDIS_URL = supervisor_mode.APP_COMMAND_REDIS_URL = url
    response = client.get("/readyz", HTTP_ACCEPT="application/json", **bearer())
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == {
        "ok": True,
        "seconds": body["checks"]["database"]["seconds"],
    }
    redis = body["checks"]["redis"]
    assert redis["ok"] is False and redis["error"].endswith("/3: connection refused")
    assert body["checks"]["celery"]["ok"] is False
    assert "secret-password" not in response.content.decode(), "credentials never shown"


def test_readyz_checks_two_redis_urls_separately(client, supervisor_mode, redis_url):
    supervisor_mode.APP_SUPERVISOR_REDIS_URL = redis_url
    supervisor_mode.APP_COMMAND_REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = client.get("/readyz", **bearer())
    assert response.status_code == 503
    lines = dict(line.split(": ", 1) for line in response.content.decode().splitlines())
    assert lines["redis (config cache)"] == "OK"
    assert lines["redis (commands)"].startswith("Unavailable: 127.0.0.1:")


def test_readyz_supervisor_without_a_worker_says_no_worker_consumes_the_queue(
    client, supervisor_mode, redis_url
):
    supervisor_mode.APP_SUPERVISOR_REDIS_URL = supervisor_mode.APP_COMMAND_REDIS_URL = redis_url
    supervisor_mode.SUPERVISOR_QUEUE = "observability-test-nobody.supervisor"
    response = client.get("/readyz", **bearer())
    assert response.status_code == 503
    lines = dict(line.split(": ", 1) for line in response.content.decode().splitlines())
    assert lines["database"] == "OK" and lines["redis"] == "OK"
    assert lines["celery"].startswith(
        "Unavailable: no worker consumes queue observability-test-nobody.supervisor"
    )


def test_readyz_environment_asks_its_own_worker(client, settings, redis_url):
    settings.APP_MODE = "worker"
    settings.ENVIRONMENT_NAME = "env_nobody"
    settings.APP_SUPERVISOR_REDIS_URL = settings.APP_COMMAND_REDIS_URL = redis_url
    response = client.get("/readyz", **bearer())
    assert response.status_code == 503
    lines = dict(line.split(": ", 1) for line in response.content.decode().splitlines())
    assert lines["database"] == "OK" and lines["redis"] == "OK"
    assert lines["celery"] == (
        f"Unavailable: worker env_nobody@{socket.gethostname()} did not answer within 1 s"
    )


# --- /metrics ------------------------------------------------------------------------------


def test_metrics_is_prometheus_text(client):
    response = client.get("/metrics", **bearer())
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# TYPE appsupervisor_environments gauge" in response.content


def test_metrics_speaks_openmetrics_when_asked(client):
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text", **bearer())
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.endswith(b"# EOF\n")
