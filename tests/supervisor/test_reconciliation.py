"""Reconciliation and the start queue under races: the freshest state decides, a command is
dispatched as it was claimed, and a start queue nobody moves on is resumed (no processes)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.supervisor import services
from apps.supervisor.models import Deployment, Environment
from tests.supervisor.test_environments import beat

pytestmark = pytest.mark.django_db(transaction=True)


def _app(name="crm", environments=("env_a",)):
    for env in environments:
        services.environment_heartbeat(beat(env))
    return services.application_create(
        name=name, title=name.upper(), environments=list(environments), db_type="sqlite"
    )


def _stored(app, **fields) -> Deployment:
    Deployment.objects.filter(application=app).update(**fields)
    return Deployment.objects.get(application=app)


def _there(status: str, at: int) -> dict:
    return {"crm": {"status": status, "command_id": str(uuid.uuid4()), "at": at}}


@pytest.mark.parametrize(
    ("desired", "stored", "beat_says", "reconciled"),
    [
        # Folded late, the beat says running, from before the report that said stopped.
        ("running", "stopped", "running", "running"),
        ("running", "running", "stopped", None),  # not started again
        ("stopped", "stopped", "running", None),  # not stopped again
    ],
)
def test_a_beat_older_than_the_stored_report_does_not_decide(
    desired, stored, beat_says, reconciled
):
    app = _app()
    command = uuid.uuid4()
    before = _stored(
        app,
        desired=desired,
        status=stored,
        command_id=command,
        command_action="start" if desired == "running" else "stop",
        reported_command_id=command,
        command_outcome=stored,
        reported_at=200,
    )
    services.environment_heartbeat(beat("env_a", apps=_there(beat_says, 100)))
    after = Deployment.objects.get(pk=before.pk)
    if reconciled is None:
        assert after.command_id == command
    else:
        assert after.command_id != command and after.command_actor == "reconciliation"
        assert after.status == reconciled  # the in-process start ran


def test_reconciliation_leaves_a_deployment_commanded_since_it_was_read():
    app = _app()
    command = uuid.uuid4()
    _stored(
        app,
        desired="running",
        status="stopped",
        command_id=command,
        command_action="start",
        reported_command_id=command,
        command_outcome="stopped",
        reported_at=200,
    )
    read = list(Deployment.objects.filter(application=app).select_related("application"))
    services.application_stop(application=app, actor="operator")  # asked meanwhile
    stop = Deployment.objects.get(application=app)
    environment = read[0].environment
    services.environment_reconcile(environment, _there("stopped", 100), read)
    now = Deployment.objects.get(pk=stop.pk)
    assert (now.command_id, now.command_action, now.desired) == (stop.command_id, "stop", "stopped")


def test_a_claimed_command_is_dispatched_as_claimed_even_if_the_row_changes_after():
    app = _app()
    deployment = Deployment.objects.select_related("environment", "application").get(
        application=app
    )
    assert services._claim_command(deployment, "stop", "operator", sent=True, desired="stopped")
    claimed = deployment.command_id
    Deployment.objects.filter(pk=deployment.pk).update(command_id=uuid.uuid4())  # a later ask
    assert deployment.command_id == claimed and deployment.command_action == "stop"
    assert not services._claim_command(
        deployment, "start", "operator", sent=False, when=services.Q(command_id=claimed)
    )
    assert deployment.command_id == claimed  # a failed claim changes nothing it holds


def test_a_start_queue_nobody_moves_on_is_resumed():
    app = _app(environments=("env_a", "env_b"))
    # Asked, then the asking process died before it sent anything.
    for deployment in Deployment.objects.filter(application=app):
        Deployment.objects.filter(pk=deployment.pk).update(
            desired="running", command_action="start", command_id=uuid.uuid4()
        )
    assert services.start_queues_resume() == 1
    rows = Deployment.objects.filter(application=app).order_by("environment__name")
    assert [(d.environment.name, d.status) for d in rows] == [
        ("env_a", "running"),
        ("env_b", "running"),
    ]
    assert services.start_queues_resume() == 0  # nothing waits any more


def test_a_queue_stopped_by_a_failure_is_not_resumed_again_and_again():
    app = _app(environments=("env_a", "env_b"))
    _, second, _ = _queued_behind_env_a(app, status="error", command_outcome="error", at=1)
    assert services.start_queues_resume() == 1  # env_b: reported "not started"
    second.refresh_from_db()
    assert second.status == "error" and "env_a failed" in second.error
    assert services.start_queues_resume() == 0


def _queued_behind_env_a(
    app, *, status: str = "preparing", at: int = 100, **first_fields
) -> tuple[Deployment, Deployment, uuid.UUID]:
    """A start queue: env_a's start sent and answered with `status` at `at`, env_b waiting."""
    first, second = Deployment.objects.filter(application=app).order_by("environment__name")
    command = uuid.uuid4()
    Deployment.objects.filter(pk=first.pk).update(
        desired="running",
        command_action="start",
        command_id=command,
        command_sent_at=services.timezone.now(),
        status=status,
        reported_command_id=command,
        reported_at=at,
        **first_fields,
    )
    Deployment.objects.filter(pk=second.pk).update(
        desired="running", command_action="start", command_id=uuid.uuid4()
    )
    return first, second, command


