"""Environment liveness, report ordering, offline detection and purge (no processes)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command

from apps.supervisor import selectors, services
from apps.supervisor.models import Deployment, Environment, EnvironmentEvent, StatusChange
from apps.supervisor.statuses import environment_liveness

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0, "online"), (150, "online"), (151, "stale"), (270, "stale"), (271, "offline")],
)
def test_liveness_has_grace_stale_after_one_missed_beat_offline_after_two(age, expected):
    assert (
        environment_liveness(
            status="online",
            last_heartbeat_at=T0,
            interval=120,
            grace=30,
            now=T0 + timedelta(seconds=age),
        )
        == expected
    )


def test_in_process_environment_without_beats_is_online_and_offline_wins():
    assert (
        environment_liveness(
            status="online", last_heartbeat_at=None, interval=None, grace=30, now=T0
        )
        == "online"
    )
    assert (
        environment_liveness(status="offline", last_heartbeat_at=T0, interval=120, grace=30, now=T0)
        == "offline"
    )


def beat(env="env_a", started_at=1000.0, interval=120, apps=None):
    return {
        "v": 1,
        "type": "heartbeat",
        "env": env,
        "url": f"http://{env}.test",
        "proxy_url": "",
        "version": "0.1.0",
        "started_at": started_at,
        "interval": interval,
        "apps": apps or {},
    }


@pytest.mark.django_db
def test_first_heartbeat_registers_with_receiver_clock_and_deadline(settings):
    with time_machine.travel(T0, tick=False):
        environment = services.environment_heartbeat(beat())
    assert environment.status == "online" and environment.last_heartbeat_at == T0
    assert environment.proxy_url == "http://env_a.test"  # proxy URL defaults to the URL
    assert environment.next_deadline_at == T0 + timedelta(seconds=240 + settings.HEARTBEAT_GRACE)


@pytest.mark.django_db(transaction=True)
def test_detector_marks_offline_once_even_when_two_run_at_once():
    with time_machine.travel(T0, tick=False):
        services.environment_heartbeat(beat("env_a"))
        services.environment_heartbeat(beat("env_b"))
    later = T0 + timedelta(seconds=300)
    services.environment_heartbeat(beat("env_b"))  # env_b keeps beating (now)
    results: list[list[str]] = []
    barrier = threading.Barrier(2)

    def detect():
        barrier.wait()
        results.append(services.environments_detect_offline(now=later))

    threads = [threading.Thread(target=detect) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(n for r in results for n in r) == ["env_a"]
    assert Environment.objects.get(name="env_a").status == "offline"
    assert Environment.objects.get(name="env_b").status == "online"


@pytest.mark.django_db
def test_apps_on_an_offline_environment_show_unknown_and_return_on_a_beat():
    services.environment_heartbeat(beat("env_a"))
    app = services.application_create(
        name="crm", title="CRM", environments=["env_a"], db_type="sqlite"
    )
    Deployment.objects.filter(application=app).update(status="running", desired="running")
    services.environment_goodbye(name="env_a", started_at=1000.0)
    app = selectors.application_list_with_status().get(name="crm")
    assert selectors.application_statuses(app) == {"env_a": "unknown"}
    # A goodbye from an older process of env_a does not take a newer one offline.
    services.environment_heartbeat(
        beat(
            "env_a",
            started_at=2000.0,
            apps={"crm": {"status": "running", "command_id": None, "at": time.time_ns()}},
        )
    )
    assert not services.environment_goodbye(name="env_a", started_at=1000.0)
    app = selectors.application_list_with_status().get(name="crm")
    assert selectors.application_statuses(app) == {"env_a": "running"}


@pytest.mark.django_db
def test_an_older_report_never_overwrites_a_newer_one():
    services.environment_heartbeat(beat("env_a"))
    app = services.application_create(
        name="crm", title="CRM", environments=["env_a"], db_type="sqlite"
    )
    deployment = Deployment.objects.get(application=app)
    newer, older = uuid.uuid4(), uuid.uuid4()
    assert services.deployment_report(
        deployment_id=deployment.pk, status="stopped", command_id=newer, at=200
    )
    assert not services.deployment_report(
        deployment_id=deployment.pk, status="running", command_id=older, at=100
    )
    deployment.refresh_from_db()
    assert deployment.status == "stopped" and deployment.reported_command_id == newer


@pytest.mark.django_db
def test_reports_for_apps_not_deployed_there_are_ignored():
    services.environment_heartbeat(beat("env_a"))
    assert not services.report_ingest(
        {
            "env": "env_a",
            "app": "ghost",
            "command_id": None,
            "status": "running",
            "detail": "",
            "at": 1,
        }
    )
    assert StatusChange.objects.count() == 0


@pytest.mark.django_db
def test_purge_forgets_only_offline_environments_seen_long_ago(capsys):
    with time_machine.travel(T0, tick=False):
        services.environment_heartbeat(beat("old"))
        services.environment_goodbye(name="old", started_at=1000.0)
    services.environment_heartbeat(beat("fresh"))
    services.environment_goodbye(name="fresh", started_at=1000.0)
    services.environment_heartbeat(beat("alive"))
    app = services.application_create(
        name="crm", title="CRM", environments=["old", "alive"], db_type="sqlite"
    )
    call_command("environments", "purge", "--older-than", "3600", "--json")
    assert '"name": "old"' in capsys.readouterr().out
    assert set(Environment.objects.values_list("name", flat=True)) == {"fresh", "alive"}
    assert list(app.deployments.values_list("environment__name", flat=True)) == ["alive"]
    # It comes back: it registers anew, with no deployments.
    services.environment_heartbeat(beat("old", started_at=3000.0))
    assert Environment.objects.get(name="old").status == "online"


@pytest.mark.django_db(transaction=True)
def test_a_status_change_and_its_history_row_are_stored_together(monkeypatch):
    """Whoever sees an environment online, offline or gone also sees the event saying why
    (a reader between the two writes once saw 'online' with no 'registered' row)."""
    services.environment_heartbeat(beat("env_a"))
    assert kinds("env_a") == ["registered"]

    def refuse(*args, **kwargs):
        raise RuntimeError("history not writable")

    monkeypatch.setattr(EnvironmentEvent.objects, "create", refuse)
    with pytest.raises(RuntimeError):
        services.environment_goodbye(name="env_a", started_at=1000.0)
    assert Environment.objects.get(name="env_a").status == "online"  # rolled back with it
    with pytest.raises(RuntimeError):
        services.environment_heartbeat(beat("env_b"))
    assert not Environment.objects.filter(name="env_b").exists()
    later = datetime.now(UTC) + timedelta(days=1)
    assert services.environments_detect_offline(now=later) == []  # logged, row left online
    assert Environment.objects.get(name="env_a").status == "online"
    monkeypatch.undo()
    services.environment_goodbye(name="env_a", started_at=1000.0)
    assert Environment.objects.get(name="env_a").status == "offline"
    assert kinds("env_a") == ["goodbye", "registered"]


def kinds(name: str) -> list[str]:
    return list(
        EnvironmentEvent.objects.filter(environment_name=name).values_list("kind", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_reconciliation_retries_a_failed_start_only_after_the_back_off(settings):
    services.environment_heartbeat(beat("env_a"))
    app = services.application_create(
        name="flaky",
        title="Flaky",
        environments=["env_a"],
        db_type="new_database",
        db_host="127.0.0.1",
        db_port=1,
    )
    services.application_start(application=app, actor="test")
    failed = Deployment.objects.get(application=app)
    assert failed.status == "error" and failed.desired == "running"
    stopped_there = {"flaky": {"status": "stopped", "command_id": None, "at": 1}}
    services.environment_heartbeat(beat("env_a", apps=stopped_there))
    assert Deployment.objects.get(pk=failed.pk).command_id == failed.command_id  # not retried
    later = datetime.now(UTC) + timedelta(seconds=settings.APP_START_RETRY_AFTER + 1)
    with time_machine.travel(later, tick=False):
        services.environment_heartbeat(beat("env_a", apps=stopped_there))
    assert Deployment.objects.get(pk=failed.pk).command_id != failed.command_id  # retried


@pytest.mark.django_db
def test_a_usual_beat_costs_the_same_few_queries_whatever_the_number_of_apps():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    services.environment_heartbeat(beat("env_a"))

    def steady_beat(apps: int) -> int:
        names = [f"q{apps}x{i}" for i in range(apps)]
        for name in names:
            app = services.application_create(
                name=name, title=name, environments=["env_a"], db_type="sqlite"
            )
            Deployment.objects.filter(application=app).update(
                desired="running", status="running", reported_at=5
            )
        states = {
            n: {"status": "running", "command_id": None, "at": 5}
            for n in Deployment.objects.filter(environment__name="env_a").values_list(
                "application__name", flat=True
            )
        }
        with CaptureQueriesContext(connection) as queries:
            services.environment_heartbeat(beat("env_a", apps=states))
        return len(queries)

    few, many = steady_beat(2), steady_beat(20)
    assert few == many and many <= 4, (few, many)
    environment = Environment.objects.get(name="env_a")
    assert environment.last_heartbeat_at is not None and environment.status == "online"
