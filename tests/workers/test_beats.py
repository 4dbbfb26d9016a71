"""Heartbeats and goodbyes through the Redis hash and the supervisor's fold (real Redis, real
database): an environment leaves its latest beat; fold_heartbeats stores a batch in a few
statements, refuses what does not verify, and keeps a beat and its goodbye in order."""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.adapters import transport
from apps.supervisor import services
from apps.supervisor.models import Deployment, Environment, EnvironmentEvent
from tests.factories import make_app
from tests.observability.test_metrics import scrape, value
from workers import signing, tasks

SECRET = "beats-master-secret-0123456789abcdefghijklmno"
REJECTED = "appsupervisor_messages_rejected_total"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def beats(settings, redis_url):
    """The command Redis of multi-environment mode, under a prefix of this test."""
    settings.APP_QUEUE_PREFIX = f"hb{uuid.uuid4().hex[:8]}."
    settings.CELERY_BROKER_URL = redis_url
    settings.ENVIRONMENT_NAME = ""
    settings.APP_MESSAGE_SECRETS = [SECRET]
    settings.APP_ENVIRONMENT_KEYS = []
    transport._broker_redis.cache_clear()
    client = transport._broker_redis()
    yield client
    client.delete(transport.beats_key())
    transport._broker_redis.cache_clear()


def heartbeat(env: str, *, started_at: float = 1000.0, apps=None, url: str = "") -> dict:
    return {
        "v": 1,
        "type": "heartbeat",
        "env": env,
        "url": url or f"http://{env}.test",
        "proxy_url": "",
        "version": "0.1.0",
        "started_at": started_at,
        "interval": 120,
        "apps": apps or {},
    }


def goodbye(env: str, started_at: float = 1000.0) -> dict:
    return {"v": 1, "type": "goodbye", "env": env, "started_at": started_at}


def test_the_latest_beat_of_each_environment_waits_in_one_hash_and_is_taken_once(beats):
    transport.beat_put(heartbeat("env_a", url="http://old.test"))
    transport.beat_put(heartbeat("env_a", url="http://new.test"))
    transport.beat_put(heartbeat("env_b"))
    waiting = transport.beats_take()
    assert sorted(waiting) == ["env_a", "env_b"]
    assert json.loads(waiting["env_a"])["url"] == "http://new.test"
    assert json.loads(waiting["env_a"])["sig"]  # signed with env_a's key
    assert transport.beats_take() == {}


def test_a_fold_registers_new_environments_and_refreshes_known_ones(beats):
    transport.beat_put(heartbeat("env_a"))
    tasks.fold_heartbeats()
    first = Environment.objects.get(name="env_a")
    assert first.status == "online" and first.url == "http://env_a.test"
    assert EnvironmentEvent.objects.filter(environment_name="env_a", kind="registered").exists()
    time.sleep(0.01)
    transport.beat_put(heartbeat("env_a"))
    transport.beat_put(heartbeat("env_b"))
    tasks.fold_heartbeats()
    again = Environment.objects.get(name="env_a")
    assert again.last_heartbeat_at > first.last_heartbeat_at
    assert again.next_deadline_at > first.next_deadline_at
    assert Environment.objects.get(name="env_b").status == "online"
    assert EnvironmentEvent.objects.filter(environment_name="env_a").count() == 1


def test_a_goodbye_left_after_a_beat_replaces_it_and_wins(beats):
    transport.beat_put(heartbeat("env_a"))
    tasks.fold_heartbeats()
    transport.beat_put(heartbeat("env_a"))
    transport.beat_put(goodbye("env_a"))
    tasks.fold_heartbeats()
    assert Environment.objects.get(name="env_a").status == "offline"
    kinds = list(
        EnvironmentEvent.objects.filter(environment_name="env_a")
        .order_by("at", "pk")
        .values_list("kind", flat=True)
    )
    assert kinds == ["registered", "goodbye"]