def test_an_outcome_stored_by_a_heartbeat_moves_the_start_queue_on():
    app = _app(environments=("env_a", "env_b"))
    _, second, command = _queued_behind_env_a(app)
    running = {"crm": {"status": "running", "command_id": str(command), "at": 200}}
    services.environment_heartbeat(beat("env_a", apps=running))
    second.refresh_from_db()
    assert second.command_sent_at is not None and second.status == "running"


def test_a_report_dropped_as_already_stored_still_moves_the_start_queue_on():
    app = _app(environments=("env_a", "env_b"))
    first, second, command = _queued_behind_env_a(app)
    # The heartbeat's path stored the outcome first (deployment_report moves no queue) ...
    assert services.deployment_report(
        deployment_id=first.pk, status="running", command_id=command, at=200
    )
    second.refresh_from_db()
    assert second.command_sent_at is None
    # ... so the report carrying it is dropped as not newer, and must move the queue on.
    report = {"env": "env_a", "app": "crm", "command_id": str(command), "status": "running"}
    assert not services.report_ingest({**report, "detail": "serving", "at": 200})
    second.refresh_from_db()
    assert second.command_sent_at is not None and second.status == "running"


def test_an_error_reason_survives_a_heartbeat_that_arrives_before_its_report():
    app = _app()
    t = time.time_ns()  # a real clock: a recent error is not retried at once
    deployment = _stored(app, desired="running", status="preparing", reported_at=t - 100)
    command = str(uuid.uuid4())
    reason = 'cannot connect to PostgreSQL: database "x" is not currently accepting connections'
    # An older environment's beat has no reason: the placeholder is stored ...
    error = {"crm": {"status": "error", "command_id": command, "at": t}}
    services.environment_heartbeat(beat("env_a", apps=error))
    deployment.refresh_from_db()
    assert (deployment.status, deployment.error) == ("error", services.HEARTBEAT_REASON)
    # ... and the report of that same state, dropped as not newer, puts its reason in.
    report = {"env": "env_a", "app": "crm", "command_id": command, "status": "error"}
    assert not services.report_ingest({**report, "detail": reason, "at": t})
    deployment.refresh_from_db()
    assert (deployment.error, deployment.detail) == (reason, reason)
    assert deployment.history.get(new_status="error").reason == reason
    # A beat that carries the reason (as environments send it) stores it at once.
    later = {"crm": {"status": "error", "command_id": command, "at": t + 200, "detail": "later"}}
    services.environment_heartbeat(beat("env_a", apps=later))
    deployment.refresh_from_db()
    assert deployment.error == "later"
    # A report of another state, or at another time, never rewrites a stored reason.
    assert not services.report_ingest({**report, "detail": "old", "at": t + 100})
    deployment.refresh_from_db()
    assert deployment.error == "later"


def test_a_superseded_start_that_ran_after_the_stop_is_stopped_again_not_expired(settings):
    app = _app()
    services.application_stop(application=app, actor="operator")  # answered: stopped
    stop = Deployment.objects.get(application=app)
    assert stop.command_outcome == "stopped"
    # An older start, sent late, ran after it: the environment reports running under its id.
    late = str(uuid.uuid4())
    report = {"env": "env_a", "app": "crm", "command_id": late, "status": "running"}
    services.report_ingest({**report, "detail": "serving", "at": time.time_ns()})
    assert Deployment.objects.get(pk=stop.pk).status == "running"
    later = timezone.now() + timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 3600)
    assert services.commands_expire(now=later) == 0  # the stop was answered: not overdue
    # The next beat sees it running while stopped is wanted: stopped again.
    there = {"crm": {"status": "running", "command_id": late, "at": time.time_ns()}}
    services.environment_heartbeat(beat("env_a", apps=there))
    now = Deployment.objects.get(pk=stop.pk)
    assert now.command_id != stop.command_id and now.command_actor == "reconciliation"
    assert (now.command_action, now.status) == ("stop", "stopped")


