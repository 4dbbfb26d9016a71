"""Writes of the control plane. Admin, commands, views and tasks are thin callers of these."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps import adapters
from apps.observability import metrics
from apps.observability.logcontext import bind
from apps.runtime.runtime import AppRuntimeError, InstallResult
from apps.supervisor import live, selectors
from apps.supervisor.models import (
    Application,
    DbType,
    Deployment,
    Environment,
    EnvironmentEvent,
    StartMode,
    StatusChange,
)
from apps.supervisor.statuses import IN_PROGRESS, AppStatus, Desired, EnvStatus

log = logging.getLogger(__name__)


# --- Environments ------------------------------------------------------------------------
def environment_ensure_local() -> Environment:
    """The in-process environment of local mode (exactly one, named by ENVIRONMENT_NAME)."""
    environment, _ = Environment.objects.update_or_create(
        name=settings.ENVIRONMENT_NAME,
        defaults={"status": EnvStatus.ONLINE, "heartbeat_interval": None},
        create_defaults={
            "status": EnvStatus.ONLINE,
            "started_at": timezone.now(),
            "url": settings.ENVIRONMENT_URL,
            "proxy_url": settings.ENVIRONMENT_PROXY_URL,
        },
    )
    return environment


# --- Applications: create, update, delete ------------------------------------------------
def _environments_by_name(names: Iterable[str]) -> list[Environment]:
    names = list(dict.fromkeys(names))
    if not names:
        raise ValidationError({"environments": "Choose at least one environment."})
    found = {e.name: e for e in Environment.objects.filter(name__in=names)}
    missing = [n for n in names if n not in found]
    if missing:
        raise ValidationError({"environments": f"Unknown environment(s): {', '.join(missing)}."})
    return [found[n] for n in names]


@transaction.atomic
def application_create(
    *,
    name: str,
    title: str,
    environments: Iterable[str] | None = None,
    db_type: str | None = None,
    start_mode: str = StartMode.ON_FIRST_VISIT,
    icon: str = "",
    pinned: bool = False,
    custom_domain: str | None = None,
    db_host: str = "",
    db_port: int | None = None,
    db_user: str = "",
    db_password: str = "",
    db_database: str = "",
    options: dict[str, Any] | None = None,
) -> Application:
    """Create an application (stopped) on the given environments, in start-queue order."""
    if db_type is None:
        db_type = DbType.SQLITE if selectors.default_db_server() is None else DbType.NEW_DATABASE
    application = Application(
        name=name,
        title=title,
        db_type=db_type,
        start_mode=start_mode,
        icon=icon,
        pinned=pinned,
        custom_domain=custom_domain or None,
        db_host=db_host,
        db_port=db_port,
        db_user=db_user,
        db_password=db_password,
        db_database=db_database,
        options=options if options is not None else {},
    )
    application.full_clean()
    if environments is None:
        environments = [settings.ENVIRONMENT_NAME]
    environments = list(environments)
    if settings.ENVIRONMENT_NAME and settings.ENVIRONMENT_NAME in environments:
        environment_ensure_local()
    targets = _environments_by_name(environments)
    application.save()
    application_set_environments(application=application, environments=targets)
    transaction.on_commit(lambda: _announce(application.pk))
    return application


def _announce(application_id: int) -> None:
    """Tell each environment of a new app (after the config cache has it)."""
    application = selectors.application_list_with_status().filter(pk=application_id).first()
    if application is None:
        return
    spec = selectors.application_spec(application)
    for deployment in application.deployments.all():
        try:
            adapters.process().create(spec, environment=deployment.environment.name)
        except AppRuntimeError as exc:  # the first start tells it anyway
            log.warning(
                "could not announce %s to %s: %s", spec.name, deployment.environment.name, exc
            )


def application_update(*, application: Application) -> Application:
    """Save an edited app (the admin form validated it) and republish its configuration."""
    application.full_clean()
    application.save()
    config_publish(application.pk)
    return application


@transaction.atomic
def application_set_environments(
    *, application: Application, environments: list[Environment]
) -> None:
    """Make the app live on exactly these environments, in this start-queue order."""
    if not environments:
        raise ValidationError({"environments": "Choose at least one environment."})
    # Locked, then checked: a removed deployment is deleted with its history (_deletable).
    current = {d.environment_id: d for d in _deletable(application.deployments.all())}
    for position, environment in enumerate(environments):
        deployment = current.pop(environment.pk, None)
        if deployment is None:
            Deployment.objects.create(
                application=application, environment=environment, position=position
            )
        elif deployment.position != position:
            Deployment.objects.filter(pk=deployment.pk).update(position=position)
    for deployment in current.values():
        if deployment.desired == Desired.RUNNING or deployment.status != AppStatus.STOPPED:
            raise ValidationError(
                {
                    "environments": f"Stop the app on {deployment.environment.name} "
                    "before removing it from there."
                }
            )
        deployment.delete()
    config_publish(application.pk)


def application_delete(*, application: Application, drop_database: bool, actor: str) -> None:
    """Stop the app everywhere and delete it. Its data is dropped only when asked."""
    spec = selectors.application_spec(application)
    for deployment in application.deployments.select_related("environment"):
        try:
            adapters.process().remove(
                spec, environment=deployment.environment.name, drop_database=False
            )
        except AppRuntimeError as exc:
            raise ValidationError(f"could not stop {application.name}: {exc}") from exc
    if drop_database:
        try:
            from apps.runtime import runtime

            runtime.remove(spec, drop_database=True)
        except AppRuntimeError as exc:
            raise ValidationError(
                f"could not drop the database of {application.name}: {exc}"
            ) from exc
    with transaction.atomic():
        _deletable(Deployment.objects.filter(application=application))
        application.delete()
        transaction.on_commit(
            lambda name=application.name: adapters.discovery().publish(name, None)
        )
    log.info(
        "app %s deleted by %s (database %s)",
        application.name,
        actor or "?",
        "dropped" if drop_database else "kept",
    )


# A deployment row lock and nothing else. Deployment's default ordering joins its environment,
# and a plain FOR UPDATE would lock that environment's row too, for as long as the report (or
# delete) holds the lock: every other report for the same environment, from any job worker,
# and its heartbeat store would wait in line.
_ROW_ONLY = ("self",)
HEARTBEAT_REASON = "reported by heartbeat"  # a state known from a beat, not yet its report


def _deletable(deployments) -> list[Deployment]:
    """Lock deployment rows about to be deleted (in the caller's transaction).

    Their history goes with them by cascade. A report being stored meanwhile adds a status
    change row under the deployment's row lock (deployment_report); unless the delete takes
    that lock first, its cascade misses the new row and the COMMIT fails on its foreign key
    (seen as a 500 on an app's delete). Locked first, the delete waits for the report and
    takes its row along, or the report waits and finds the deployment gone.
    """
    return list(deployments.select_for_update(of=_ROW_ONLY))


# --- Status reports ----------------------------------------------------------------------
FINAL = frozenset({AppStatus.RUNNING, AppStatus.ERROR, AppStatus.STOPPED, AppStatus.NOT_FOUND})


def deployment_report(
    *,
    deployment_id: int,
    status: str,
    reason: str = "",
    command_id: uuid.UUID | str | None = None,
    actor: str = "",
    at: int | None = None,
    result: str = "",
) -> bool:
    """Store an observed status (and a history row when it changed).

    `at` is the reporter's clock in ns; a report older than the one stored is dropped, so a
    late or redelivered message never overwrites newer state. False when dropped or unknown.
    """
    if status not in AppStatus.values:
        raise ValueError(f"unknown status {status!r}")
    at = at if at is not None else time.time_ns()
    # History is kept in the reporter's time, so that steps reported out of order (two job
    # workers, a redelivery) still line up as they happened.
    when = datetime.fromtimestamp(at / 1e9, tz=UTC)
    with transaction.atomic():
        deployment = (
            Deployment.objects.select_for_update(of=_ROW_ONLY).filter(pk=deployment_id).first()
        )
        if deployment is None:
            return False
        actor = (actor or deployment.command_actor)[:150]
        # The final answer to the command this deployment waits on (once: the first wins).
        answers = (
            status in FINAL
            and command_id is not None
            and str(command_id) == str(deployment.command_id)
            and not deployment.command_outcome
        )
        if deployment.reported_at is not None and at <= deployment.reported_at:
            # Older than what is stored: the current state stays, the step joins the history;
            # but it may still be the current command's answer (a beat told its state first).
            log.info("out-of-order report for deployment %s: history only", deployment_id)
            if at == deployment.reported_at and status == deployment.status:
                _reason_fill(deployment, reason, when)
            else:
                _history_insert(deployment, status, reason, command_id, actor, when)
            if answers:
                Deployment.objects.filter(pk=deployment.pk).update(command_outcome=status)
            return False
        old = deployment.status
        if answers and deployment.command_sent_at is not None:  # its latency
            metrics.command_finished(
                deployment.command_action or "unknown",
                result or ("ok" if status != AppStatus.ERROR else "error"),
                (timezone.now() - deployment.command_sent_at).total_seconds(),
            )
        if answers:
            deployment.command_outcome = status
        deployment.status = status
        deployment.status_at = when
        deployment.reported_at = at
        deployment.detail = reason[:500]
        deployment.error = reason if status == AppStatus.ERROR else ""
        if command_id is not None:
            deployment.reported_command_id = command_id
        deployment.save(
            update_fields=[
                "status",
                "status_at",
                "detail",
                "error",
                "reported_command_id",
                "reported_at",
                "command_outcome",
            ]
        )
        if old != status:
            _history_add(deployment, old, status, reason, command_id, actor, when)
        live.apps_changed([deployment.application_id])
    return True


def _history_add(deployment, old, status, reason, command_id, actor, when) -> None:
    StatusChange.objects.create(
        deployment=deployment,
        old_status=old,
        new_status=status,
        reason=reason[:2000],
        at=when,
        command_id=command_id,
        actor=actor,
    )


def _reason_fill(deployment, reason: str, when: datetime) -> None:
    """The report of a state a heartbeat stored first (same time, same status): its reason
    replaces the heartbeat's placeholder, in the state and in the history row."""
    if not reason or deployment.detail != HEARTBEAT_REASON:
        return
    Deployment.objects.filter(pk=deployment.pk, detail=HEARTBEAT_REASON).update(
        detail=reason[:500], error=reason if deployment.status == AppStatus.ERROR else ""
    )
    StatusChange.objects.filter(
        deployment=deployment, at=when, new_status=deployment.status, reason=HEARTBEAT_REASON
    ).update(reason=reason[:2000])


def _history_insert(deployment, status, reason, command_id, actor, when) -> None:
    """Put a late report's status change where it belongs in the deployment's history."""
    rows = StatusChange.objects.filter(deployment=deployment)
    before = rows.filter(at__lte=when).order_by("-at", "-id").first()
    after = rows.filter(at__gt=when).order_by("at", "id").first()
    # The status it had then: the row before's outcome, or, older than every row (a later
    # state was stored first), what the first row changed from.
    then = before.new_status if before is not None else after.old_status if after else None
    if then is None or then == status:
        return  # no change at that time (or a redelivery of a step already recorded)
    if after is not None and after.new_status == status:
        # The change was already recorded from a later step: it happened this early.
        StatusChange.objects.filter(pk=after.pk).update(
            at=when, reason=reason[:2000], command_id=command_id
        )
        return
    _history_add(deployment, then, status, reason, command_id, actor, when)
    if after is not None and after.old_status != status:
        StatusChange.objects.filter(pk=after.pk).update(old_status=status)


# --- Commands and the start queue --------------------------------------------------------
@dataclass
class CommandOutcome:
    application: str
    started: list[str] = field(default_factory=list)  # environments the command went to
    skipped: list[str] = field(default_factory=list)  # a start already under way there
    failed: dict[str, str] = field(default_factory=dict)  # environment -> error
    install: InstallResult | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def _start_in_flight() -> Q:
    """A start asked for whose outcome has not been reported yet."""
    return Q(command_action="start", command_id__isnull=False, command_outcome="")


def _claim_command(
    deployment: Deployment,
    action: str,
    actor: str,
    *,
    sent: bool,
    when: Q | None = None,
    unless: Q | None = None,
    desired: str | None = None,
) -> bool:
    """Make a new command the deployment's current one, if the row still matches `when`
    (and not `unless`); on success `deployment` holds exactly what was claimed.

    Whoever claims dispatches the command it claimed, never one read back afterwards: a
    start or stop asked in between replaces the row's command, and dispatching that one as
    this action would send a stop under a start's id (the environment would then take the
    real start for a redelivery of a finished command and never run it)."""
    fields: dict[str, Any] = {
        "command_id": uuid.uuid4(),
        "command_action": action,
        "command_actor": actor[:150],
        "command_sent_at": timezone.now() if sent else None,
        "command_outcome": "",
    }
    if desired is not None:
        fields["desired"] = desired
    rows = Deployment.objects.filter(pk=deployment.pk)
    if when is not None:
        rows = rows.filter(when)
    if unless is not None:
        rows = rows.exclude(unless)
    if not rows.update(**fields):
        return False
    for name, value in fields.items():
        setattr(deployment, name, value)
    return True


def _dispatch(deployment: Deployment, action: str) -> InstallResult | None:
    """Hand one command to the process adapter: done here (local) or sent (remote).

    A local adapter reports synchronously; a remote one returns once the command is queued,
    and its reports arrive later through environment_message.
    """
    spec = selectors.application_spec(deployment.application)

    def report(status: str, detail: str, credentials: dict[str, str] | None = None) -> None:
        if credentials:  # first: "running" is what makes an operator look for them
            application_keep_password(
                deployment.application_id, credentials["username"], credentials["password"]
            )
        deployment_report(
            deployment_id=deployment.pk,
            status=status,
            reason=detail,
            command_id=deployment.command_id,
        )

    process = adapters.process()
    live.apps_changed([deployment.application_id])  # queued -> commanding
    with bind(
        command_id=str(deployment.command_id),
        app=deployment.application.name,
        env=deployment.environment.name,
        action=action,
    ):
        return _send(process, spec, deployment, action, report)


def _send(process, spec, deployment: Deployment, action: str, report) -> InstallResult | None:
    try:
        if action == "start":
            return process.start(
                spec,
                environment=deployment.environment.name,
                command_id=str(deployment.command_id),
                report=report,
            )
        process.stop(
            spec,
            environment=deployment.environment.name,
            command_id=str(deployment.command_id),
            report=report,
        )
    except AppRuntimeError as exc:
        report(AppStatus.ERROR, str(exc))
    return None


def start_queue_advance(application_id: int) -> CommandOutcome | None:
    """Move an app's start queue on: start the next environment once the previous one runs.

    Environments start one at a time in position order, because an install writes to the
    database they share. Called after a start is asked for and after every report; safe to
    call from several processes (dispatch is claimed with a conditional update).
    """
    application = Application.objects.filter(pk=application_id).first()
    if application is None:
        return None
    outcome = CommandOutcome(application=application.name)
    while True:
        queue = list(
            Deployment.objects.filter(
                application_id=application_id, desired=Desired.RUNNING, command_action="start"
            )
            .select_related("environment", "application")
            .order_by("position", "environment__name")
        )
        for index, deployment in enumerate(queue):
            env = deployment.environment.name
            finished = bool(deployment.command_outcome)
            if finished and deployment.command_outcome == AppStatus.RUNNING:
                if env not in outcome.started:
                    outcome.started.append(env)
                continue
            if finished:  # failed: the queue stops here and says why
                outcome.failed[env] = deployment.error or deployment.command_outcome
                for later in queue[index + 1 :]:
                    if later.command_sent_at is None:
                        deployment_report(
                            deployment_id=later.pk,
                            status=AppStatus.ERROR,
                            reason=f"not started: {env} failed before it",
                            command_id=later.command_id,
                        )
                        outcome.failed[later.environment.name] = f"not started: {env} failed"
                return outcome
            if deployment.command_sent_at is not None:
                return outcome  # under way there: its report moves the queue on
            claimed = Deployment.objects.filter(
                pk=deployment.pk, command_id=deployment.command_id, command_sent_at__isnull=True
            ).update(command_sent_at=timezone.now())
            if not claimed:
                return outcome  # another process dispatched it
            result = _dispatch(deployment, "start")
            if result is not None and result.installed:
                outcome.install = result
            break  # read the queue again
        else:
            return outcome


def application_start(*, application: Application, actor: str, wait: bool = True):
    """Start the app on every environment it lives on, through the start queue.

    Idempotent: a running app is upgraded if needed and stays running; a start already under
    way is not started twice (a conditional update claims each environment). With wait=False
    a local start runs in the background. A generated superuser password is kept (before the
    "running" it comes with) for the admin to show once, in every mode; a local start with
    wait also returns it in the outcome.
    """
    outcome = CommandOutcome(application=application.name)
    claimed = []
    # Skipped only where running is already wanted and a start is under way. After a stop,
    # an older start may still report `preparing` and the like: a new start must still win.
    under_way = Q(desired=Desired.RUNNING) & (_start_in_flight() | Q(status__in=IN_PROGRESS))
    for deployment in application.deployments.select_related("environment"):
        changed = _claim_command(
            deployment, "start", actor, sent=False, unless=under_way, desired=Desired.RUNNING
        )
        (claimed if changed else outcome.skipped).append(deployment.environment.name)
    if not claimed:
        return outcome
    live.apps_changed([application.pk])
    if not wait:
        adapters.background(start_queue_advance, application.pk)
        outcome.started = claimed
        return outcome
    result = start_queue_advance(application.pk)
    result.skipped = outcome.skipped
    return result


def application_keep_password(application_id: int, username: str, password: str) -> None:
    Application.objects.filter(pk=application_id).update(
        pending_admin_username=username[:150], pending_admin_password=password[:128]
    )


def application_start_by_name(*, name: str, actor: str, wait: bool) -> CommandOutcome | None:
    application = Application.objects.filter(name=name).first()
    if application is None:
        return None
    return application_start(application=application, actor=actor, wait=wait)


def application_stop(*, application: Application, actor: str) -> CommandOutcome:
    """Stop the app everywhere (not queued: stopping writes nothing). Its data stays."""
    outcome = CommandOutcome(application=application.name)
    for deployment in application.deployments.select_related("environment", "application"):
        _claim_command(deployment, "stop", actor, sent=True, desired=Desired.STOPPED)
        _dispatch(deployment, "stop")
        deployment.refresh_from_db()
        if deployment.status == AppStatus.ERROR:
            outcome.failed[deployment.environment.name] = deployment.error
        else:
            outcome.started.append(deployment.environment.name)
    return outcome


def application_restart(*, application: Application, actor: str, wait: bool = True):
    stopped = application_stop(application=application, actor=actor)
    if not stopped.ok:
        return stopped
    return application_start(application=application, actor=actor, wait=wait)


def application_take_pending_password(application: Application) -> tuple[str, str] | None:
    """Return and forget a generated initial password (shown to an operator once)."""
    with transaction.atomic():
        row = (
            Application.objects.select_for_update()
            .filter(pk=application.pk)
            .exclude(pending_admin_password="")
            .values_list("pending_admin_username", "pending_admin_password")
            .first()
        )
        if row is None:
            return None
        Application.objects.filter(pk=application.pk).update(
            pending_admin_username="", pending_admin_password=""
        )
    return row


def commands_expire(*, now=None) -> int:
    """Report commands no environment answered within the time limit as failed."""
    now = now or timezone.now()
    limit = settings.CELERY_TASK_TIME_LIMIT + settings.HEARTBEAT_GRACE
    stale = (
        Deployment.objects.filter(command_sent_at__lt=now - timedelta(seconds=limit))
        .filter(command_outcome="")  # not answered yet
        .select_related("environment")
    )
    expired = 0
    for deployment in stale:
        try:
            if deployment_report(
                deployment_id=deployment.pk,
                status=AppStatus.ERROR,
                command_id=deployment.command_id,
                reason=f"no answer from {deployment.environment.name} within {limit} s",
                result="timeout",
            ):
                expired += 1
                start_queue_advance(deployment.application_id)
        except Exception:  # one bad row must not stop the job
            log.exception("could not expire the command of deployment %s", deployment.pk)
    return expired


def start_queues_resume() -> int:
    """Move on every start queue whose next environment waits, unsent, with nobody left to
    send it: the process that asked died between asking and sending, or its background
    advance failed. Periodic (beat); safe beside the normal path (dispatch is claimed)."""
    waiting = (
        Deployment.objects.filter(
            _start_in_flight(),
            desired=Desired.RUNNING,
            # Index on command_sent_at: also read by commands_expire.
            command_sent_at__isnull=True,
        )
        .order_by()  # the model's ordering would make DISTINCT per deployment
        .values_list("application_id", flat=True)
        .distinct()
    )
    resumed = 0
    for application_id in list(waiting):
        try:
            outcome = start_queue_advance(application_id)
        except Exception:  # one bad app must not stop the others
            log.exception("could not resume the start queue of application %s", application_id)
            continue
        resumed += bool(outcome)
    return resumed


# --- Environments: messages, liveness, reconciliation ------------------------------------
def environment_message(message: dict[str, Any]) -> None:
    """One decoded message from an environment (workers.messages)."""
    kind = message["type"]
    if kind == "report" and message.get("kind") == "pong":
        # A ping's reply: stored once (a redelivered reply does not move last_ping_at).
        Environment.objects.filter(name=message["env"]).exclude(
            last_ping_id=message["command_id"]
        ).update(last_ping_id=message["command_id"], last_ping_at=timezone.now())
    elif kind == "report":
        report_ingest(message)
    elif kind == "heartbeat":
        environment_heartbeat(message)
    elif kind == "goodbye":
        environment_goodbye(name=message["env"], started_at=message["started_at"])
    elif kind == "start_request":
        application_start_by_name(
            name=message["app"], actor=f"first visit on {message['env']}", wait=True
        )


def report_ingest(report: dict[str, Any]) -> bool:
    deployment = (
        Deployment.objects.filter(application__name=report["app"], environment__name=report["env"])
        .only("pk", "application_id")
        .first()
    )
    if deployment is None:
        log.info("report for %s@%s, which is not deployed there", report["app"], report["env"])
        return False
    credentials = report.get("credentials")
    if credentials:  # first, as the status makes an operator look for them; and even from
        # a report too old to change the status (a heartbeat stored it)
        application_keep_password(
            deployment.application_id, credentials["username"], credentials["password"]
        )
    stored = deployment_report(
        deployment_id=deployment.pk,
        status=report["status"],
        reason=report["detail"],
        command_id=report["command_id"],
        at=report["at"],
    )
    if report["status"] in FINAL:
        # Even when dropped: a heartbeat may have stored this very outcome first (it stores
        # states without moving queues), and the queue must still move on. Idempotent.
        start_queue_advance(deployment.application_id)
    return stored


def _beat_deadline(now: datetime, interval: int) -> datetime:
    return now + timedelta(seconds=2 * interval + settings.HEARTBEAT_GRACE)


def _beat_same(beat: dict[str, Any]) -> dict[str, Any]:
    """The stored fields a usual beat (the same process of a known, online environment)
    leaves as they are."""
    return {
        "name": beat["env"],
        "status": EnvStatus.ONLINE,
        "started_at": datetime.fromtimestamp(beat["started_at"], tz=UTC),
        "url": beat["url"],
        "proxy_url": beat["proxy_url"] or beat["url"],
        "version": beat["version"],
        "heartbeat_interval": beat["interval"],
    }


def environment_beats(beats: list[dict[str, Any]], *, now: datetime | None = None) -> None:
    """Store a batch of heartbeats and goodbyes (at most one message per environment: the
    latest it left for the fold), by the supervisor's clock, and reconcile each environment.

    The usual beats cost a few statements for the whole batch: one read of their
    environments, one UPDATE per heartbeat interval, one read of their deployments. A beat
    that changes something (a new, restarted, moved or returning environment) takes
    environment_heartbeat's path. One bad environment does not stop the rest.
    """
    now = now or timezone.now()
    heartbeats = {b["env"]: b for b in beats if b["type"] == "heartbeat"}
    known = {e.name: e for e in Environment.objects.filter(name__in=list(heartbeats))}
    usual: dict[int, list[Environment]] = {}
    changed: list[dict[str, Any]] = []
    for name, beat in heartbeats.items():
        environment, same = known.get(name), _beat_same(beat)
        if environment is not None and all(
            getattr(environment, field) == value for field, value in same.items()
        ):
            usual.setdefault(beat["interval"], []).append(environment)
        else:
            changed.append(beat)
    refreshed: list[Environment] = []
    for interval, group in usual.items():
        deadline = _beat_deadline(now, interval)
        # Conditional, like the single beat's UPDATE: a row marked offline (or changed) since
        # the read above is left to the full path.
        ids = [e.pk for e in group]
        updated = Environment.objects.filter(
            pk__in=ids, status=EnvStatus.ONLINE, heartbeat_interval=interval
        ).update(last_heartbeat_at=now, next_deadline_at=deadline)
        stored = set(ids)
        if updated < len(ids):
            stored = set(
                Environment.objects.filter(pk__in=ids, last_heartbeat_at=now).values_list(
                    "pk", flat=True
                )
            )
        for environment in group:
            if environment.pk in stored:
                environment.last_heartbeat_at, environment.next_deadline_at = now, deadline
                live.environment_changed(environment)
                refreshed.append(environment)
            else:
                changed.append(heartbeats[environment.name])
    deployments: dict[int, list[Deployment]] = {e.pk: [] for e in refreshed}
    for deployment in Deployment.objects.filter(environment__in=refreshed).select_related(
        "application", "environment"
    ):
        deployments[deployment.environment_id].append(deployment)
    for environment in refreshed:
        hosted = heartbeats[environment.name]["apps"]
        if hosted or deployments[environment.pk]:
            _each(environment_reconcile, environment, hosted, deployments[environment.pk])
    for beat in changed:
        _each(environment_heartbeat, beat, now=now)
    for beat in beats:
        if beat["type"] == "goodbye":
            _each(environment_goodbye, name=beat["env"], started_at=beat["started_at"])


def _each(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:
        log.exception("%s failed for %s", fn.__name__, args[0] if args else kwargs)


def environment_heartbeat(beat: dict[str, Any], *, now: datetime | None = None) -> Environment:
    """Register or refresh an environment, by the supervisor's clock, then reconcile it."""
    now = now or timezone.now()
    started_at = datetime.fromtimestamp(beat["started_at"], tz=UTC)
    interval = beat["interval"]
    deadline = _beat_deadline(now, interval)
    same = _beat_same(beat)
    # The usual beat: the same process of a known, online environment. One UPDATE.
    environment = Environment.objects.filter(**same).first()
    if environment is not None and Environment.objects.filter(**same).update(
        last_heartbeat_at=now, next_deadline_at=deadline
    ):
        environment.last_heartbeat_at, environment.next_deadline_at = now, deadline
        live.environment_changed(environment)
        environment_reconcile(environment, beat["apps"])
        return environment
    with transaction.atomic():
        environment, created = Environment.objects.select_for_update().get_or_create(
            name=beat["env"], defaults={"started_at": started_at}
        )
        returned = created or environment.status == EnvStatus.OFFLINE
        restarted = environment.started_at != started_at
        environment.url = beat["url"]
        environment.proxy_url = beat["proxy_url"] or beat["url"]
        environment.version = beat["version"]
        environment.heartbeat_interval = interval
        environment.started_at = started_at
        environment.status = EnvStatus.ONLINE
        environment.last_heartbeat_at = now
        environment.next_deadline_at = deadline
        environment.save()
        kind = (
            EnvironmentEvent.Kind.REGISTERED
            if created
            else EnvironmentEvent.Kind.BACK
            if returned
            else EnvironmentEvent.Kind.RESTARTED
            if restarted
            else None
        )
        if kind is not None:  # in the same transaction: whoever sees it online sees why
            EnvironmentEvent.objects.create(
                environment_name=environment.name,
                kind=kind,
                at=now,
                detail=f"version {environment.version}, {environment.url}"[:500],
            )
    if kind is not None:
        log.info("environment %s %s", environment.name, kind.label)
    live.environment_changed(environment, with_deployments=returned)
    environment_reconcile(environment, beat["apps"])
    return environment


def environment_reconcile(
    environment: Environment,
    hosted: dict[str, dict[str, Any]],
    deployments: list[Deployment] | None = None,
) -> None:
    """Bring what an environment runs in line with what we want there.

    Its reported states are stored (older ones are dropped); an app that should run and does
    not, with no start under way, is started again (a failed one only after
    APP_START_RETRY_AFTER, so a broken app is not retried on every beat); one that should not
    run is stopped; one that is not ours any more is removed (its data is kept).
    """
    if deployments is None:  # else read by the caller, for a batch of environments
        deployments = list(
            Deployment.objects.filter(environment=environment).select_related(
                "application", "environment"
            )
        )
    deployments = {d.application.name: d for d in deployments}
    finished: set[int] = set()  # apps whose start queue a stored outcome may move on
    for name, state in hosted.items():
        deployment = deployments.get(name)
        if deployment is None:
            _send_remove(environment.name, name)
            continue
        if deployment.reported_at is not None and state["at"] <= deployment.reported_at:
            continue  # nothing newer than what is stored: the usual beat writes nothing
        if (
            deployment_report(
                deployment_id=deployment.pk,
                status=state["status"],
                reason=state.get("detail") or HEARTBEAT_REASON,
                command_id=state["command_id"],
                at=state["at"],
            )
            and state["status"] in FINAL
        ):
            finished.add(deployment.application_id)
        deployment.refresh_from_db()
    for name, deployment in deployments.items():
        # The stored state is the freshest one: a newer state in the beat was stored (and
        # read back) above, while an older one (a beat folded after a command's own report)
        # must not count. What the environment does not host at all does not run there.
        status = deployment.status if name in hosted else AppStatus.STOPPED
        running_there = status in (AppStatus.RUNNING, *IN_PROGRESS)
        failed_recently = deployment.status == AppStatus.ERROR and (
            deployment.status_at
            > timezone.now() - timedelta(seconds=settings.APP_START_RETRY_AFTER)
        )
        # Only if nothing changed since it was read: a command asked or a report stored
        # meanwhile (the caller may have read a batch seconds ago) leaves it to the next beat.
        unchanged = Q(
            desired=deployment.desired,
            command_id=deployment.command_id,
            reported_at=deployment.reported_at,
        )
        if deployment.desired == Desired.RUNNING and not running_there and not failed_recently:
            if _claim_command(
                deployment,
                "start",
                "reconciliation",
                sent=True,
                when=unchanged,
                unless=_start_in_flight(),
            ):
                _dispatch(deployment, "start")
        elif deployment.desired == Desired.STOPPED and status == AppStatus.RUNNING:
            if deployment.command_action == "stop" and not deployment.command_outcome:
                continue  # a stop is under way
            if _claim_command(deployment, "stop", "reconciliation", sent=True, when=unchanged):
                _dispatch(deployment, "stop")
    # A beat can store an outcome before the report that carries it (then dropped as not
    # newer): the queue moves on here too, or the next environment would wait for good.
    for application_id in finished:
        _each(start_queue_advance, application_id)


def _send_remove(environment: str, app: str) -> None:
    try:
        adapters.process().forget(app, environment=environment)
    except AppRuntimeError as exc:
        log.warning("could not tell %s to drop %s: %s", environment, app, exc)


def environment_goodbye(*, name: str, started_at: float) -> bool:
    """A clean shutdown: offline at once (unless a newer process of it already registered)."""
    started = datetime.fromtimestamp(started_at, tz=UTC)
    with transaction.atomic():
        changed = Environment.objects.filter(name=name, started_at=started).update(
            status=EnvStatus.OFFLINE, next_deadline_at=None
        )
        if changed:
            EnvironmentEvent.objects.create(
                environment_name=name, kind=EnvironmentEvent.Kind.GOODBYE
            )
    if changed:
        log.info("environment %s shut down", name)
        environment = Environment.objects.filter(name=name).first()
        if environment is not None:
            live.environment_changed(environment, with_deployments=True)
    return bool(changed)


def environments_detect_offline(*, now=None) -> list[str]:
    """Mark environments past their deadline offline. Safe in several processes at once:
    each row is claimed with a conditional update, and one bad row does not stop the rest."""
    now = now or timezone.now()
    marked = []
    for environment in Environment.objects.filter(
        status=EnvStatus.ONLINE, next_deadline_at__lt=now
    ):
        try:
            with transaction.atomic():
                changed = Environment.objects.filter(
                    pk=environment.pk, status=EnvStatus.ONLINE, next_deadline_at__lt=now
                ).update(status=EnvStatus.OFFLINE)
                if changed:
                    EnvironmentEvent.objects.create(
                        environment_name=environment.name,
                        kind=EnvironmentEvent.Kind.OFFLINE,
                        at=now,
                        detail=f"no heartbeat since {environment.last_heartbeat_at}",
                    )
        except Exception:
            log.exception("could not mark %s offline", environment.name)
            continue
        if changed:
            log.warning(
                "environment %s is offline (no heartbeat since %s)",
                environment.name,
                environment.last_heartbeat_at,
            )
            live.environment_changed(environment, with_deployments=True)
            marked.append(environment.name)
    return marked


def environments_purge(*, older_than: int, names: list[str] | None = None, now=None) -> list[str]:
    """Forget offline environments not seen for `older_than` seconds (apps keep their data
    and their other environments). An environment that comes back registers anew."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=older_than)
    candidates = Environment.objects.filter(status=EnvStatus.OFFLINE)
    if names is not None:
        candidates = candidates.filter(name__in=names)
    purged = []
    for environment in candidates.filter(
        Q(last_heartbeat_at__lt=cutoff) | Q(last_heartbeat_at__isnull=True, created_at__lt=cutoff)
    ):
        with transaction.atomic():
            deployments = Deployment.objects.filter(environment=environment)
            apps = [d.application_id for d in _deletable(deployments)]
            deployments.delete()
            environment.delete()
            EnvironmentEvent.objects.create(
                environment_name=environment.name, kind=EnvironmentEvent.Kind.PURGED, at=now
            )
            live.environment_removed(environment.name)
            live.apps_changed(apps)
        purged.append(environment.name)
    return purged


# --- Config cache ------------------------------------------------------------------------
def application_config(application: Application) -> dict[str, Any]:
    """What an environment needs of an app (written to the config cache)."""
    return {
        "spec": selectors.application_spec(application).to_dict(),
        "start_mode": application.start_mode,
        "environments": [d.environment.name for d in application.deployments.all()],
    }


def config_publish(application_id: int) -> None:
    """Write one app's configuration to the config cache once the transaction commits."""

    def write() -> None:
        application = selectors.application_list_with_status().filter(pk=application_id).first()
        if application is not None:
            adapters.discovery().publish(application.name, application_config(application))

    transaction.on_commit(write)


def config_cache_refresh() -> int:
    """Rewrite the whole config cache from the database (at start and periodically)."""
    configs = {a.name: application_config(a) for a in selectors.application_list_with_status()}
    adapters.discovery().publish_many(configs)
    return len(configs)


# --- Start-up ----------------------------------------------------------------------------
def supervisor_startup(*, actor: str = "supervisor start-up") -> list[CommandOutcome]:
    """Local mode, at server start: heal interrupted starts, then start "with supervisor" apps.

    A start interrupted by a crash or restart leaves a deployment in an in-progress status;
    nothing will ever finish it, so it is reported as an error and, if it should run, started
    again (install is resumable: see runtime.install_or_upgrade).
    """
    local = environment_ensure_local()
    interrupted = list(Deployment.objects.filter(environment=local, status__in=IN_PROGRESS))
    for deployment in interrupted:
        deployment_report(
            deployment_id=deployment.pk,
            status=AppStatus.ERROR,
            reason="interrupted: the supervisor restarted during this start",
            command_id=deployment.command_id,
            actor=actor,
        )
    outcomes = []
    interrupted_apps = [d.application_id for d in interrupted if d.desired == Desired.RUNNING]
    to_start = Application.objects.filter(deployments__environment=local).filter(
        Q(start_mode=StartMode.WITH_SUPERVISOR) | Q(pk__in=interrupted_apps)
    )
    for application in to_start.distinct():
        outcomes.append(application_start(application=application, actor=actor, wait=False))
    return outcomes


# --- Ping ----------------------------------------------------------------------------------
def environment_ping(*, name: str) -> uuid.UUID:
    """Send a no-op `ping` to an environment's command queue and return its command id.

    The environment answers with a pong report; environment_message stores it in
    Environment.last_ping_id / last_ping_at (the command round trip, end to end).
    """
    if not Environment.objects.filter(name=name).exists():
        raise ValidationError({"environment": f"Unknown environment: {name}."})
    ping = getattr(adapters.process(), "ping", None)
    if ping is None:  # an in-process environment has no queue to cross
        raise AppRuntimeError("ping needs multi-environment mode (a remote process adapter)")
    return uuid.UUID(ping(name))
