"""Faults survived, with real processes (issue 6): what an operator sees and how long the
system takes to heal by itself. Each test records its outcome in
tests/artifacts/reliability.json; `make reliability` renders docs/RELIABILITY.md from it.

This module runs its cluster on a private Redis server so that it can kill and restart it,
and with short time limits so that the limits are reached in seconds.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest
from django.db import connections
from psycopg2 import sql

from apps.runtime import provision, runtime
from apps.runtime.routing import using_app
from apps.supervisor import selectors, services
from apps.supervisor.models import Application, Deployment, Environment, EnvironmentEvent
from tests.integration.cluster import wait_until
from tests.integration.test_multi_environment import create, history, statuses, wait_status

# Real processes, minutes: once per `make test` (its PostgreSQL half; see the Makefile).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.once]

ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "reliability.json"
TIME_LIMIT = 12
CLUSTER_ENV = {
    "APP_COMMAND_TIME_LIMIT": str(TIME_LIMIT),
    "APP_COMMAND_SOFT_TIME_LIMIT": str(TIME_LIMIT - 3),
    "APP_START_RETRY_AFTER": "4",
    # Installs migrate from scratch (a template copy is one statement: nothing to kill
    # half-way through); the template path is covered by tests/runtime.
    "APP_DB_TEMPLATES": "false",
}


def record(fault: str, sees: str, recovered_s: float | None, lost: str = "none") -> None:
    ARTIFACT.parent.mkdir(exist_ok=True)
    rows = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    rows[fault] = {
        "fault": fault,
        "user_sees": sees,
        "recovered_s": None if recovered_s is None else round(recovered_s, 1),
        "data_lost": lost,
        "at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    ARTIFACT.write_text(json.dumps(rows, indent=2))


def first_line(text: str, limit: int = 140) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server this module may kill and start again (nothing kept on disk)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*argv, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, timeout=10, what="the private redis-server")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    try:
        server.start()
    except FileNotFoundError:
        pytest.fail("redis-server is not installed: apt-get install redis-server")
    yield server
    if server.proc.poll() is None:
        server.kill()


@pytest.fixture(scope="module")
def redis_url(redis_server):
    return f"redis://127.0.0.1:{redis_server.port}/0"


def app_db(cluster, name: str) -> str:
    return f"{cluster.prefix}{name}"


def pg(cluster, dbname: str = "postgres"):
    server = cluster.server
    conn = psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password or None,
        dbname=dbname,
    )
    conn.autocommit = True
    return conn


def install_complete(application: Application) -> bool:
    spec = selectors.application_spec(application)
    runtime.register_alias(spec)
    try:
        if runtime.pending_migrations(spec):
            return False
        with using_app(spec.alias):
            from django.contrib.auth import get_user_model

            return (
                get_user_model()
                ._default_manager.db_manager(spec.alias)
                .filter(is_superuser=True)
                .exists()
            )
    finally:
        connections[spec.alias].close()


def detail(name: str, env: str) -> tuple[str, str]:
    connections["default"].close()
    d = Deployment.objects.get(application__name=name, environment__name=env)
    return d.status, d.error


def test_environment_killed_in_the_middle_of_an_install(cluster):
    application = create(cluster, "killed", ["env_a"])
    services.application_start(application=application, actor="test", wait=False)
    # Kill it once a few migrations are recorded, well before the last (about 40 ms each).
    wait_until(lambda: _applied(cluster, "killed") >= 3, timeout=60, what="the install to begin")
    cluster.procs["env_a"].kill()  # SIGKILL: its Celery and uvicorn children die with it
    spec = selectors.application_spec(application)
    runtime.register_alias(spec)
    total = runtime.pending_migrations(spec) + _applied(cluster, "killed")
    connections[spec.alias].close()
    applied_at_kill = _applied(cluster, "killed")
    assert applied_at_kill < total, "the install finished before the kill"
    started = time.monotonic()
    cluster.procs["env_a"].start()
    # The restarted environment says the start was cut short: an error with its reason...
    wait_until(lambda: detail("killed", "env_a")[0] == "error", timeout=60, what="the error")
    _, reason = detail("killed", "env_a")
    assert "interrupted" in reason, reason
    seen_error = time.monotonic() - started
    # ...then the app lock expires and the next start finishes the install correctly.
    services.application_start(
        application=Application.objects.get(name="killed"), actor="test", wait=False
    )
    wait_status("killed", {"env_a": "running"}, timeout=90)
    recovered = time.monotonic() - started
    assert install_complete(Application.objects.get(name="killed"))
    record(
        "SIGKILL of an environment in the middle of an install",
        f'`error` "{reason}" {seen_error:.0f} s after the environment is back (killed after '
        f"{applied_at_kill} of {total} migrations); the next start completes the install "
        "(migrations and superuser checked)",
        recovered,
    )


def _applied(cluster, app: str) -> int:
    """Migrations recorded in the app's database so far (0 before it exists)."""
    try:
        conn = pg(cluster, app_db(cluster, app))
    except psycopg2.OperationalError:
        return 0
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('django_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute("SELECT count(*) FROM django_migrations")
        return cur.fetchone()[0]


def test_redis_restarted_during_a_start_queue(cluster, redis_server):
    application = create(cluster, "queued", ["env_a", "env_b"])
    services.application_start(application=application, actor="test", wait=False)
    wait_until(
        lambda: statuses("queued")["env_a"] in ("preparing", "initializing", "initialized"),
        timeout=30,
        what="the first environment's install",
    )
    redis_server.kill()  # everything in Redis is gone: queued commands, cache, locks
    time.sleep(1)
    started = time.monotonic()
    redis_server.start()
    # A Celery worker can die while reconnecting (kombu's restore_unacked meets a closed
    # connection: AttributeError 'NoneType' object has no attribute 'hostname'). In
    # production its process manager starts it again (compose: restart: always); here the
    # test does, as soon as it sees the process gone.
    restarted = []

    def settled() -> bool:
        for name in ("jobs", "env_a", "env_b"):
            if cluster.procs[name].popen.poll() is not None:
                restarted.append(name)
                cluster.procs[name].start()
        return statuses("queued") == {"env_a": "running", "env_b": "running"}

    wait_until(settled, timeout=120, what="the start queue to complete after Redis came back")
    recovered = time.monotonic() - started
    from apps.adapters import transport

    wait_until(lambda: transport.config_read("queued"), timeout=30, what="config cache rebuilt")
    record(
        "Redis killed and restarted (empty) during a start queue",
        "the queue goes on: both environments `running`; the config cache is rebuilt by the "
        "periodic refresh"
        + (
            f" (Celery worker {', '.join(restarted)} died reconnecting, a kombu bug, and was "
            "started again as its process manager would)"
            if restarted
            else ""
        ),
        recovered,
    )


def test_job_worker_restarted_in_the_middle_of_a_queue(cluster):
    application = create(cluster, "jobless", ["env_a", "env_b"])
    services.application_start(application=application, actor="test", wait=False)
    wait_until(
        lambda: statuses("jobless")["env_a"] not in ("stopped", "commanding"),
        timeout=30,
        what="the queue to begin",
    )
    cluster.procs["jobs"].kill()
    time.sleep(2)
    started = time.monotonic()
    cluster.procs["jobs"].start()
    wait_status("jobless", {"env_a": "running", "env_b": "running"}, timeout=120)
    record(
        "The supervisor's job worker SIGKILLed in the middle of a start queue",
        "statuses stop moving while it is down; once it is back the queue completes",
        time.monotonic() - started,
    )


def test_postgresql_refusing_connections_to_a_worker(cluster):
    application = create(cluster, "refused", ["env_a"])
    services.application_start(application=application, actor="test")
    wait_status("refused", {"env_a": "running"})
    services.application_stop(application=application, actor="test")
    wait_status("refused", {"env_a": "stopped"})
    name = app_db(cluster, "refused")
    with pg(cluster) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
    try:
        services.application_start(application=application, actor="test", wait=False)
        wait_until(lambda: detail("refused", "env_a")[0] == "error", timeout=60, what="error")
        reason = detail("refused", "env_a")[1]
        # PostgreSQL's own words reach the operator, not just "cannot connect"
        assert "is not currently accepting connections" in reason, reason
    finally:
        with pg(cluster) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name))
            )
    started = time.monotonic()
    # No manual step: reconciliation retries a failed start after APP_START_RETRY_AFTER.
    wait_status("refused", {"env_a": "running"}, timeout=60)
    record(
        "PostgreSQL refuses an environment's connections to an app database",
        f'`error` "{first_line(reason, 240)}"; started again by itself once PostgreSQL '
        "accepts again",
        time.monotonic() - started,
    )


