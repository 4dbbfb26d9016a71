"""Redis: the config cache (django-redis) and the command/report queues (Celery).

Messages are published through the default (anonymous) exchange straight onto the queue's
list. Kombu's Redis transport otherwise routes through `_kombu.binding.*` keys that only a
starting worker declares, so after a Redis restart or FLUSHALL every message would be dropped
until each worker restarted.

Every message `publish` sends is signed first (workers.signing): commands with the key of the
environment they go to, an environment's messages with its own key.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from django.conf import settings
from django.core.cache import caches
from kombu import Exchange, Queue

log = logging.getLogger(__name__)

_DEFAULT_EXCHANGE = Exchange("", type="direct")


def queue(name: str) -> Queue:
    return Queue(name, _DEFAULT_EXCHANGE, routing_key=name)


def env_queue(environment: str) -> str:
    return f"{settings.APP_QUEUE_PREFIX}env.{environment}"


def publish(task: str, message: dict[str, Any], *, to: str) -> None:
    """Sign one message and send it to a queue; raises when Redis cannot be reached or this
    process has no key for it (workers.signing)."""
    from supervisor_project.celery import app
    from workers import signing

    app.send_task(
        task,
        args=[signing.sign(message)],
        # What Celery's log lines and its message headers show of the argument. Left to
        # Celery, it is a repr of the whole signed message (up to 1 KiB, in every message's
        # headers and log line; 15 % of a publish's CPU).
        argsrepr=summary(message),
        kwargsrepr="{}",
        queue=queue(to),
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
    )


SUMMARY_FIELDS = ("kind", "action", "status", "app", "env", "id", "command_id")


def summary(message: Any) -> str:
    """One short line naming a message: `[command action=start app=crm env=env_a id=...]`
    (what is no object, which the receiver refuses, as a short repr)."""
    if not isinstance(message, dict):
        return f"[not an object: {message!r:.80}]"
    fields = [f"{k}={message[k]}" for k in SUMMARY_FIELDS if message.get(k) not in (None, "")]
    return f"[{' '.join([str(message.get('type', '?')), *fields])}]"[:200]


# --- heartbeats: the latest one of each environment, folded by the supervisor -------------
# An environment does not send its heartbeats (nor its goodbye) as Celery messages: it leaves
# the latest one, signed, in one Redis hash (one HSET; a newer beat replaces one not yet read).
# The supervisor's job worker takes the whole hash every HEARTBEAT_FOLD_SECONDS and stores the
# batch in a few statements (services.environment_beats). A Celery task per beat cost the job
# worker ~10 ms of CPU each: 40 % of a core for 5,000 environments (bench/heartbeats). The hash
# holds one entry per environment, so a supervisor that is away never faces a backlog.
def beats_key() -> str:
    return f"appsup{settings.APP_QUEUE_PREFIX}:beats"


@functools.cache
def _broker_redis():
    """A redis-py client of the command Redis (the Celery broker), one pool per process."""
    import redis

    return redis.Redis.from_url(
        settings.CELERY_BROKER_URL,
        socket_connect_timeout=3,
        socket_timeout=10,
        health_check_interval=10,
    )


def beat_put(message: dict[str, Any]) -> None:
    """Sign an environment's heartbeat or goodbye and leave it for the supervisor's fold;
    raises when Redis cannot be reached."""
    from workers import signing

    _broker_redis().hset(beats_key(), str(message["env"]), json.dumps(signing.sign(message)))


def beats_waiting() -> int:
    return _broker_redis().hlen(beats_key())


def beats_take() -> dict[str, bytes]:
    """Every waiting beat, removed atomically (one that arrives meanwhile waits for the
    next fold)."""
    pipe = _broker_redis().pipeline(transaction=True)
    pipe.hgetall(beats_key())
    pipe.delete(beats_key())
    waiting, _ = pipe.execute()
    return {env.decode(errors="replace"): data for env, data in waiting.items()}


BEATS_LOCK_TTL = 30.0


def beats_fold_lock():
    """Held while one job worker folds, so two supervisors never fold one environment's beat
    and its later goodbye out of order. Expires if its holder dies."""
    return _broker_redis().lock(
        f"appsup{settings.APP_QUEUE_PREFIX}:lock:beats", timeout=BEATS_LOCK_TTL, blocking=False
    )


# --- config cache --------------------------------------------------------------------------
def _cache():
    return caches["config"]


def app_key(name: str) -> str:
    return f"app:{name}"


def config_write(name: str, config: dict[str, Any]) -> None:
    _cache().set(app_key(name), config, timeout=None)


def config_write_many(configs: dict[str, dict[str, Any]]) -> None:
    _cache().set_many({app_key(n): c for n, c in configs.items()}, timeout=None)


def config_delete(name: str) -> None:
    _cache().delete(app_key(name))


def config_read(name: str) -> dict[str, Any] | None:
    return _cache().get(app_key(name))


def redis_client():
    """The raw client of the config cache's Redis (for locks)."""
    from django_redis import get_redis_connection

    return get_redis_connection("config")


def app_lock(name: str, *, wait: float = 600.0):
    """A redis-py Lock for work on one app (install/upgrade), with a TTL (APP_LOCK_TTL)."""
    return redis_client().lock(
        f"appsup{settings.APP_QUEUE_PREFIX}:lock:app:{name}",
        timeout=settings.APP_LOCK_TTL,
        blocking_timeout=wait,
    )


def uses_config_cache() -> bool:
    return "config" in settings.CACHES
