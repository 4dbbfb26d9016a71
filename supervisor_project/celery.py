"""Celery: the command transport of multi-environment mode (configured from CELERY_*)."""

import os

from celery import Celery
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supervisor_project.settings")

app = Celery("supervisor_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
# Celery's Django fix-up closes every database connection before and after each task unless
# this is set (then it closes them only every 2 x N tasks). Connections are managed below
# instead, by Django's own rules (CONN_MAX_AGE, health checks).
app.conf.update(CELERY_DB_REUSE_MAX=1_000_000)


@task_prerun.connect
@task_postrun.connect
def _database_connections_like_a_request(**kwargs) -> None:
    """Around each task, what Django does around each request: drop a connection that is
    broken or older than CONN_MAX_AGE, and health-check the kept one before its next use."""
    from django.db import close_old_connections

    close_old_connections()


@worker_init.connect
def _keep_database_connections(**kwargs) -> None:
    """Before the pool forks: this worker's processes reuse their database connection
    across tasks (DB_WORKER_CONN_MAX_AGE; health-checked before reuse). A new PostgreSQL
    connection cost 8 ms of a 9 ms report handler (bench/commands)."""
    from django.conf import settings
    from django.db import connections

    for alias in ("default",):
        if settings.DATABASES[alias]["ENGINE"].endswith("postgresql"):
            connections.settings[alias]["CONN_MAX_AGE"] = settings.DB_WORKER_CONN_MAX_AGE


@worker_process_init.connect
def _initial_passwords_ready(**kwargs) -> None:
    """An environment's command worker installs apps: have initial passwords hashed ahead
    (apps.runtime.runtime.InitialPassword), off the install's critical path."""
    from django.conf import settings

    if settings.APP_MODE == "worker":
        from apps.runtime.runtime import InitialPassword

        InitialPassword.prepare()


@setup_logging.connect
def _use_project_logging(**kwargs) -> None:
    """Workers log like every other process: settings.LOGGING (LOG_FORMAT, LOG_LEVEL).

    A receiver of this signal stops Celery from configuring logging itself (its own root
    handler and level from --loglevel, a separate non-propagating `celery.task` handler, and
    stdout/stderr redirected to a logger). Its own lines (task received, succeeded, failed)
    still go through the `celery.*` loggers, so they come out in the project's format.
    """
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