def test_a_command_that_outlives_its_time_limit_is_reported_failed(cluster):
    application = create(cluster, "slow", ["env_a"])
    services.application_start(application=application, actor="test")
    wait_status("slow", {"env_a": "running"})
    services.application_stop(application=application, actor="test")
    wait_status("slow", {"env_a": "stopped"})
    # A start that never ends: its install lock (a PostgreSQL advisory lock) is held here.
    key = provision.install_lock_key(selectors.application_spec(application).db)
    blocker = pg(cluster, app_db(cluster, "slow"))
    with blocker.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        started = time.monotonic()
        services.application_start(application=application, actor="test", wait=False)
        wait_until(
            lambda: detail("slow", "env_a")[0] == "error", timeout=TIME_LIMIT + 60, what="failure"
        )
        took = time.monotonic() - started
        reason = detail("slow", "env_a")[1]
    finally:
        blocker.close()  # the lock goes with the session
    assert "time limit" in reason or "no answer" in reason, reason
    assert took < TIME_LIMIT + 30
    services.application_start(application=application, actor="test")
    wait_status("slow", {"env_a": "running"}, timeout=60)
    record(
        "A command that outlives its time limit",
        f'`error` "{first_line(reason)}" after {took:.0f} s (limit {TIME_LIMIT} s); '
        "the next start works",
        time.monotonic() - started,
    )


