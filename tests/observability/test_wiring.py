"""The recording calls are made where things happen: a command's first final report, an
expired command, a refused queue message, a request the proxy answers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.gateway.proxy import ProxyApp
from apps.supervisor import services
from apps.supervisor.models import Deployment
from tests.factories import make_app
from tests.observability.test_metrics import scrape, value
from workers import tasks

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _public(settings):
    settings.OBSERVABILITY_PUBLIC = True


def test_a_commands_first_final_answer_is_counted_once_and_an_expired_one_as_timeout():
    app = make_app("crm")
    deployment = Deployment.objects.get(application=app)
    command = uuid.uuid4()
    Deployment.objects.filter(pk=deployment.pk).update(
        command_id=command,
        command_action="start",
        command_sent_at=timezone.now() - timedelta(seconds=2),
    )
    before = scrape()
    report = services.deployment_report
    report(deployment_id=deployment.pk, status="preparing", command_id=command)  # not final
    report(deployment_id=deployment.pk, status="running", command_id=command)
    report(deployment_id=deployment.pk, status="running", command_id=command)  # a heartbeat
    Deployment.objects.filter(pk=deployment.pk).update(
        command_id=uuid.uuid4(),
        command_action="stop",
        command_sent_at=timezone.now() - timedelta(days=1),
        command_outcome="",  # as every new command (services._claim_command)
    )
    assert services.commands_expire() == 1
    after = scrape()
    total = "appsupervisor_commands_total"
    ok = value(after, total, action="start", result="ok") - value(
        before, total, action="start", result="ok"
    )
    timeouts = value(after, total, action="stop", result="timeout") - value(
        before, total, action="stop", result="timeout"
    )
    assert (ok, timeouts) == (1, 1)


def test_a_refused_queue_message_is_counted_by_reason():
    before = scrape()
    tasks.supervisor_message.run({"v": 99, "type": "report"})
    tasks.supervisor_message.run("not a message")
    after = scrape()
    name = "appsupervisor_messages_rejected_total"
    assert value(after, name, reason="bad_version") - value(before, name, reason="bad_version") == 1
    assert value(after, name, reason="malformed") - value(before, name, reason="malformed") == 1


def test_an_answer_of_the_proxy_is_counted_by_status():
    before = scrape()
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/apps/nosuchapp/",
        "raw_path": b"/apps/nosuchapp/",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    asyncio.run(ProxyApp(None)(scope, receive, send))
    assert sent[0]["status"] == 404
    after = scrape()
    name = "appsupervisor_proxy_requests_total"
    assert value(after, name, status="404") - value(before, name, status="404") == 1
