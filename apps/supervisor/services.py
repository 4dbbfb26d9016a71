"""Writes of the control plane. Admin, commands, views and tasks are thin callers of these."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps import adapters
from apps.runtime.runtime import AppRuntimeError, InstallResult
from apps.supervisor import selectors
from apps.supervisor.models import (
    Application,
    DbType,
    Deployment,
    Environment,
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
    return application


@transaction.atomic
def application_set_environments(
    *, application: Application, environments: list[Environment]
) -> None:
    """Make the app live on exactly these environments, in this start-queue order."""
    if not environments:
        raise ValidationError({"environments": "Choose at least one environment."})
    current = {d.environment_id: d for d in application.deployments.all()}
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
    log.info(
        "app %s deleted by %s (database %s)",
        application.name,
        actor or "?",
        "dropped" if drop_database else "kept",
    )
    application.delete()


# --- Status reports ----------------------------------------------------------------------
def deployment_report(
    *,
    deployment_id: int,
    status: str,
    reason: str = "",
    command_id: uuid.UUID | str | None = None,
    actor: str = "",
    at=None,
) -> bool:
    """Store an observed status (and a history row when it changed). False if unknown."""
    if status not in AppStatus.values:
        raise ValueError(f"unknown status {status!r}")
    at = at or timezone.now()
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
        if deployment is None:
            return False
        old = deployment.status
        deployment.status = status
        deployment.status_at = at
        deployment.error = reason if status == AppStatus.ERROR else ""
        if command_id is not None:
            deployment.reported_command_id = command_id
        deployment.save(update_fields=["status", "status_at", "error", "reported_command_id"])
        if old != status:
            StatusChange.objects.create(
                deployment=deployment,
                old_status=old,
                new_status=status,
                reason=reason[:2000],
                at=at,
                command_id=command_id,
                actor=actor[:150],
            )
    return True


# --- Start, stop, restart ----------------------------------------------------------------
@dataclass
class CommandOutcome:
    application: str
    started: list[str] = field(default_factory=list)  # environments
    skipped: list[str] = field(default_factory=list)  # already in progress
    failed: dict[str, str] = field(default_factory=dict)  # environment -> error
    install: InstallResult | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def _claim(deployment: Deployment, *, desired: str, command_id: uuid.UUID) -> bool:
    """Record the desired state and the command; False if a start is already under way there.

    A conditional update, so two operators (or two processes) cannot both start one app.
    """
    changed = (
        Deployment.objects.filter(pk=deployment.pk)
        .exclude(status__in=IN_PROGRESS)
        .update(desired=desired, command_id=command_id)
    )
    return changed == 1


def _run_start_queue(
    application_id: int, claimed: list[tuple[int, str, uuid.UUID]], actor: str
) -> CommandOutcome:
    """Start an app on its environments one at a time; stop at the first failure."""
    application = Application.objects.get(pk=application_id)
    spec = selectors.application_spec(application)
    outcome = CommandOutcome(application=application.name)
    for index, (deployment_id, environment, command_id) in enumerate(claimed):

        def report(status: str, detail: str, _id=deployment_id, _cid=command_id) -> None:
            deployment_report(
                deployment_id=_id, status=status, reason=detail, command_id=_cid, actor=actor
            )

        try:
            result = adapters.process().start(
                spec, environment=environment, command_id=str(command_id), report=report
            )
        except AppRuntimeError as exc:
            report(AppStatus.ERROR, str(exc))
            outcome.failed[environment] = str(exc)
            for later_id, later_env, later_cid in claimed[index + 1 :]:
                deployment_report(
                    deployment_id=later_id,
                    status=AppStatus.ERROR,
                    reason=f"not started: {environment} failed before it",
                    command_id=later_cid,
                    actor=actor,
                )
                outcome.failed[later_env] = f"not started: {environment} failed"
            break
        outcome.started.append(environment)
        if result.installed:
            outcome.install = result
    return outcome


def application_start(*, application: Application, actor: str, wait: bool = True):
    """Start the app on every environment it lives on, in start-queue order.

    Idempotent: a running app is upgraded if needed and stays running. With wait=False the
    work runs in the background and a generated superuser password is kept for the admin to
    show once.
    """
    outcome = CommandOutcome(application=application.name)
    claimed: list[tuple[int, str, uuid.UUID]] = []
    for deployment in application.deployments.select_related("environment"):
        command_id = uuid.uuid4()
        if _claim(deployment, desired=Desired.RUNNING, command_id=command_id):
            claimed.append((deployment.pk, deployment.environment.name, command_id))
        else:
            outcome.skipped.append(deployment.environment.name)
    if not claimed:
        return outcome
    if wait:
        return _run_start_queue(application.pk, claimed, actor)

    def run() -> None:
        result = _run_start_queue(application.pk, claimed, actor)
        if result.install and result.install.admin_password:
            Application.objects.filter(pk=application.pk).update(
                pending_admin_username=result.install.admin_username,
                pending_admin_password=result.install.admin_password,
            )

    adapters.background(run)
    outcome.started = [environment for _, environment, _ in claimed]
    return outcome


def application_start_by_name(*, name: str, actor: str, wait: bool) -> CommandOutcome | None:
    application = Application.objects.filter(name=name).first()
    if application is None:
        return None
    return application_start(application=application, actor=actor, wait=wait)


def application_stop(*, application: Application, actor: str) -> CommandOutcome:
    """Stop the app everywhere. Its database and data stay."""
    outcome = CommandOutcome(application=application.name)
    spec = selectors.application_spec(application)
    for deployment in application.deployments.select_related("environment"):
        command_id = uuid.uuid4()
        if not _claim(deployment, desired=Desired.STOPPED, command_id=command_id):
            outcome.skipped.append(deployment.environment.name)
            continue

        def report(status: str, detail: str, _id=deployment.pk, _cid=command_id) -> None:
            deployment_report(
                deployment_id=_id, status=status, reason=detail, command_id=_cid, actor=actor
            )

        try:
            adapters.process().stop(
                spec,
                environment=deployment.environment.name,
                command_id=str(command_id),
                report=report,
            )
        except AppRuntimeError as exc:
            report(AppStatus.ERROR, str(exc))
            outcome.failed[deployment.environment.name] = str(exc)
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


# --- Start-up ----------------------------------------------------------------------------
def supervisor_startup(*, actor: str = "supervisor start-up") -> list[CommandOutcome]:
    """Local mode, at server start: heal interrupted starts, then start "with supervisor" apps.

    A start interrupted by a crash or restart leaves a deployment in an in-progress status;
    nothing will ever finish it, so it is reported as an error and, if it should run, started
    again (install is resumable: see runtime.install_or_upgrade).
    """
    local = environment_ensure_local()
    interrupted = Deployment.objects.filter(environment=local, status__in=IN_PROGRESS)
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
