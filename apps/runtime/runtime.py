"""The sub-application runtime: provision, install, upgrade and serve one app.

It takes an AppSpec and does the work; it knows nothing of Celery, Redis or the control
plane. The local process adapter calls it in-process; an environment's command task calls the
same functions (one runtime, two callers).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.recorder import MigrationRecorder

from apps.runtime import provision
from apps.runtime.routing import APP_ALIAS_PREFIX, using_app
from apps.runtime.spec import AppSpec

log = logging.getLogger(__name__)

# report(status, detail): how the runtime tells its caller what it is doing.
Reporter = Callable[[str, str], None]


class AppRuntimeError(RuntimeError):
    """A start, stop or removal failed; the message is meant for the operator."""


@dataclass(frozen=True)
class InstallResult:
    installed: bool  # True when this start created the initial superuser
    applied_migrations: int
    admin_username: str = ""
    admin_password: str = ""  # only when generated here: show it once, never store it


_alias_lock = threading.Lock()
_served: dict[str, AppSpec] = {}
_served_lock = threading.Lock()


def register_alias(spec: AppSpec) -> str:
    """Make the app's database known to Django under spec.alias (idempotent)."""
    alias = spec.alias
    wanted = provision.django_settings(spec)
    with _alias_lock:
        current = connections.settings.get(alias)
        if current is not None:
            return alias
        full = connections.configure_settings(
            {DEFAULT_DB_ALIAS: connections.settings[DEFAULT_DB_ALIAS], alias: wanted}
        )[alias]
        connections.settings[alias] = full
        settings.DATABASES[alias] = full
    return alias


def pending_migrations(spec: AppSpec) -> int:
    alias = register_alias(spec)
    executor = MigrationExecutor(connections[alias])
    return len(executor.migration_plan(executor.loader.graph.leaf_nodes()))


def _is_fresh(alias: str) -> bool:
    return not MigrationRecorder(connections[alias]).has_table()


def install_or_upgrade(spec: AppSpec, report: Reporter) -> InstallResult:
    """Install a fresh database (migrate + initial superuser) or apply pending migrations.

    Safe to repeat and to run from several processes: the install lock serialises them, and a
    start interrupted between migrate and the superuser finishes the install next time.
    """
    alias = register_alias(spec)
    try:
        with provision.install_lock(spec):
            fresh = _is_fresh(alias)
            pending = pending_migrations(spec)
            if pending:
                report(
                    "initializing",
                    f"{'installing' if fresh else 'upgrading'}: {pending} migrations",
                )
                call_command("migrate", database=alias, interactive=False, verbosity=0)
            with using_app(alias):
                users = get_user_model()._default_manager.db_manager(alias)
                if users.filter(is_superuser=True).exists():
                    return InstallResult(installed=False, applied_migrations=pending)
                report("initializing", "creating superuser")
                username = spec.options.get("admin_username") or "admin"
                password = spec.options.get("admin_password") or ""
                generated = not password
                if generated:
                    password = secrets.token_urlsafe(12)
                users.create_superuser(
                    username=username,
                    email=spec.options.get("admin_email", ""),
                    password=password,
                )
                return InstallResult(
                    installed=True,
                    applied_migrations=pending,
                    admin_username=username,
                    admin_password=password if generated else "",
                )
    finally:
        connections[alias].close()


def start(spec: AppSpec, report: Reporter) -> InstallResult:
    """Provision, install or upgrade, then serve the app in this process."""
    try:
        report("preparing", "provisioning database")
        provision.provision(spec)
        result = install_or_upgrade(spec, report)
        report("initialized", "database ready")
    except provision.ProvisionError as exc:
        raise AppRuntimeError(str(exc)) from exc
    except Exception as exc:
        log.exception("start of app %s failed", spec.name)
        raise AppRuntimeError(f"{type(exc).__name__}: {exc}") from exc
    serve(spec)
    report("running", "serving")
    return result


def serve(spec: AppSpec) -> None:
    register_alias(spec)
    with _served_lock:
        _served[spec.name] = spec


def attach(spec: AppSpec) -> None:
    """Serve an app that another process of this environment started (upgrading if needed)."""
    if served(spec.name) == spec:
        return
    if pending_migrations(spec):
        install_or_upgrade(spec, lambda status, detail: None)
    serve(spec)


def served(name: str) -> AppSpec | None:
    return _served.get(name)


def stop(name: str) -> None:
    """Stop serving the app here. Its database and data stay."""
    with _served_lock:
        spec = _served.pop(name, None)
    if spec is not None and spec.alias in connections.settings:
        connections[spec.alias].close()


def stop_all() -> None:
    """Stop serving every app and forget their database aliases (server shutdown)."""
    with _served_lock:
        _served.clear()
    with _alias_lock:
        for alias in [a for a in connections.settings if a.startswith(APP_ALIAS_PREFIX)]:
            connections[alias].close()
            del connections.settings[alias]
            if hasattr(connections._connections, alias):
                delattr(connections._connections, alias)
            settings.DATABASES.pop(alias, None)


def remove(spec: AppSpec, *, drop_database: bool) -> None:
    stop(spec.name)
    if drop_database:
        try:
            provision.drop(spec)
        except provision.ProvisionError as exc:
            raise AppRuntimeError(str(exc)) from exc
