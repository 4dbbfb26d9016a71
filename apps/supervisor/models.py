"""Control-plane models: what the supervisor knows and wants.

The supervisor database is the source of truth for desired state. Observed state arrives as
reports (runtime in-process in local mode, environment workers otherwise).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from apps.runtime.spec import DB_TYPES
from apps.supervisor import validators
from apps.supervisor.statuses import AppStatus, Desired, EnvStatus


class Environment(models.Model):
    name = models.CharField(
        max_length=48, unique=True, validators=[validators.validate_environment_name]
    )
    url = models.CharField(max_length=500, blank=True, validators=[validators.validate_http_url])
    proxy_url = models.CharField(
        max_length=500, blank=True, validators=[validators.validate_http_url]
    )
    version = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=16, choices=EnvStatus.choices, default=EnvStatus.ONLINE)
    # Seconds between beats as the environment announced them; null = in-process (no beats).
    heartbeat_interval = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When this environment becomes stale/offline unless it beats again. Read by the offline
    # detector (workers/), which selects rows past their deadline through this index.
    next_deadline_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    # The last `ping` answered: its command id and when its reply was stored (round trip).
    last_ping_id = models.UUIDField(null=True, blank=True)
    last_ping_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DbType(models.TextChoices):
    SQLITE = "sqlite", "SQLite file"
    NEW_DATABASE = "new_database", "New database (PostgreSQL)"
    NEW_SCHEMA = "new_schema", "New schema (PostgreSQL)"


assert set(DbType.values) == set(DB_TYPES)


class StartMode(models.TextChoices):
    ON_FIRST_VISIT = "on_first_visit", "Start on first visit"
    WITH_SUPERVISOR = "with_supervisor", "Start with the supervisor"


class Application(models.Model):
    name = models.CharField(
        max_length=48,
        unique=True,
        validators=[validators.validate_app_name],
        help_text="Identifier: lower-case letters, digits and _, starting with a letter. "
        "It names the app's URL (/apps/<name>/) and its database; it cannot change.",
    )
    title = models.CharField(max_length=200)
    icon = models.CharField(max_length=64, blank=True, help_text="An emoji or icon name.")
    pinned = models.BooleanField(default=False)
    custom_domain = models.CharField(
        max_length=253,
        unique=True,
        null=True,
        blank=True,
        validators=[validators.validate_hostname],
        help_text="Optional host name served as this app (e.g. shop.example.com).",
    )
    start_mode = models.CharField(
        max_length=20, choices=StartMode.choices, default=StartMode.ON_FIRST_VISIT
    )
    db_type = models.CharField(max_length=16, choices=DbType.choices, default=DbType.SQLITE)
    # A separate PostgreSQL server (the anchor's "new connection"); empty = the default one.
    db_host = models.CharField(
        "database host", max_length=253, blank=True, validators=[validators.validate_db_host]
    )
    db_port = models.PositiveIntegerField("database port", null=True, blank=True)
    db_user = models.CharField("database user", max_length=63, blank=True)
    db_password = models.CharField("database password", max_length=200, blank=True)
    db_database = models.CharField(
        "schema database",
        max_length=63,
        blank=True,
        help_text="new_schema only: the database that holds the schema "
        "(default: APP_SCHEMA_DATABASE).",
    )
    options = models.JSONField(default=dict, blank=True, validators=[validators.validate_options])
    environments = models.ManyToManyField(
        Environment, through="Deployment", related_name="applications"
    )
    # Generated initial superuser password, kept only until an operator has seen it once.
    pending_admin_username = models.CharField(max_length=150, blank=True, editable=False)
    pending_admin_password = models.CharField(max_length=128, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-pinned", "name"]
        permissions = [
            ("start_application", "Can start, stop and restart applications"),
            ("drop_application_database", "Can delete an application with its database"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        self.title = (self.title or "").strip()
        if not self.title:
            errors["title"] = "A title is required."
        # JSONField skips validators for "empty" values such as [] or "": check here too.
        try:
            validators.validate_options(self.options)
        except ValidationError as exc:
            errors["options"] = exc.messages[0]
        postgres_default = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
        if self.db_type != DbType.SQLITE and not (self.db_host or postgres_default):
            errors["db_type"] = (
                f"{self.get_db_type_display()} needs a PostgreSQL server: give a database host, "
                "or run the supervisor on PostgreSQL (DB_DIALECT=postgres)."
            )
        server_fields = self.db_user or self.db_port or self.db_password
        if self.db_type == DbType.SQLITE and (self.db_host or server_fields):
            errors["db_host"] = "A SQLite app takes no database server."
        elif not self.db_host and server_fields:
            errors["db_host"] = (
                "Database user, port and password belong to a separate server: give its host."
            )
        if self.db_database and self.db_type != DbType.NEW_SCHEMA:
            errors["db_database"] = "Only a new_schema app names the database holding it."
        if self.db_database and not validators.ENV_NAME_RE.fullmatch(self.db_database):
            errors["db_database"] = "Use lower-case letters, digits and _, starting with a letter."
        elif self.db_database in validators.RESERVED_DATABASES:
            errors["db_database"] = f"'{self.db_database}' is PostgreSQL's own database."
        if self.db_port is not None and not 1 <= self.db_port <= 65535:
            errors["db_port"] = "Enter a port between 1 and 65535."
        if self.custom_domain == "":
            self.custom_domain = None
        if errors:
            raise ValidationError(errors)


class Deployment(models.Model):
    """An application on one environment: what we want there and what was last reported."""

    application = models.ForeignKey(
        Application, on_delete=models.CASCADE, related_name="deployments"
    )
    environment = models.ForeignKey(
        Environment, on_delete=models.PROTECT, related_name="deployments"
    )
    # Position in the start queue: lower starts first.
    position = models.PositiveSmallIntegerField(default=0)
    desired = models.CharField(max_length=16, choices=Desired.choices, default=Desired.STOPPED)
    status = models.CharField(max_length=16, choices=AppStatus.choices, default=AppStatus.STOPPED)
    error = models.TextField(blank=True)
    # The step under way or last done (e.g. "migrating 3/12"), updated by every report.
    detail = models.CharField(max_length=500, blank=True)
    status_at = models.DateTimeField(default=timezone.now)
    command_id = models.UUIDField(null=True, blank=True)  # the last command asked for
    command_action = models.CharField(max_length=16, blank=True)
    command_actor = models.CharField(max_length=150, blank=True)
    # When the command left for the environment; null while it waits its turn in the start
    # queue. Read by the command expiry job.
    command_sent_at = models.DateTimeField(null=True, blank=True, db_index=True)
    reported_command_id = models.UUIDField(null=True, blank=True)  # the last one reported on
    # The final status the current command was first answered with; "" until then (reset by
    # every new command). Kept apart from reported_command_id, which any later report (a
    # command that ran out of order, a beat) overwrites: whether a start is in flight, a stop
    # under way or a command overdue is judged by this.
    command_outcome = models.CharField(max_length=16, blank=True)
    # The environment's clock (ns) of the last report stored: an older report never wins.
    reported_at = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["position", "environment__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["application", "environment"], name="one_deployment_per_environment"
            )
        ]
        indexes = [models.Index(fields=["environment", "status"], name="deployment_env_status")]

    def __str__(self) -> str:
        return f"{self.application_id}@{self.environment_id}"


class StatusChange(models.Model):
    """Every observed status change: history, audit and notifications come from these rows."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="history")
    old_status = models.CharField(max_length=16)
    new_status = models.CharField(max_length=16)
    reason = models.TextField(blank=True)
    at = models.DateTimeField(default=timezone.now)
    command_id = models.UUIDField(null=True, blank=True)
    actor = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["deployment", "-at"], name="statuschange_deployment_at")]

    def __str__(self) -> str:
        return f"{self.old_status} -> {self.new_status}"


class EnvironmentEvent(models.Model):
    """An environment's registration history (kept by name: it outlives a purge)."""

    class Kind(models.TextChoices):
        REGISTERED = "registered", "registered"
        RESTARTED = "restarted", "restarted"
        STALE = "stale", "stale"
        OFFLINE = "offline", "offline"
        BACK = "back", "back online"
        GOODBYE = "goodbye", "stopped cleanly"
        PURGED = "purged", "purged"

    environment_name = models.CharField(max_length=48)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    at = models.DateTimeField(default=timezone.now)
    detail = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["environment_name", "-at"], name="envevent_name_at")]

    def __str__(self) -> str:
        return f"{self.environment_name} {self.kind}"


def new_command_id() -> uuid.UUID:
    return uuid.uuid4()
