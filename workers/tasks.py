"""Celery tasks: thin callers. Environments run `env_command`; the supervisor's job worker runs
`supervisor_message` and the periodic jobs, among them `fold_heartbeats` (heartbeats wait in
a Redis hash, not in the queue). Every payload goes through workers.signing (its
envelope: signature, age, replay) and workers.messages (its content); what either refuses is
logged as "rejected ... (<reason>)" and counted by reason, and changes nothing."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from typing import Any

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import close_old_connections

from apps.observability import metrics
from apps.observability.logcontext import bind
from workers import messages, signing

log = logging.getLogger("workers")

SUPERVISOR_RECEIVER = "supervisor"


def _reject(what: str, exc: messages.MessageError) -> None:
    log.warning("rejected %s (%s): %s", what, exc.reason, exc)
    metrics.message_rejected(exc.reason)


def _replay_check(receiver: str, envelope: signing.Envelope) -> None:
    if signing.already_processed(receiver, envelope.mid):
        raise messages.MessageError(
            f"message {envelope.mid} from {envelope.kid} was already processed", "replayed"
        )


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

    lock = transport.app_lock(app)
    try:
        acquired = lock.acquire()
    except Exception as exc:  # Redis unreachable: the database's install lock still serialises
        log.warning("app lock for %s unavailable (%s); relying on the database lock", app, exc)
        yield
        return
    if not acquired:
        raise TimeoutError(f"could not lock app {app}")
    try:
        with LockKeeper(lock):
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

    receiver = f"env.{settings.ENVIRONMENT_NAME}"
    try:
        envelope = signing.verify(message)
        command = messages.decode(message)
        if command["type"] != "command":
            raise messages.MessageError(
                f"{command['type']} sent to an environment queue", "wrong_queue"
            )
        if command["env"] != settings.ENVIRONMENT_NAME:
            raise messages.MessageError(
                f"command for {command['env']} reached this environment", "wrong_environment"
            )
        _replay_check(receiver, envelope)
    except messages.MessageError as exc:
        _reject("command", exc)
        return
    # The command's id and target on every log line of this command, in every logger.
    with (
        bind(
            command_id=command["id"],
            app=command["app"],
            env=command["env"],
            action=command["action"],
        ),
        signing.processing(receiver, envelope.mid),
    ):
        log.info("command %s %s received", command["action"], command["app"] or "-")
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
        log.info("command %s %s done", command["action"], command["app"] or "-")


@shared_task(name="workers.tasks.supervisor_message", acks_late=True, ignore_result=True)
def supervisor_message(message: Any) -> None:
    from apps.supervisor import services

    try:
        envelope = signing.verify(message)
        decoded = messages.decode(message)
        if decoded["type"] == "command":
            raise messages.MessageError("a command sent to the supervisor queue", "wrong_queue")
        _replay_check(SUPERVISOR_RECEIVER, envelope)
    except messages.MessageError as exc:
        _reject("message", exc)
        return
    with (
        bind(
            command_id=decoded.get("command_id"),
            app=decoded.get("app"),
            env=decoded.get("env"),
        ),
        signing.processing(SUPERVISOR_RECEIVER, envelope.mid),
    ):
        if decoded["type"] == "report":
            log.info(
                "report from %s: %s %s",
                decoded["env"],
                decoded.get("app") or "-",
                decoded.get("status") or decoded.get("kind", ""),
            )
        try:
            services.environment_message(decoded)
        finally:
            close_old_connections()


BEAT_TYPES = ("heartbeat", "goodbye")


def beats_decode(waiting: dict[str, bytes]) -> list[dict[str, Any]]:
    """The beats taken from Redis that pass the envelope and content checks (the replay
    check aside: only the latest beat of an environment is kept, and an older copy written
    over a newer one within APP_MESSAGE_MAX_AGE only refreshes its liveness, while its app
    states, older than those stored, are dropped). The rest is logged and counted."""
    decoded = []
    for env, data in waiting.items():
        try:
            try:
                message = json.loads(data)
            except ValueError:
                raise messages.MessageError("a beat must be JSON") from None
            signing.verify(message)
            beat = messages.decode(message)
            if beat["type"] not in BEAT_TYPES:
                raise messages.MessageError(f"a {beat['type']} left as a beat", "wrong_queue")
            if beat["env"] != env:
                raise messages.MessageError(
                    f"a beat of {beat['env']} left under {env[:60]!r}", "cross_environment"
                )
        except messages.MessageError as exc:
            _reject("beat", exc)
            continue
        decoded.append(beat)
    return decoded


@shared_task(name="workers.tasks.fold_heartbeats", ignore_result=True)
def fold_heartbeats() -> None:
    """Store the heartbeats and goodbyes environments left in Redis since the last fold."""
    from apps.adapters import transport
    from apps.runtime.hosting import LockKeeper
    from apps.supervisor import services

    if not transport.beats_waiting():
        return  # the usual idle period: one HLEN
    lock = transport.beats_fold_lock()
    if not lock.acquire():
        return  # another job worker is folding
    try:
        # Kept while it works: 5,000 environments registering at once take a minute.
        with LockKeeper(lock):
            beats = beats_decode(transport.beats_take())
            if beats:
                services.environment_beats(beats)
    finally:
        close_old_connections()
        try:
            lock.release()
        except Exception:  # expired (its keeper could not reach Redis) or Redis gone
            log.warning("the heartbeat fold lock was already released")


def _periodic(name: str, service: str):
    """A task of CELERY_BEAT_SCHEDULE: one function of apps.supervisor.services, run with the
    job worker's database connections closed after it (a beat task runs every few seconds)."""

    def run() -> None:
        from apps.supervisor import services

        try:
            getattr(services, service)()
        finally:
            close_old_connections()

    run.__name__ = run.__qualname__ = name
    return shared_task(name=f"workers.tasks.{name}", ignore_result=True)(run)


detect_offline = _periodic("detect_offline", "environments_detect_offline")
refresh_config_cache = _periodic("refresh_config_cache", "config_cache_refresh")
expire_commands = _periodic("expire_commands", "commands_expire")
resume_start_queues = _periodic("resume_start_queues", "start_queues_resume")
