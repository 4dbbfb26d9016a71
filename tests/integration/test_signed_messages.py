"""Authenticated messages on a real cluster: messages put straight onto the queues with no
signature, a wrong key, an old timestamp, a copy of one already processed, or env_a's key
speaking for env_b, are refused by the real consumers (the supervisor's job worker, env_a's
Celery worker), logged and counted on /metrics, and change nothing stored; the same messages
properly signed do change it (so the checks are what stopped them), and the cluster goes on.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from django.conf import settings
from django.db import connections
from prometheus_client.parser import text_string_to_metric_families

from apps.adapters import transport
from apps.supervisor import services
from apps.supervisor.models import Environment, EnvironmentEvent, StatusChange
from supervisor_project.celery import app as celery_app
from tests.integration.cluster import MESSAGE_SECRET, wait_until
from workers import signing

pytestmark = pytest.mark.django_db(transaction=True)

# /metrics of every process without a token (the module's processes only).
CLUSTER_ENV = {"OBSERVABILITY_PUBLIC": "true"}
WRONG_SECRET = "not-the-cluster-secret-0123456789abcdefghijklmnop"
REJECTED = "appsupervisor_messages_rejected_total"
TO_SUPERVISOR = "workers.tasks.supervisor_message"
TO_ENVIRONMENT = "workers.tasks.env_command"


def key(env: str, secret: str = MESSAGE_SECRET) -> bytes:
    return signing.environment_key(secret, env)


def push(task: str, message, queue: str) -> None:
    """Onto the queue exactly as given: no signing (transport.publish would sign it)."""
    celery_app.send_task(task, args=[message], queue=transport.queue(queue))


def rejected(base: str) -> dict[str, float]:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200, response.text[:200]
    text = response.text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REJECTED:
                counts[sample.labels["reason"]] = sample.value
    return counts


def wait_counted(base: str, before: dict[str, float], expected: dict[str, int]) -> None:
    def counted():
        now = rejected(base)
        deltas = {reason: now.get(reason, 0) - before.get(reason, 0) for reason in expected}
        return deltas if deltas == expected else None

    wait_until(counted, timeout=30, what=f"{expected} more rejections on {base}/metrics")


def report(env: str, app: str, detail: str) -> dict:
    return {
        "v": 1,
        "type": "report",
        "env": env,
        "app": app,
        "command_id": None,
        "status": "error",
        "detail": detail,
        "at": time.time_ns(),
    }


def pong(env: str, command_id: str) -> dict:
    return {
        "v": 1,
        "type": "report",
        "kind": "pong",
        "env": env,
        "command_id": command_id,
        "at": time.time_ns(),
    }


def ping(env: str, command_id: str) -> dict:
    return {
        "v": 1,
        "type": "command",
        "id": command_id,
        "app": "",
        "env": env,
        "action": "ping",
        "drop_database": False,
        "sent_at": time.time(),
    }


def reasons_of(app: str) -> list[str]:
    connections["default"].close()  # see the job worker's commits
    return list(
        StatusChange.objects.filter(deployment__application__name=app).values_list(
            "reason", flat=True
        )
    )


def last_ping(env: str) -> str:
    connections["default"].close()
    return str(Environment.objects.get(name=env).last_ping_id)


def test_forged_messages_to_the_supervisor_change_nothing_and_are_counted(cluster):
    web = cluster.ensure_web()
    services.application_create(
        name="signed", title="Signed", environments=["env_a", "env_b"], db_type="sqlite"
    )
    env_a = Environment.objects.get(name="env_a")
    # What a forged beat would add (a slow machine may add offline/back on its own).
    forged_kinds = ("registered", "restarted")
    events = EnvironmentEvent.objects.filter(environment_name="env_a", kind__in=forged_kinds)
    events = events.count()
    before = rejected(web)

    # A report under a key made from another secret.
    forged = signing.seal(
        report("env_a", "signed", "forged"), key=key("env_a", WRONG_SECRET), kid="env_a"
    )
    push(TO_SUPERVISOR, forged, settings.SUPERVISOR_QUEUE)
    # A heartbeat with no signature: it would move env_a's URL and record a restart.
    push(
        TO_SUPERVISOR,
        {
            "v": 1,
            "type": "heartbeat",
            "env": "env_a",
            "url": "http://evil.example",
            "proxy_url": "",
            "version": "6.6.6",
            "started_at": 1.0,
            "interval": 1,
            "apps": {},
        },
        settings.SUPERVISOR_QUEUE,
    )
    # env_a's own key, speaking for env_b.
    cross = signing.seal(report("env_b", "signed", "cross"), key=key("env_a"), kid="env_a")
    push(TO_SUPERVISOR, cross, settings.SUPERVISOR_QUEUE)
    # The right key, but signed long ago.
    stale = signing.seal(
        report("env_a", "signed", "stale"), key=key("env_a"), kid="env_a", ts=time.time() - 3600
    )
    push(TO_SUPERVISOR, stale, settings.SUPERVISOR_QUEUE)
    # A genuine pong, processed; a newer one; then the first again: accepted, it would move
    # last_ping_id back.
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    first_pong = signing.seal(pong("env_a", first), key=key("env_a"), kid="env_a")
    push(TO_SUPERVISOR, first_pong, settings.SUPERVISOR_QUEUE)
    wait_until(lambda: last_ping("env_a") == first, timeout=30, what="the first pong stored")
    push(
        TO_SUPERVISOR,
        signing.seal(pong("env_a", second), key=key("env_a"), kid="env_a"),
        settings.SUPERVISOR_QUEUE,
    )
    wait_until(lambda: last_ping("env_a") == second, timeout=30, what="the second pong stored")
    push(TO_SUPERVISOR, first_pong, settings.SUPERVISOR_QUEUE)

    wait_counted(
        web,
        before,
        {"bad_signature": 1, "unsigned": 1, "cross_environment": 1, "stale": 1, "replayed": 1},
    )
    assert reasons_of("signed") == []
    assert last_ping("env_a") == second
    env_a.refresh_from_db()
    assert env_a.url == cluster.url("env_a") and env_a.version != "6.6.6"
    assert (
        EnvironmentEvent.objects.filter(environment_name="env_a", kind__in=forged_kinds).count()
        == events
    )
    log = cluster.procs["jobs"].output()
    for reason in ("bad_signature", "unsigned", "cross_environment", "stale", "replayed"):
        assert f"rejected message ({reason})" in log, reason

    # The same report, signed with env_a's key now: it is stored (the checks stopped the rest).
    push(
        TO_SUPERVISOR,
        signing.seal(report("env_a", "signed", "genuine"), key=key("env_a"), kid="env_a"),
        settings.SUPERVISOR_QUEUE,
    )
    wait_until(lambda: "genuine" in reasons_of("signed"), timeout=30, what="the genuine report")
    assert reasons_of("signed") == ["genuine"]
    # And the cluster goes on: a command round trip through each environment.
    for name in ("env_a", "env_b"):
        sent = str(services.environment_ping(name=name))
        wait_until(lambda n=name, s=sent: last_ping(n) == s, timeout=30, what=f"{name}'s pong")


def test_forged_commands_to_an_environment_are_refused_and_counted(cluster):
    base = cluster.url("env_a")
    queue = transport.env_queue("env_a")
    before = rejected(base)
    forged = {name: str(uuid.uuid4()) for name in ("unsigned", "wrong", "other", "stale")}
    # Each would make env_a answer with a pong carrying its id, were it accepted.
    push(TO_ENVIRONMENT, ping("env_a", forged["unsigned"]), queue)
    push(
        TO_ENVIRONMENT,
        signing.seal(ping("env_a", forged["wrong"]), key=key("env_a", WRONG_SECRET), kid="env_a"),
        queue,
    )
    # A command for env_b (env_b's key) put onto env_a's queue.
    push(
        TO_ENVIRONMENT,
        signing.seal(ping("env_b", forged["other"]), key=key("env_b"), kid="env_b"),
        queue,
    )
    push(
        TO_ENVIRONMENT,
        signing.seal(
            ping("env_a", forged["stale"]), key=key("env_a"), kid="env_a", ts=time.time() - 3600
        ),
        queue,
    )
    # A genuine ping, answered; a newer one; then a copy of the first.
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    first_ping = signing.seal(ping("env_a", first), key=key("env_a"), kid="env_a")
    push(TO_ENVIRONMENT, first_ping, queue)
    wait_until(lambda: last_ping("env_a") == first, timeout=30, what="the first ping answered")
    push(TO_ENVIRONMENT, signing.seal(ping("env_a", second), key=key("env_a"), kid="env_a"), queue)
    wait_until(lambda: last_ping("env_a") == second, timeout=30, what="the second ping answered")
    push(TO_ENVIRONMENT, first_ping, queue)

    wait_counted(
        base,
        before,
        {"unsigned": 1, "bad_signature": 1, "cross_environment": 1, "stale": 1, "replayed": 1},
    )
    time.sleep(1)  # a pong, had one been sent, would be stored by now
    assert last_ping("env_a") == second
    log = cluster.procs["env_a"].output()
    for reason in ("unsigned", "bad_signature", "cross_environment", "stale", "replayed"):
        assert f"rejected command ({reason})" in log, reason
    # env_a still takes the supervisor's commands.
    sent = str(services.environment_ping(name="env_a"))
    wait_until(lambda: last_ping("env_a") == sent, timeout=30, what="env_a's pong")
