"""python manage.py apps list|create|start|stop|restart|delete|history [--as-user NAME]

Without --as-user (or APPSUP_CLI_USER) a command runs as the local operator: whoever can run
manage.py here already holds the database, so nothing is checked and history records "cli".
With it, the command acts as that supervisor user: it needs the same permission as the API
and the admin (apps.api.permissions) and that user is recorded as the actor.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand

from apps.api import permissions
from apps.runtime.runtime import InstallResult
from apps.supervisor import selectors, services
from apps.supervisor.management.commands._output import emit, fail
from apps.supervisor.models import Application, DbType, StartMode

ACTOR = "cli"  # the local operator (no --as-user)
AS_USER_ENV = "APPSUP_CLI_USER"


def _validation_line(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(
            f"{field}: {' '.join(msgs)}" if field != "__all__" else " ".join(msgs)
            for field, msgs in exc.message_dict.items()
        )
    return "; ".join(exc.messages)


def app_row(application: Application) -> dict:
    statuses = selectors.application_statuses(application)
    return {
        "name": application.name,
        "title": application.title,
        "environments": list(statuses),
        "statuses": statuses,
        "start_mode": application.start_mode,
        "db_type": application.db_type,
        "custom_domain": application.custom_domain,
        "pinned": application.pinned,
    }


def _as_user_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--as-user",
        metavar="NAME",
        default=os.environ.get(AS_USER_ENV) or None,
        help=f"act as this supervisor user: its permissions are checked and it is recorded "
        f"in the history (default: ${AS_USER_ENV}; without either, the command runs as the "
        f"local operator, unchecked, recorded as {ACTOR!r})",
    )
    return parent


class Command(BaseCommand):
    help = (
        "Manage sub-applications: list, create, start, stop, restart, delete, history. "
        f"Runs as the local operator (no permission check, actor {ACTOR!r}) unless --as-user "
        f"NAME (or ${AS_USER_ENV}) names a user whose permissions are then enforced."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        common = [_as_user_parent()]
        listing = sub.add_parser(
            "list", parents=common, help="list apps with their status per environment"
        )
        listing.add_argument("--json", action="store_true")

        create = sub.add_parser("create", parents=common, help="create an app (stopped)")
        create.add_argument("name")
        create.add_argument("--title", required=True)
        create.add_argument(
            "--env",
            action="append",
            dest="envs",
            metavar="NAME",
            help="an environment (repeat for several; order = start order)",
        )
        create.add_argument("--db-type", choices=DbType.values)
        create.add_argument(
            "--start-mode", choices=StartMode.values, default=StartMode.ON_FIRST_VISIT
        )
        create.add_argument("--icon", default="")
        create.add_argument("--pinned", action="store_true")
        create.add_argument("--domain", default=None, help="custom domain served as this app")
        create.add_argument("--db-host", default="")
        create.add_argument("--db-port", type=int)
        create.add_argument("--db-user", default="")
        create.add_argument("--db-password", default="")
        create.add_argument("--db-database", default="")
        create.add_argument("--options", default="{}", help="JSON object of app options")
        create.add_argument("--json", action="store_true")

        for action in ("start", "stop", "restart"):
            cmd = sub.add_parser(
                action, parents=common, help=f"{action} an app on all its environments"
            )
            cmd.add_argument("name")
            cmd.add_argument("--json", action="store_true")
            cmd.add_argument(
                "--timeout",
                type=float,
                default=120.0,
                help="seconds to wait for environments to report (0: do not wait)",
            )

        delete = sub.add_parser(
            "delete", parents=common, help="stop and delete an app (keeps its data)"
        )
        delete.add_argument("name")
        delete.add_argument(
            "--drop-database",
            action="store_true",
            help="also drop the app's database (irreversible)",
        )
        delete.add_argument("--yes", action="store_true", help="confirm --drop-database")
        delete.add_argument("--json", action="store_true")

        history = sub.add_parser("history", parents=common, help="status changes of an app")
        history.add_argument("name")
        history.add_argument("--limit", type=int, default=100)
        history.add_argument("--json", action="store_true")

    def handle(self, *args, action: str, as_user: str | None = None, **options):
        self.actor = ACTOR
        if as_user is not None:
            self.actor = self._check_user(as_user, action, options.get("drop_database", False))
        return getattr(self, f"do_{action}")(**options)

    def _check_user(self, username: str, action: str, drop_database: bool) -> str:
        """The named user's name once it may do `action`; else one line, nothing done."""
        if not username.strip():
            raise fail("--as-user needs a user name")
        model = get_user_model()
        user = model.objects.filter(**{model.USERNAME_FIELD: username}).first()
        if user is None:
            raise fail(f"--as-user: no user named {username[:150]!r}")
        if not user.is_active:
            raise fail(f"--as-user: user {username!r} is inactive")
        operation = "delete" if action == "delete" else action
        lacking = permissions.missing(user, operation, drop_database=drop_database)
        if lacking:
            what = "delete with database" if action == "delete" and drop_database else action
            raise fail(f"permission denied: {username} may not {what} ({', '.join(lacking)})")
        return user.get_username()

    def _get(self, name: str) -> Application:
        application = selectors.application_by_name(name)
        if application is None:
            raise fail(f"no app named {name!r} (see: manage.py apps list)")
        return application

    def do_list(self, json: bool, **_):
        rows = [app_row(a) for a in selectors.application_list_with_status()]
        emit(self, rows, ["name", "title", "statuses", "start_mode", "db_type"], json)

    def do_create(
        self,
        name,
        title,
        envs,
        db_type,
        start_mode,
        icon,
        pinned,
        domain,
        db_host,
        db_port,
        db_user,
        db_password,
        db_database,
        options,
        **rest,
    ):
        try:
            parsed = json.loads(options)
        except ValueError as exc:
            raise fail(f"--options is not valid JSON: {exc}") from None
        try:
            application = services.application_create(
                name=name,
                title=title,
                environments=envs,
                db_type=db_type,
                start_mode=start_mode,
                icon=icon,
                pinned=pinned,
                custom_domain=domain,
                db_host=db_host,
                db_port=db_port,
                db_user=db_user,
                db_password=db_password,
                db_database=db_database,
                options=parsed,
            )
        except ValidationError as exc:
            raise fail(f"cannot create {name!r}: {_validation_line(exc)}") from None
        application = self._get(application.name)
        emit(self, [app_row(application)], ["name", "title", "statuses"], rest["json"])

    def _outcome(self, outcome, as_json: bool) -> None:
        row = {
            "name": outcome.application,
            "done": outcome.started,
            "already_in_progress": outcome.skipped,
            "failed": outcome.failed,
        }
        install = outcome.install
        if install and install.installed:
            row["superuser"] = install.admin_username
            if install.admin_password:
                row["superuser_password"] = install.admin_password
        if as_json:
            emit(self, [row], [], True)
        else:
            for env in outcome.started:
                self.stdout.write(f"{outcome.application}@{env}: done")
            for env in outcome.skipped:
                self.stdout.write(f"{outcome.application}@{env}: already in progress")
            if install and install.installed:
                if install.admin_password:
                    self.stdout.write(
                        f"Initial superuser: {install.admin_username} / {install.admin_password}"
                        "  (shown once: keep it now)"
                    )
                else:
                    self.stdout.write(f"Initial superuser: {install.admin_username} (from options)")
        if outcome.failed:
            raise fail(
                "; ".join(f"{outcome.application}@{e}: {m}" for e, m in outcome.failed.items())
            )

    def _settled(self, name: str, outcome, want: str, timeout: float):
        """Wait for environments that were sent the command (multi-environment mode)."""
        if timeout < 0:
            raise fail("--timeout must be 0 or more")
        application = self._get(name)
        pending = selectors.application_pending_environments(application, want)
        if not pending:
            return outcome
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            time.sleep(0.2)
            pending = selectors.application_pending_environments(self._get(name), want)
        statuses = selectors.application_statuses(self._get(name))
        for env, status in statuses.items():
            if status == want:
                if env not in outcome.started:
                    outcome.started.append(env)
            elif status == "error":
                deployment = application.deployments.get(environment__name=env)
                outcome.failed[env] = deployment.error or "error"
            elif env in pending:
                outcome.failed[env] = f"still {status} after {timeout:g} s"
        password = services.application_take_pending_password(application)
        if password and outcome.install is None:
            outcome.install = InstallResult(True, 0, password[0], password[1])
        return outcome

    def do_start(self, name, json, timeout, **_):
        outcome = services.application_start(application=self._get(name), actor=self.actor)
        self._outcome(self._settled(name, outcome, "running", timeout), json)

    def do_stop(self, name, json, timeout, **_):
        outcome = services.application_stop(application=self._get(name), actor=self.actor)
        self._outcome(self._settled(name, outcome, "stopped", timeout), json)

    def do_restart(self, name, json, timeout, **_):
        outcome = services.application_restart(application=self._get(name), actor=self.actor)
        self._outcome(self._settled(name, outcome, "running", timeout), json)

    def do_delete(self, name, drop_database, yes, json, **_):
        application = self._get(name)
        if drop_database and not yes:
            raise fail("--drop-database destroys the app's data: add --yes to confirm")
        try:
            services.application_delete(
                application=application, drop_database=drop_database, actor=self.actor
            )
        except ValidationError as exc:
            raise fail(_validation_line(exc)) from None
        row = {"name": name, "deleted": True, "database_dropped": drop_database}
        emit(self, [row], ["name", "deleted", "database_dropped"], json)

    def do_history(self, name, limit, json, **_):
        if limit < 1:
            raise fail("--limit must be at least 1")
        rows = [
            {
                "environment": change.deployment.environment.name,
                "old_status": change.old_status,
                "new_status": change.new_status,
                "at": change.at.isoformat(),
                "reason": change.reason,
                "command_id": str(change.command_id) if change.command_id else None,
                "actor": change.actor,
            }
            for change in selectors.application_history(self._get(name))[:limit]
        ]
        emit(self, rows, ["at", "environment", "old_status", "new_status", "reason"], json)
