"""The sub-application runtime: provision, install, upgrade and serve one app.

It takes an AppSpec and does the work; it knows nothing of Celery, Redis or the control
plane. The local process adapter calls it in-process; an environment's command task calls the
same functions (one runtime, two callers).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management import call_command
from django.core.management.commands.migrate import Command as MigrateCommand
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from apps.runtime import provision
from apps.runtime.routing import APP_ALIAS_PREFIX, using_app
from apps.runtime.spec import AppSpec, DbSpec

log = logging.getLogger(__name__)

# report(status, detail): how the runtime tells its caller what it is doing. The caller's
# own final "running" report may add credentials=InstallResult.credentials (see start()).
Reporter = Callable[..., None]


class AppRuntimeError(RuntimeError):
    """A start, stop or removal failed; the message is meant for the operator."""


@dataclass(frozen=True)
class InstallResult:
    installed: bool  # True when this start created the initial superuser
    applied_migrations: int
    admin_username: str = ""
    admin_password: str = ""  # only when generated here: show it once, never store it

    @property
    def credentials(self) -> dict[str, str] | None:
        """The generated initial superuser, to go out with the "running" report."""
        if not self.admin_password:
            return None
        return {"username": self.admin_username, "password": self.admin_password}


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


class _MigrateWithProgress(MigrateCommand):
    """Django's migrate, telling the reporter "migrating k/n" as migrations are applied
    (at most every PROGRESS_SECONDS, and always the last one)."""

    PROGRESS_SECONDS = 0.25

    def __init__(self, report: Reporter, total: int):
        super().__init__()
        self.report, self.total, self.done, self.last = report, total, 0, 0.0

    def migration_progress_callback(self, action, migration=None, fake=False):
        super().migration_progress_callback(action, migration, fake)
        if action != "apply_success":
            return
        self.done += 1
        now = time.monotonic()
        if self.done == self.total or now - self.last >= self.PROGRESS_SECONDS:
            self.last = now
            self.report("initializing", f"migrating {self.done}/{self.total}")


class InitialPassword:
    """The initial superuser's password and its hash: PBKDF2, Django's default, hundreds of
    milliseconds by design, and most of a template install's time if paid on the spot.

    A generated password is random, so it can be made before any app needs it: READY
    (password, hash) pairs are kept ready, hashed in background threads (hashlib releases
    the GIL), and refilled after each use; a start takes one and its hash is off the critical
    path. An operator's own admin_password is hashed when seen, overlapping provisioning.
    The ready passwords live only in this process's memory, as an install's always did."""

    READY = 2
    _lock = threading.Lock()
    _ready: list[tuple[str, Future]] = []
    _executor: ThreadPoolExecutor | None = None
    _pid = 0

    @classmethod
    def _pool(cls) -> ThreadPoolExecutor:  # under _lock
        if cls._pid != os.getpid():  # first use, or a forked child: nothing inherited works
            cls._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="password-hash")
            cls._ready, cls._pid = [], os.getpid()
        return cls._executor

    @classmethod
    def prepare(cls) -> None:
        """Have READY generated passwords hashed (in the background)."""
        with cls._lock:
            pool = cls._pool()
            while len(cls._ready) < cls.READY:
                password = secrets.token_urlsafe(12)
                cls._ready.append((password, pool.submit(make_password, password)))

    def __init__(self, spec: AppSpec):
        given = spec.options.get("admin_password") or ""
        self.generated = not given
        with self._lock:
            pool = self._pool()
            if given:
                self.password, self._hash = given, pool.submit(make_password, given)
            elif self._ready:
                self.password, self._hash = self._ready.pop(0)
            else:
                self.password = secrets.token_urlsafe(12)
                self._hash = pool.submit(make_password, self.password)
        if self.generated:
            self.prepare()  # the next one

    def hashed(self) -> str:
        return self._hash.result()


def install_or_upgrade(
    spec: AppSpec, report: Reporter, initial: InitialPassword | None = None
) -> InstallResult:
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
                migrate = _MigrateWithProgress(report, pending)
                call_command(migrate, database=alias, interactive=False, verbosity=0)
            with using_app(alias):
                users = get_user_model()._default_manager.db_manager(alias)
                if users.filter(is_superuser=True).exists():
                    return InstallResult(installed=False, applied_migrations=pending)
                report("initializing", "creating superuser")
                username = spec.options.get("admin_username") or "admin"
                initial = initial or InitialPassword(spec)
                user = users.create_superuser(
                    username=username, email=spec.options.get("admin_email", ""), password=None
                )
                user.password = initial.hashed()
                user.save(using=alias, update_fields=["password"])
                return InstallResult(
                    installed=True,
                    applied_migrations=pending,
                    admin_username=username,
                    admin_password=initial.password if initial.generated else "",
                )
    finally:
        connections[alias].close()


def _migration_state() -> str:
    """A digest of every migration the project ships: a template built for one state is
    never used for another (a new migration in TENANT_APPS means a new template)."""
    global _migration_digest
    if _migration_digest is None:
        nodes = sorted(MigrationLoader(None, ignore_no_migrations=True).graph.nodes)
        _migration_digest = hashlib.sha256(repr(nodes).encode()).hexdigest()[:16]
    return _migration_digest


_migration_digest: str | None = None


def _template_for(spec: AppSpec, new: bool) -> str | None:
    """For a new PostgreSQL database: the name of a migrated template of the current
    migration state, built once (under a server-wide lock) by the first app that needs it.
    Copying it (CREATE DATABASE ... TEMPLATE) replaces migrate-from-scratch."""
    db = spec.db
    if not new or db.type != "new_database" or not settings.APP_DB_TEMPLATES:
        return None  # not a new database (upgrades migrate in place), or no templates
    # "_template": no app's database has this name (app names start with a letter).
    name = f"{settings.APP_DB_PREFIX}_template_{_migration_state()}"
    if provision.server_has_database(db.server, name):
        return name
    with provision.server_lock(db.server, name):
        if provision.server_has_database(db.server, name):
            return name  # another process built it meanwhile
        building = provision.template_prepare(db.server, name)
        template_spec = AppSpec(
            name=f"template_{_migration_state()}"[:48],
            title="template",
            db=DbSpec(type="new_database", name=building, server=db.server),
        )
        alias = register_alias(template_spec)
        try:
            call_command("migrate", database=alias, interactive=False, verbosity=0)
        finally:
            connections[alias].close()
            forget_alias(alias)
        provision.template_publish(db.server, building, name)
        log.info("built database template %s", name)
    return name


def forget_alias(alias: str) -> None:
    with _alias_lock:
        connections.settings.pop(alias, None)
        settings.DATABASES.pop(alias, None)
        if alias in connections:
            del connections[alias]


def start(spec: AppSpec, report: Reporter, *, report_running: bool = True) -> InstallResult:
    """Provision, install or upgrade, then serve the app in this process.

    With report_running=False the caller sends "running" itself, with the result's
    credentials: a generated password is then stored no later than the status that makes an
    operator look for it.
    """
    try:
        report("preparing", "provisioning database")
        new = not provision.database_exists(spec)
        initial = InitialPassword(spec) if new else None
        template = _template_for(spec, new)
        if provision.provision(spec, template=template) and template:
            report("initializing", f"installing: copied the migrated template {template}")
        result = install_or_upgrade(spec, report, initial)
        report("initialized", "database ready")
    except provision.ProvisionError as exc:
        raise AppRuntimeError(str(exc)) from exc
    except Exception as exc:
        log.exception("start of app %s failed", spec.name)
        raise AppRuntimeError(f"{type(exc).__name__}: {exc}") from exc
    serve(spec)
    if report_running:
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
