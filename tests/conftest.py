"""Suite-wide fixtures: real PostgreSQL (machine's or private), per-run names, helpers.

No test skips because a service is missing: it fails and says how to start it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql
from pytest_postgresql import factories
from pytest_redis import factories as redis_factories

from apps.runtime.spec import DbServer
from tests.services import PG_START_HINT, REDIS_START_HINT, answers, machine_pg, pg_ctl

# A private server, started only when the machine's does not answer (see pg_server).
postgresql_private = factories.postgresql_proc(executable=pg_ctl() or "pg_ctl", port=None)
# Likewise a private Redis, only when the machine's does not answer (see redis_url).
redis_private = redis_factories.redis_proc(
    executable=shutil.which("redis-server") or "/usr/bin/redis-server", port=None
)

RUN_ID = f"t{os.getpid()}"


def _allow_sub_app_connections() -> None:
    """Let tests connect to sub-app databases.

    Django's test cases refuse connections to configured aliases a test did not declare. The
    runtime configures an `app__<name>` alias when it starts an app, during the test, so no
    test can declare it in advance; each one is a separate database (file, database or schema
    of this run), so the guard's purpose, isolation of the declared databases, is kept.
    """
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.test.testcases import SimpleTestCase

    from apps.runtime.routing import APP_ALIAS_PREFIX

    original = SimpleTestCase.ensure_connection_patch_method.__func__

    def ensure_connection_patch_method(cls):
        guarded = original(cls)
        real = BaseDatabaseWrapper.ensure_connection

        def ensure_connection(self, *args, **kwargs):
            if self.alias.startswith(APP_ALIAS_PREFIX):
                return real(self, *args, **kwargs)
            return guarded(self, *args, **kwargs)

        return ensure_connection

    SimpleTestCase.ensure_connection_patch_method = classmethod(ensure_connection_patch_method)


_allow_sub_app_connections()


@pytest.fixture(scope="session")
def pg_server(request) -> DbServer:
    """A PostgreSQL server for sub-app databases and the supervisor's PostgreSQL runs."""
    host, port = machine_pg()
    if answers(host, port):
        return DbServer(host=host, port=port, user=os.environ.get("DB_USER", "postgres"))
    if pg_ctl() is None:
        pytest.fail(f"PostgreSQL is not answering on {host}:{port}; {PG_START_HINT}")
    proc = request.getfixturevalue("postgresql_private")
    return DbServer(host=proc.host, port=proc.port, user=proc.user, password=proc.password or "")


@pytest.fixture(scope="session")
def redis_url(request) -> str:
    """A Redis database for this run: the machine's (its own db number), or a private one."""
    if answers("127.0.0.1", 6379):
        return f"redis://127.0.0.1:6379/{1 + os.getpid() % 15}"
    if shutil.which("redis-server") is None:
        pytest.fail(f"Redis is not answering on 127.0.0.1:6379; {REDIS_START_HINT}")
    proc = request.getfixturevalue("redis_private")
    return f"redis://{proc.host}:{proc.port}/0"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(request, django_db_modify_db_settings_parallel_suffix):
    """Point a PostgreSQL run at the server pg_server found (machine's or private)."""
    from django.db import connections

    current = connections.settings["default"]
    if current["ENGINE"].endswith("sqlite3"):
        # A file with WAL, as in production: the in-memory shared-cache database Django uses
        # by default takes table locks that ignore the busy timeout, so the background start
        # threads and the test thread would fail with "table is locked".
        folder = Path(tempfile.mkdtemp(prefix="appsup-testdb-"))
        current.setdefault("TEST", {})["NAME"] = str(folder / "supervisor.sqlite3")
    if current["ENGINE"].endswith("postgresql"):
        server = request.getfixturevalue("pg_server")
        current.update(
            HOST=server.host, PORT=str(server.port), USER=server.user, PASSWORD=server.password
        )
        # Per run, so two suites on one machine (a developer and CI) never drop each other's.
        current.setdefault("TEST", {})["NAME"] = f"test_{RUN_ID}_supervisor"


@pytest.fixture(scope="session", autouse=True)
def _per_run_names(pg_server):
    """Sub-app databases, schemas and files of this run never collide with real ones."""
    from django.conf import settings

    storage = Path(tempfile.mkdtemp(prefix="appsup-test-"))
    settings.APP_DB_PREFIX = f"{RUN_ID}_"
    settings.APP_SCHEMA_DATABASE = f"{RUN_ID}_schemas"
    settings.APP_SQLITE_DIR = storage / "apps"
    yield
    _drop_run_databases(pg_server)


def _drop_run_databases(server: DbServer) -> None:
    conn = psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        dbname="postgres",
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{RUN_ID}\\_%"])
        for (name,) in cur.fetchall():
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    conn.close()


_test_counter = iter(range(1, 10**6))


@pytest.fixture(autouse=True)
def _fresh_runtime(tmp_path):
    """Each test starts like a new process: no app served, no sub-app alias configured, and
    its own names for sub-app databases and files (the supervisor DB is reset between tests;
    app databases would otherwise outlive it)."""
    from django.conf import settings

    from apps.gateway import routing
    from apps.runtime import runtime

    settings.APP_DB_PREFIX = f"{RUN_ID}_{next(_test_counter)}_"
    settings.APP_SQLITE_DIR = tmp_path / "apps"
    runtime.stop_all()
    routing._routes.clear()
    yield
    runtime.stop_all()
    routing._routes.clear()


@pytest.fixture
def on_postgres() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"
