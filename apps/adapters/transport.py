"""Redis: the config cache (django-redis) and the command/report queues (Celery).

Messages are published through the default (anonymous) exchange straight onto the queue's
list. Kombu's Redis transport otherwise routes through `_kombu.binding.*` keys that only a
starting worker declares, so after a Redis restart or FLUSHALL every message would be dropped
until each worker restarted.
"""

from __future__ import annotations

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
    """Send one message to a queue; raises when Redis cannot be reached."""
    from supervisor_project.celery import app

    app.send_task(
        task,
        args=[message],
        queue=queue(to),
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
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


def app_lock(name: str, *, ttl: float = 30.0, wait: float = 600.0):
    """A redis-py Lock for work on one app (install/upgrade), with a TTL."""
    return redis_client().lock(
        f"appsup{settings.APP_QUEUE_PREFIX}:lock:app:{name}", timeout=ttl, blocking_timeout=wait
    )


def uses_config_cache() -> bool:
    return "config" in settings.CACHES
