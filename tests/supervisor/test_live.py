"""Live status (websocket), progress steps, history in order, environment events, dashboard.

The websocket tests drive the real ASGI websocket entry point with Channels' communicator
(in-memory layer, as in local mode); the cross-process (channels-redis) path is exercised by
the browser test against a real cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.gateway.websockets import WebsocketGateway
from apps.runtime import runtime
from apps.supervisor import live, selectors, services
from apps.supervisor.models import Deployment, EnvironmentEvent, StatusChange
from tests.factories import make_app, make_staff, make_superuser
from tests.supervisor.test_environments import beat

pytestmark = pytest.mark.django_db(transaction=True)
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


class Socket(ApplicationCommunicator):
    """A websocket client for an ASGI app (channels.testing needs daphne; this does not)."""

    async def connect(self) -> bool:
        await self.send_input({"type": "websocket.connect"})
        return (await self.receive_output(timeout=2))["type"] == "websocket.accept"

    async def send_json_to(self, data) -> None:
        await self.send_input({"type": "websocket.receive", "text": json.dumps(data)})

    async def receive_json_from(self, timeout: float = 2):
        message = await self.receive_output(timeout)
        assert message["type"] == "websocket.send", message
        return json.loads(message["text"])

    async def disconnect(self) -> None:
        await self.send_input({"type": "websocket.disconnect", "code": 1000})
        await self.wait(1)


async def _connect(cookie: bytes | None):
    headers = [(b"host", b"testserver")]
    if cookie:
        headers.append((b"cookie", cookie))
    scope = {
        "type": "websocket",
        "path": "/admin/live/",
        "raw_path": b"/admin/live/",
        "query_string": b"",
        "headers": headers,
        "subprotocols": [],
    }
    communicator = Socket(WebsocketGateway(), scope)
    return communicator, await communicator.connect(), None


def test_only_logged_in_staff_get_the_socket():
    outsider = make_staff("outsider")
    outsider.is_staff = False
    outsider.save()

    cookies = [None, session_cookie(outsider)]

    async def scenario():
        for cookie in cookies:
            communicator, connected, _ = await _connect(cookie)
            assert connected  # accepted, then closed with a code the page understands
            closed = await communicator.receive_output(timeout=2)
            assert closed == {"type": "websocket.close", "code": 4403}

    asyncio.run(scenario())


def test_a_stored_report_reaches_the_page_within_a_second_and_subscribe_catches_up():
    boss = make_superuser()
    cookie = session_cookie(boss)
    app = make_app("crm")
    deployment = Deployment.objects.get(application=app)

    async def scenario():
        communicator, connected, _ = await _connect(cookie)
        assert connected
        # (Re)connecting: the page asks for what it shows and gets the current state.
        await communicator.send_json_to(
            {"type": "subscribe", "deployments": [deployment.pk], "environments": ["local"]}
        )
        first = await communicator.receive_json_from(timeout=2)
        kinds = {i["kind"]: i for i in first["items"]}
        assert kinds["deployment"]["status"] == "stopped"
        assert kinds["environment"]["name"] == "local"
        # A report stored elsewhere (a thread, as a job worker would) is pushed.
        started = time.monotonic()
        await sync_to_async(services.deployment_report, thread_sensitive=False)(
            deployment_id=deployment.pk, status="initializing", reason="migrating 3/12"
        )
        pushed = await communicator.receive_json_from(timeout=2)
        assert time.monotonic() - started < 1.0
        item = next(i for i in pushed["items"] if i["id"] == deployment.pk)
        assert item["status"] == "initializing" and item["step"] == "migrating 3/12"
        await communicator.send_json_to({"type": "subscribe", "deployments": "all"})
        assert (await communicator.receive_json_from(timeout=2))["type"] == "error"
        await communicator.disconnect()

    asyncio.run(scenario())


def test_a_start_queue_says_which_environment_is_next_and_errors_say_when():
    services.environment_heartbeat(beat("env_a"))
    services.environment_heartbeat(beat("env_b"))
    app = make_app("crm", environments=["env_a", "env_b"])
    Deployment.objects.filter(application=app).update(
        desired="running", command_action="start", command_id=uuid.uuid4()
    )
    items = live.deployment_items(
        Deployment.objects.filter(application=app).select_related("environment", "application"),
        T0,
    )
    steps = {i["env"]: i["step"] for i in items.values()}
    assert steps == {"env_a": "queued, next", "env_b": "queued"}
    env_b = Deployment.objects.get(application=app, environment__name="env_b")
    services.deployment_report(deployment_id=env_b.pk, status="error", reason="disk full")
    env_b = Deployment.objects.select_related("environment", "application").get(pk=env_b.pk)
    item = live.deployment_items([env_b], T0)[f"d{env_b.pk}"]
    assert item["error"] == "disk full" and item["at"]


def test_install_reports_each_step_with_migration_progress():
    app = make_app("crm")
    spec = selectors.application_spec(app)
    steps: list[tuple[str, str]] = []
    runtime.start(spec, lambda status, detail: steps.append((status, detail)))
    details = [d for _, d in steps]
    assert details[0] == "provisioning database"
    migrating = [d for d in details if d.startswith("migrating ")]
    assert migrating and migrating[-1].split()[1].split("/")[0] == migrating[-1].split("/")[1]
    assert "creating superuser" in details and details[-1] == "serving"
    runtime.stop(spec.name)


def test_a_late_step_is_put_in_its_place_in_the_history():
    app = make_app("crm")
    deployment = Deployment.objects.get(application=app)
    ns = int(T0.timestamp() * 1e9)
    report = services.deployment_report
    report(deployment_id=deployment.pk, status="preparing", reason="provisioning", at=ns + 1)
    report(deployment_id=deployment.pk, status="initialized", reason="ready", at=ns + 3_000_000)
    report(deployment_id=deployment.pk, status="running", reason="serving", at=ns + 4_000_000)
    # Two job workers: "initializing" arrives after "running" was stored.
    late = report(
        deployment_id=deployment.pk, status="initializing", reason="installing", at=ns + 2_000_000
    )
    assert late is False  # the current state stays
    deployment.refresh_from_db()
    assert deployment.status == "running"
    chain = [
        (c.old_status, c.new_status)
        for c in StatusChange.objects.filter(deployment=deployment).order_by("at", "id")
    ]
    assert chain == [
        ("stopped", "preparing"),
        ("preparing", "initializing"),
        ("initializing", "initialized"),
        ("initialized", "running"),
    ]
    # A later step of the same status arriving first, then the earlier one: one row, moved.
    report(deployment_id=deployment.pk, status="stopped", reason="stopped", at=ns + 9_000_000)
    report(deployment_id=deployment.pk, status="preparing", reason="disk", at=ns + 12_000_000)
    report(deployment_id=deployment.pk, status="error", reason="full", at=ns + 11_000_000)
    report(deployment_id=deployment.pk, status="error", reason="disk full", at=ns + 10_000_000)
    tail = [
        (c.old_status, c.new_status, c.reason)
        for c in StatusChange.objects.filter(deployment=deployment).order_by("at", "id")
    ][4:]
    assert tail == [
        ("running", "stopped", "stopped"),
        ("stopped", "error", "disk full"),
        ("error", "preparing", "disk"),
    ]
    # A redelivery of the same late step adds nothing.
    report(
        deployment_id=deployment.pk, status="initializing", reason="installing", at=ns + 2_000_000
    )
    assert StatusChange.objects.filter(deployment=deployment).count() == 7


def test_a_first_step_that_arrives_after_a_later_one_still_gets_its_row():
    app = make_app("crm")
    deployment = Deployment.objects.get(application=app)
    ns = int(T0.timestamp() * 1e9)
    report = services.deployment_report
    # A heartbeat (or another job worker) stored "running" before any step was recorded.
    report(deployment_id=deployment.pk, status="running", reason="serving", at=ns + 4_000_000)
    report(deployment_id=deployment.pk, status="preparing", reason="provisioning", at=ns + 10**6)
    report(
        deployment_id=deployment.pk, status="initializing", reason="installing", at=ns + 2 * 10**6
    )
    report(deployment_id=deployment.pk, status="stopped", reason="was stopped", at=ns)  # no-op
    chain = [
        (c.old_status, c.new_status, c.reason)
        for c in StatusChange.objects.filter(deployment=deployment).order_by("at", "id")
    ]
    assert chain == [
        ("stopped", "preparing", "provisioning"),
        ("preparing", "initializing", "installing"),
        ("initializing", "running", "serving"),
    ]
    deployment.refresh_from_db()
    assert deployment.status == "running"


def test_environment_registration_history():
    with time_machine.travel(T0, tick=False):
        services.environment_heartbeat(beat("env_a", started_at=1000.0))
        services.environment_heartbeat(beat("env_a", started_at=1000.0))  # a plain beat
        services.environment_heartbeat(beat("env_a", started_at=2000.0))
    services.environments_detect_offline(now=T0 + timedelta(seconds=1000))
    services.environment_heartbeat(beat("env_a", started_at=2000.0))
    services.environment_goodbye(name="env_a", started_at=2000.0)
    services.environments_purge(
        older_than=0, names=["env_a"], now=datetime.now(tz=UTC) + timedelta(days=1)
    )
    kinds = list(
        EnvironmentEvent.objects.filter(environment_name="env_a")
        .order_by("at", "id")
        .values_list("kind", flat=True)
    )
    assert kinds == ["registered", "restarted", "offline", "back", "goodbye", "purged"]


def test_admin_pages_carry_live_hooks_history_and_dashboard():
    boss = make_superuser()
    client = Client()
    client.force_login(boss)
    services.environment_heartbeat(beat("env_a"))
    app = make_app("crm", environments=["env_a"])
    deployment = Deployment.objects.get(application=app)
    services.deployment_report(deployment_id=deployment.pk, status="error", reason="boom")
    listing = client.get("/admin/supervisor/application/").content.decode()
    assert f'data-deployment="{deployment.pk}"' in listing and "supervisor/live.js" in listing
    page = client.get(f"/admin/supervisor/application/{app.pk}/change/").content.decode()
    assert "Status per environment" in page and "boom" in page and "stopped → error" in page
    environments = client.get("/admin/supervisor/environment/").content.decode()
    assert 'data-env-state="env_a"' in environments and 'data-heartbeat="env_a"' in environments
    environment = client.get(
        f"/admin/supervisor/environment/{app.deployments.get().environment_id}/change/"
    ).content.decode()
    assert "Registration history" in environment and "registered" in environment
    index = client.get("/admin/").content.decode()
    assert 'id="supervisor-dashboard"' in index and "boom" in index


def test_dashboard_counts_in_constant_queries():
    services.environment_heartbeat(beat("env_a"))
    services.environment_heartbeat(beat("env_b"))

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            selectors.dashboard()
        return len(queries)

    make_app("one", environments=["env_a"])
    few = count_queries()
    for n in range(20):
        make_app(f"app{n}", environments=["env_a", "env_b"])
    services.environment_goodbye(name="env_b", started_at=1000.0)
    assert count_queries() == few
    summary = selectors.dashboard()
    assert summary["apps"] == {"stopped": 21, "unknown": 20}
    assert summary["environments"]["offline"] == 1 and summary["app_count"] == 21