def test_usual_beats_cost_the_same_statements_for_3_or_30_environments(beats):
    def fold_queries(names: list[str]) -> int:
        for name in names:
            transport.beat_put(heartbeat(name))
        tasks.fold_heartbeats()  # registers them (the full path, once per environment)
        for name in names:
            transport.beat_put(heartbeat(name))
        with CaptureQueriesContext(connection) as queries:
            tasks.fold_heartbeats()
        return len(queries)

    few = fold_queries([f"few{i}" for i in range(3)])
    many = fold_queries([f"many{i:02d}" for i in range(30)])
    assert few == many <= 4, (few, many)


def test_a_fold_reconciles_each_environment_with_its_apps(beats):
    services.environment_beats([heartbeat("env_r")])  # registers
    app = make_app("crm", environments=["env_r"])
    Deployment.objects.filter(application=app).update(desired="stopped", status="running")
    state = {"status": "running", "command_id": None, "at": time.time_ns()}
    services.environment_beats([heartbeat("env_r", apps={"crm": state})])  # the usual path
    deployment = Deployment.objects.get(application=app)
    # Wanted stopped, reported running: reconciliation asked it to stop.
    assert deployment.command_action == "stop" and deployment.command_actor == "reconciliation"


def test_an_environment_marked_offline_since_the_read_takes_the_full_path(beats):
    transport.beat_put(heartbeat("env_a"))
    tasks.fold_heartbeats()
    Environment.objects.filter(name="env_a").update(status="offline")
    transport.beat_put(heartbeat("env_a"))
    tasks.fold_heartbeats()
    assert Environment.objects.get(name="env_a").status == "online"
    assert EnvironmentEvent.objects.filter(environment_name="env_a", kind="back").exists()


@pytest.mark.parametrize(
    ("field", "data", "reason"),
    [
        ("env_a", b"not json", "malformed"),
        ("env_a", json.dumps(heartbeat("env_a")).encode(), "unsigned"),
        ("env_b", None, "cross_environment"),  # env_a's signed beat left under env_b
        ("env_a", "report", "wrong_queue"),
    ],
    ids=["not-json", "unsigned", "under-another-name", "not-a-beat"],
)
def test_what_does_not_verify_is_refused_logged_and_counted(
    beats, settings, caplog, field, data, reason
):
    settings.OBSERVABILITY_PUBLIC = True
    if data is None:
        data = json.dumps(signing.sign(heartbeat("env_a"))).encode()
    elif data == "report":
        report = {"v": 1, "type": "report", "env": "env_a", "app": "crm", "status": "running"}
        report |= {"command_id": str(uuid.uuid4()), "detail": "", "at": time.time_ns()}
        data = json.dumps(signing.sign(report)).encode()
    before = value(scrape(), REJECTED, reason=reason) or 0
    beats.hset(transport.beats_key(), field, data)
    transport.beat_put(heartbeat("env_c"))  # a good one in the same fold is still stored
    with caplog.at_level(logging.WARNING, logger="workers"):
        tasks.fold_heartbeats()
    assert f"rejected beat ({reason})" in caplog.text
    assert value(scrape(), REJECTED, reason=reason) == before + 1
    assert set(Environment.objects.values_list("name", flat=True)) >= {"env_c"}
    assert not Environment.objects.filter(name__in=["env_a", "env_b"]).exists()


def test_a_second_fold_while_one_holds_the_lock_leaves_the_beats_waiting(beats):
    transport.beat_put(heartbeat("env_a"))
    lock = transport.beats_fold_lock()
    assert lock.acquire()
    try:
        tasks.fold_heartbeats()
        assert not Environment.objects.filter(name="env_a").exists()
    finally:
        lock.release()
    tasks.fold_heartbeats()
    assert Environment.objects.filter(name="env_a").exists()


@pytest.mark.django_db(transaction=True)  # the task closes the connection after its work
def test_every_periodic_task_is_registered_and_runs_its_service(settings):
    from supervisor_project.celery import app

    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry["task"]
    stale = Environment.objects.create(name="env_q", url="http://127.0.0.1:1", status="online")
    Environment.objects.filter(pk=stale.pk).update(next_deadline_at=services.timezone.now())
    tasks.detect_offline.apply()  # in this process, as a Celery task: the real task object
    assert Environment.objects.get(pk=stale.pk).status == "offline"
    assert tasks.expire_commands.name == "workers.tasks.expire_commands"