@pytest.fixture
def password_when_running():
    """What the app's kept password was at the moment each deployment was saved `running`."""
    from django.db.models.signals import post_save

    from apps.supervisor.models import Application

    seen: list[str] = []

    def look(sender, instance, **kwargs):
        if instance.status == "running":
            app = Application.objects.get(pk=instance.application_id)
            seen.append(app.pending_admin_password)

    post_save.connect(look, sender=Deployment, weak=False)
    yield seen
    post_save.disconnect(look, sender=Deployment)


def test_a_reported_password_is_kept_before_the_running_status_it_comes_with(
    password_when_running,
):
    app = _app(environments=("env_a", "env_b"))
    _, _, command = _queued_behind_env_a(app)  # env_a installing, as the password's report says
    report = {"env": "env_a", "app": "crm", "command_id": str(command), "status": "running"}
    credentials = {"username": "admin", "password": "s3cret-generated"}
    services.report_ingest({**report, "detail": "serving", "at": 300, "credentials": credentials})
    # An operator who sees `running` and opens the app finds the password waiting. (The queue
    # then moves on to env_b, started in this process: its own install keeps its own.)
    assert password_when_running[0] == "s3cret-generated"


def test_a_local_start_keeps_its_generated_password_before_it_stores_running(
    password_when_running,
):
    app = services.application_create(name="shop", title="Shop", environments=["local"])
    services.application_start(application=app, actor="operator", wait=True)
    assert len(password_when_running) == 1 and len(password_when_running[0]) >= 10


def _report_held_open(deployment_id: int, stored, hold: float) -> None:
    """Store a report for the deployment and keep its transaction open a while (a job
    worker's report being committed just as an operator deletes)."""
    from django.db import connection, transaction

    try:
        with transaction.atomic():
            services.deployment_report(
                deployment_id=deployment_id, status="error", reason="late", at=time.time_ns()
            )
            stored.set()
            time.sleep(hold)
    finally:
        connection.close()


def _delete_app(app):
    services.application_delete(application=app, drop_database=False, actor="operator")


def _purge_env(app):
    assert services.environments_purge(older_than=3600) == ["env_a"]


@pytest.mark.parametrize("delete", [_delete_app, _purge_env], ids=["app delete", "env purge"])
def test_a_delete_waits_for_a_report_being_stored_and_takes_its_history_along(delete):
    import threading

    from apps.supervisor.models import StatusChange

    app = _app()
    deployment = Deployment.objects.get(application=app)
    # env_a offline and long gone, so a purge takes it; set before the report holds its locks.
    gone = timezone.now() - timedelta(hours=2)
    Environment.objects.filter(name="env_a").update(status="offline", last_heartbeat_at=gone)
    stored = threading.Event()
    reporter = threading.Thread(target=_report_held_open, args=(deployment.pk, stored, 0.5))
    reporter.start()
    try:
        assert stored.wait(10)
        delete(app)  # without the row lock first: IntegrityError on the history's foreign key
    finally:
        reporter.join(10)
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    assert not StatusChange.objects.filter(deployment_id=deployment.pk).exists()


def test_a_report_being_stored_does_not_hold_up_its_environment(on_postgres):
    import threading

    app = _app(name="crm", environments=("env_a",))
    services.application_create(name="shop", title="Shop", environments=["env_a"])
    deployment = Deployment.objects.get(application=app)
    stored = threading.Event()
    reporter = threading.Thread(target=_report_held_open, args=(deployment.pk, stored, 1.0))
    reporter.start()
    try:
        assert stored.wait(10)
        started = time.perf_counter()
        # What a heartbeat store and another app's report on the same environment write.
        Environment.objects.filter(name="env_a").update(last_heartbeat_at=timezone.now())
        services.deployment_report(
            deployment_id=Deployment.objects.get(application__name="shop").pk,
            status="running",
            at=time.time_ns(),
        )
        waited = time.perf_counter() - started
    finally:
        reporter.join(10)
    if on_postgres:  # row locks: only crm's deployment row is held (SQLite locks the file)
        assert waited < 0.5, f"waited {waited:.2f} s for another deployment's report"
    assert Deployment.objects.get(pk=deployment.pk).status == "error"
    assert Deployment.objects.get(application__name="shop").status == "running"
