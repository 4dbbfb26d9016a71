"""Readiness checks for /readyz, in django-health-check's framework.

Each check names its component (its repr is the name shown) and, when it fails, the cause:
an error that the library would report as a bare "Connection Error" says where and why here
("127.0.0.1:6379/0: connection refused", "...: Timeout connecting to server"). Passwords never
appear: Redis URLs are shown as host:port/db.

What is checked depends on the process's role:
  local       database
  supervisor  database, Redis (config cache and command broker: once if they are one URL),
              Celery: some worker answers that it consumes the supervisor queue
  worker      database (its own), Redis, Celery: this environment's own worker
              (`<ENVIRONMENT_NAME>@<host>`, run_environment's child) answers and consumes
              env.<ENVIRONMENT_NAME>

Every check has READYZ_TIMEOUT (1 s) of its own plus the library's one second of grace, and
they run concurrently, so /readyz answers within about two seconds whatever is down. The
supervisor's Celery check always takes about one second: a broadcast collects answers until
none comes for a second (the Redis transport's shortest wait), as nothing tells how many
workers there are; an environment's check asks its one worker and returns at its answer.
"""

from __future__ import annotations

import dataclasses
import datetime
from urllib.parse import urlsplit

from django.conf import settings
from health_check.base import HealthCheck
from health_check.checks import Database
from health_check.contrib.redis import Redis
from health_check.exceptions import ServiceUnavailable
from redis.asyncio import Redis as RedisClient
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.READYZ_TIMEOUT)


def redis_where(url: str) -> str:
    """host:port/db of a Redis URL, without credentials."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path
        db = parts.path.strip("/") or "0"
        return f"{parts.hostname}:{parts.port or 6379}/{db}"
    except ValueError:
        return "(unparsable URL)"


def describe(exc: BaseException) -> str:
    """The cause in a few words: "connection refused" when it is that, else the message."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    return str(exc)


@dataclasses.dataclass
class DatabaseCheck(Database):
    """SELECT 1 on the default database (the library's check, bounded and named)."""

    def __post_init__(self) -> None:
        self.timeout = _timeout()

    def __repr__(self) -> str:
        return "database"


@dataclasses.dataclass
class RedisCheck(Redis):
    """PING with short socket timeouts and no retry; the cause is the client's message."""

    name: str = "redis"
    url: str = dataclasses.field(default="", repr=False)

    def __post_init__(self) -> None:
        self.timeout = _timeout()
        seconds = self.timeout.total_seconds()
        url = self.url

        def client() -> RedisClient:
            return RedisClient.from_url(
                url,
                socket_connect_timeout=seconds,
                socket_timeout=seconds,
                retry=Retry(NoBackoff(), 0),
            )

        self.client_factory = client
        super().__post_init__()

    def __repr__(self) -> str:
        return self.name

    async def run(self) -> None:
        where = redis_where(self.url)
        try:
            await super().run()
        except ServiceUnavailable as exc:
            cause = exc.__cause__
            raise ServiceUnavailable(
                f"{where}: {describe(cause) if cause else exc.message}"
            ) from cause
        except RedisError as exc:  # e.g. NOAUTH, READONLY: not a connection error
            raise ServiceUnavailable(f"{where}: {describe(exc)}") from exc


@dataclasses.dataclass
class CeleryCheck(HealthCheck):
    """A Celery worker answers the broker and consumes `queue` (`node`: that one worker)."""

    queue: str
    node: str = ""
    broker_url: str = dataclasses.field(default="", repr=False)

    def __post_init__(self) -> None:
        self.timeout = _timeout()

    def __repr__(self) -> str:
        return "celery"

    def run(self) -> None:
        from supervisor_project.celery import app

        seconds = self.timeout.total_seconds()
        where = redis_where(self.broker_url) if self.broker_url else "the broker"
        try:
            with app.connection_for_write(url=self.broker_url or None) as connection:
                # One attempt, no back-off: Celery's own retries would take seconds.
                connection.ensure_connection(
                    max_retries=1, interval_start=0, interval_step=0, timeout=seconds
                )
                inspect = app.control.inspect(
                    destination=[self.node] if self.node else None,
                    limit=1 if self.node else None,
                    timeout=seconds,
                    connection=connection,
                )
                replies = inspect.active_queues() or {}
        except Exception as exc:  # kombu wraps socket and Redis errors in its own types
            raise ServiceUnavailable(f"broker {where} unreachable: {describe(exc)}") from exc
        consuming = [
            node
            for node, queues in replies.items()
            if any(isinstance(q, dict) and q.get("name") == self.queue for q in queues or ())
        ]
        if consuming:
            return
        if self.node:
            if replies:
                raise ServiceUnavailable(
                    f"worker {self.node} answered but does not consume queue {self.queue}"
                )
            raise ServiceUnavailable(f"worker {self.node} did not answer within {seconds:g} s")
        raise ServiceUnavailable(
            f"no worker consumes queue {self.queue} "
            f"({len(replies)} other worker(s) answered within {seconds:g} s)"
        )


def readiness_checks() -> list[HealthCheck]:
    """The checks of this process's role (read from settings at each request)."""
    checks: list[HealthCheck] = [DatabaseCheck()]
    mode = settings.APP_MODE
    if mode not in ("supervisor", "worker"):
        return checks
    roles: dict[str, list[str]] = {}
    for role, url in (
        ("config cache", settings.APP_SUPERVISOR_REDIS_URL),
        ("commands", settings.APP_COMMAND_REDIS_URL),
    ):
        if url:
            roles.setdefault(url, []).append(role)
    for url, names in roles.items():
        name = "redis" if len(roles) == 1 else f"redis ({', '.join(names)})"
        checks.append(RedisCheck(name=name, url=url))
    broker = settings.APP_COMMAND_REDIS_URL
    if mode == "worker":
        from celery.utils.nodenames import host_format

        from apps.adapters import transport

        environment = settings.ENVIRONMENT_NAME
        # The node name run_environment gives its worker child (same host: same %h).
        checks.append(
            CeleryCheck(
                queue=transport.env_queue(environment),
                node=host_format(f"{environment}@%h"),
                broker_url=broker,
            )
        )
    else:
        checks.append(CeleryCheck(queue=settings.SUPERVISOR_QUEUE, broker_url=broker))
    return checks