def test_an_environment_that_returns_after_being_purged(cluster):
    application = create(cluster, "orphan", ["env_a", "env_b"])
    services.application_start(application=application, actor="test")
    wait_status("orphan", {"env_a": "running", "env_b": "running"})
    cluster.procs["env_b"].stop()  # clean stop: offline at once
    wait_until(
        lambda: Environment.objects.get(name="env_b").status == "offline", timeout=30, what="off"
    )
    assert services.environments_purge(older_than=0, names=["env_b"]) == ["env_b"]
    assert statuses("orphan") == {"env_a": "running"}
    started = time.monotonic()
    cluster.procs["env_b"].start()
    wait_until(
        lambda: Environment.objects.filter(name="env_b", status="online").exists(),
        timeout=60,
        what="env_b to register anew",
    )
    kinds = list(
        EnvironmentEvent.objects.filter(environment_name="env_b").values_list("kind", flat=True)
    )
    assert "purged" in kinds and kinds[0] == "registered"
    # It still hosts `orphan`, which is no longer deployed there: told to forget it (data kept).
    from apps.adapters import transport  # noqa: F401 - the cluster's Redis

    wait_until(
        lambda: "orphan" not in _hosted(cluster, "env_b"), timeout=60, what="env_b drops orphan"
    )
    assert statuses("orphan") == {"env_a": "running"}
    assert [c.new_status for c in history("orphan")]  # history of env_a kept
    record(
        "An environment that returns after being purged",
        "it registers anew (history: purged, then registered); apps no longer deployed there "
        "are stopped and forgotten on it, their databases kept",
        time.monotonic() - started,
    )


def _hosted(cluster, env: str) -> set[str]:
    import sqlite3

    path = cluster.tmp / env / "environment.sqlite3"  # the environment's own state
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM runtime_hostedapp")}
