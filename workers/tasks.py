"""Celery tasks: thin callers. Environments run `env_command`; the supervisor's job worker runs
`supervisor_message` and the periodic jobs. Every payload goes through workers.messages."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import close_old_connections

from workers import messages

log = logging.getLogger("workers")


def send_to_supervisor(fields: dict[str, Any], kind: str = "report") -> None:
    """Best effort: a report lost here is repeated by the next heartbeat."""
    from apps.adapters import transport

    try:
        transport.publish(
            "workers.tasks.supervisor_message",
            {"v": messages.VERSION, "type": kind, **fields},
            to=settings.SUPERVISOR_QUEUE,
        )
    except Exception as exc:
        log.warning("could not send %s to the supervisor: %s", kind, exc)


@contextmanager
def _app_lock(app: str):
    from apps.adapters import transport
    from apps.runtime.hosting import LockKeeper

    ttl = 30.0
    lock = transport.app_lock(app, ttl=ttl)
    try:
        acquired = lock.acquire()
    except Exception as exc:  # Redis unreachable: the database's install lock still serialises
        log.warning("app lock for %s unavailable (%s); relying on the database lock", app, exc)
        yield
        return
    if not acquired:
        raise TimeoutError(f"could not lock app {app}")
    try:
        with LockKeeper(lock, ttl):
            yield
    finally:
        try:
            lock.release()
        except Exception:  # expired or Redis gone: nothing to release
            log.info("lock for %s already released", app)


@shared_task(name="workers.tasks.env_command", acks_late=True, ignore_result=True)
def env_command(message: Any) -> None:
    from apps.adapters import transport
    from apps.runtime import hosting

    try:
        command = messages.decode(message)
        if command["type"] != "command":
            raise messages.MessageError(f"{command['type']} sent to an environment queue")
        if command["env"] != settings.ENVIRONMENT_NAME:
            raise messages.MessageError(f"command for {command['env']} reached this environment")
    except messages.MessageError as exc:
        log.warning("rejected command: %s", exc)
        return
    try:
        try:
            config = transport.config_read(command["app"]) if command["app"] else None
        except Exception as exc:
            log.warning("config cache unavailable (%s): using what this environment knows", exc)
            config = None
        hosting.execute(
            env=command["env"],
            action=command["action"],
            app=command["app"],
            command_id=command["id"],
            config=config,
            drop_database=command["drop_database"],
            send=send_to_supervisor,
            lock=_app_lock,
        )
    except SoftTimeLimitExceeded:
        hosting.record(
            command["app"],
            status="error",
            command_id=command["id"],
            detail=f"timed out after {settings.CELERY_TASK_SOFT_TIME_LIMIT} s",
            send=send_to_supervisor,
            env=command["env"],
        )
    finally:
        close_old_connections()


@shared_task(name="workers.tasks.supervisor_message", acks_late=True, ignore_result=True)
def supervisor_message(message: Any) -> None:
    from apps.supervisor import services

    try:
        decoded = messages.decode(message)
        if decoded["type"] == "command":
            raise messages.MessageError("a command sent to the supervisor queue")
    except messages.MessageError as exc:
        log.warning("rejected message: %s", exc)
        return
    try:
        services.environment_message(decoded)
    finally:
        close_old_connections()


@shared_task(name="workers.tasks.detect_offline", ignore_result=True)
def detect_offline() -> None:
    from apps.supervisor import services

    try:
        services.environments_detect_offline()
    finally:
        close_old_connections()


@shared_task(name="workers.tasks.refresh_config_cache", ignore_result=True)
def refresh_config_cache() -> None:
    from apps.supervisor import services

    try:
        services.config_cache_refresh()
    finally:
        close_old_connections()


@shared_task(name="workers.tasks.expire_commands", ignore_result=True)
def expire_commands() -> None:
    from apps.supervisor import services

    try:
        services.commands_expire()
    finally:
        close_old_connections()
