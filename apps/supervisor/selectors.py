"""Reads of the control plane. Query counts here must not grow with the number of rows."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import connections
from django.db.models import (
    BooleanField,
    Count,
    ExpressionWrapper,
    Prefetch,
    Q,
    QuerySet,
)
from django.utils import timezone

from apps.adapters.base import AppRoute, DeploymentRoute
from apps.runtime.spec import AppSpec, DbServer, DbSpec, app_name_problem
from apps.supervisor.models import (
    Application,
    DbType,
    Deployment,
    Environment,
    EnvironmentEvent,
    StatusChange,
)
from apps.supervisor.statuses import (
    DISPLAY_STATUSES,
    STALE,
    EnvStatus,
    display_status,
    environment_liveness,
)


def environment_state(environment: Environment, now: datetime | None = None) -> str:
    return environment_liveness(
        status=environment.status,
        last_heartbeat_at=environment.last_heartbeat_at,
        interval=environment.heartbeat_interval,
        grace=settings.HEARTBEAT_GRACE,
        now=now or timezone.now(),
    )


def deployment_status(deployment: Deployment, now: datetime | None = None) -> str:
    """The one place an app's display status on an environment is derived."""
    return display_status(
        status=deployment.status,
        commanded=deployment.command_id is not None,
        answered=bool(deployment.command_outcome),
        liveness=environment_state(deployment.environment, now),
    )


def _deployments_prefetch() -> Prefetch:
    return Prefetch(
        "deployments",
        queryset=Deployment.objects.select_related("environment").order_by(
            "position", "environment__name"
        ),
    )


def application_list_with_status() -> QuerySet[Application]:
    return Application.objects.prefetch_related(_deployments_prefetch())


def application_by_name(name: str) -> Application | None:
    """The app named `name`, its deployments prefetched; None when there is none (or `name`
    cannot be an app's name: never a query for it)."""
    if app_name_problem(name) is not None:
        return None
    return application_list_with_status().filter(name=name).first()


def application_statuses(application: Application, now: datetime | None = None) -> dict[str, str]:
    """{environment name: display status}, in start-queue order."""
    now = now or timezone.now()
    return {d.environment.name: deployment_status(d, now) for d in application.deployments.all()}


def default_db_server() -> DbServer | None:
    """The PostgreSQL server the supervisor itself uses, if it uses one."""
    current = connections["default"].settings_dict
    if not current["ENGINE"].endswith("postgresql"):
        return None
    return DbServer(
        host=current.get("HOST") or "127.0.0.1",
        port=int(current.get("PORT") or 5432),
        user=current.get("USER") or "postgres",
        password=current.get("PASSWORD") or "",
    )


def application_spec(application: Application) -> AppSpec:
    """Resolve an application's configuration into what the runtime needs."""
    name = application.name
    if application.db_type == DbType.SQLITE:
        db = DbSpec(type="sqlite", name=str(settings.APP_SQLITE_DIR / f"{name}.sqlite3"))
    else:
        if application.db_host:
            server = DbServer(
                host=application.db_host,
                port=application.db_port or 5432,
                user=application.db_user or "postgres",
                password=application.db_password,
            )
        else:
            server = default_db_server()
        if application.db_type == DbType.NEW_DATABASE:
            db = DbSpec(type="new_database", name=settings.APP_DB_PREFIX + name, server=server)
        else:
            db = DbSpec(
                type="new_schema",
                name=application.db_database or settings.APP_SCHEMA_DATABASE,
                schema=settings.APP_DB_PREFIX + name,
                server=server,
            )
    return AppSpec(name=name, title=application.title, db=db, options=dict(application.options))


def application_route(*, name: str | None = None, custom_domain: str | None = None):
    query = application_list_with_status()
    query = (
        query.filter(name=name) if name is not None else query.filter(custom_domain=custom_domain)
    )
    application = query.first()
    if application is None:
        return None
    now = timezone.now()
    return AppRoute(
        spec=application_spec(application),
        start_mode=application.start_mode,
        deployments=tuple(
            DeploymentRoute(
                environment=d.environment.name,
                desired=d.desired,
                status=deployment_status(d, now),
                error=d.error,
                never_commanded=d.command_id is None,
                proxy_url=d.environment.proxy_url or d.environment.url,
            )
            for d in application.deployments.all()
        ),
    )


def application_pending_environments(application: Application, want: str) -> list[str]:
    """Environments where the last command has not reached `want` (nor failed) yet."""
    return [
        env
        for env, status in application_statuses(application).items()
        if status not in (want, "error", "unknown")
    ]


def application_history(application: Application) -> QuerySet[StatusChange]:
    return StatusChange.objects.filter(deployment__application=application).select_related(
        "deployment__environment"
    )


def environment_list() -> QuerySet[Environment]:
    return Environment.objects.all()


def environment_history(name: str) -> QuerySet[EnvironmentEvent]:
    return EnvironmentEvent.objects.filter(environment_name=name)


def status_counts(
    now: datetime | None = None,
) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """({(environment, display status): n} with every status of every environment,
    {liveness: n}).

    Two queries whatever the number of apps: the environments, and the deployments grouped
    by environment, stored status and whether a command is out and answered; the display
    status is then derived by statuses.display_status, the one place it is.
    """
    now = now or timezone.now()
    registered = Environment.objects.only(  # what environment_state reads, and the name
        "pk", "name", "status", "last_heartbeat_at", "heartbeat_interval"
    )
    states = {env.pk: (env.name, environment_state(env, now)) for env in registered}
    rows = (
        Deployment.objects.order_by()
        .annotate(
            commanded=ExpressionWrapper(Q(command_id__isnull=False), output_field=BooleanField()),
            answered=ExpressionWrapper(~Q(command_outcome=""), output_field=BooleanField()),
        )
        .values("environment_id", "status", "commanded", "answered")
        .annotate(n=Count("id"))
    )
    apps = {(name, status): 0 for name, _ in states.values() for status in DISPLAY_STATUSES}
    for row in rows:
        if row["environment_id"] not in states:
            continue  # an environment registered after the first query: counted next time
        name, liveness = states[row["environment_id"]]
        status = display_status(
            status=row["status"],
            commanded=row["commanded"],
            answered=row["answered"],
            liveness=liveness,
        )
        apps[(name, status)] = apps.get((name, status), 0) + row["n"]
    environments = dict.fromkeys((EnvStatus.ONLINE.value, STALE, EnvStatus.OFFLINE.value), 0)
    for _, state in states.values():
        environments[str(state)] = environments.get(str(state), 0) + 1
    return apps, environments


def dashboard(now: datetime | None = None) -> dict:
    """The admin index's summary, in a constant number of queries whatever the number of
    apps: status_counts summed over environments, the last errors, the number of apps."""
    per_environment, environments = status_counts(now)
    apps: dict[str, int] = {}
    for (_, status), n in per_environment.items():
        if n:
            apps[status] = apps.get(status, 0) + n
    errors = StatusChange.objects.filter(new_status="error").select_related(
        "deployment__application", "deployment__environment"
    )[:10]
    return {
        "apps": dict(sorted(apps.items())),
        "app_count": Application.objects.count(),
        "environments": environments,
        "errors": list(errors),
    }
