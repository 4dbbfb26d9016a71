"""Create and drop sub-application databases.

Identifiers are validated (spec.APP_NAME_RE shapes every name we build) and then quoted with
psycopg2.sql.Identifier: nothing from an operator is ever interpolated into SQL text.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import errors as pg_errors
from psycopg2 import sql

from apps.runtime.spec import AppSpec, DbServer, DbSpec

log = logging.getLogger(__name__)

_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ProvisionError(RuntimeError):
    """The app's database could not be created, reached or dropped."""


def _checked_identifier(value: str) -> sql.Identifier:
    if not _IDENT_RE.fullmatch(value):
        raise ProvisionError(f"refusing unsafe database identifier {value!r}")
    return sql.Identifier(value)


def django_settings(spec: AppSpec) -> dict[str, Any]:
    """The Django DATABASES entry for an app (defaults not filled in)."""
    db = spec.db
    if db.type == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": db.name,
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    server = _server(db)
    options: dict[str, Any] = {"connect_timeout": 5}
    if db.type == "new_schema":
        _checked_identifier(db.schema)
        options["options"] = f"-c search_path={db.schema}"
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": db.name,
        "HOST": server.host,
        "PORT": str(server.port),
        "USER": server.user,
        "PASSWORD": server.password,
        "OPTIONS": options,
        # Connections close at the end of each request: 200 apps must not hold 200 sockets.
        "CONN_MAX_AGE": 0,
    }


def _server(db: DbSpec) -> DbServer:
    if db.server is None:
        raise ProvisionError(f"{db.type} needs a PostgreSQL server and none was given")
    return db.server


@contextmanager
def _pg(server: DbServer, dbname: str) -> Iterator[Any]:
    try:
        conn = psycopg2.connect(
            host=server.host,
            port=server.port,
            user=server.user,
            password=server.password,
            dbname=dbname,
            connect_timeout=5,
        )
    except psycopg2.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProvisionError(
            f"cannot connect to PostgreSQL {server.host}:{server.port}/{dbname}: {first}"
        ) from exc
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        yield conn
    finally:
        conn.close()


def _ensure_database(server: DbServer, name: str, template: str | None = None) -> bool:
    """Create database `name` unless it exists; True when this call created it."""
    ident = _checked_identifier(name)
    with _pg(server, server.maintenance_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cur.fetchone():
            return False
        statement = sql.SQL("CREATE DATABASE {}").format(ident)
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(_checked_identifier(template))
        try:
            cur.execute(statement)
        except (pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
            return False  # created concurrently by another process: fine
        return True


def server_has_database(server: DbServer, name: str) -> bool:
    with _pg(server, server.maintenance_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        return cur.fetchone() is not None


@contextmanager
def server_lock(server: DbServer, name: str) -> Iterator[None]:
    """An advisory lock named `name` on the server (its maintenance database)."""
    key = _lock_key(f"server:{name}")
    with _pg(server, server.maintenance_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", [key])
        try:
            yield
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", [key])


def template_prepare(server: DbServer, name: str) -> str:
    """A fresh, empty database to migrate into before template_publish names it `name`."""
    building = f"{name[:54]}_building"
    ident = _checked_identifier(building)
    with _pg(server, server.maintenance_db) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    return building


def template_publish(server: DbServer, building: str, name: str) -> None:
    """Rename a completely migrated database to the template's name and close it to
    connections (a clone needs no session on its template). Only a finished build ever has
    the template's name, so a crash mid-build leaves nothing that looks usable."""
    with _pg(server, server.maintenance_db) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                _checked_identifier(building), _checked_identifier(name)
            )
        )
        cur.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(_checked_identifier(name))
        )


def provision(spec: AppSpec, template: str | None = None) -> bool:
    """Make sure the app's database exists; True when it was created now (as a copy of
    `template`, a migrated database, when one is given: new_database only)."""
    db = spec.db
    if db.type == "sqlite":
        path = Path(db.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return not path.exists()
    server = _server(db)
    if db.type == "new_database":
        return _ensure_database(server, db.name, template)
    # new_schema: a schema inside a shared database.
    _ensure_database(server, db.name)
    with _pg(server, db.name) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [db.schema])
        if cur.fetchone():
            return False
        try:
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(_checked_identifier(db.schema)))
        except (pg_errors.DuplicateSchema, pg_errors.UniqueViolation):
            return False
        return True


def drop(spec: AppSpec) -> None:
    """Drop the app's database, schema or file. Irreversible: callers confirm first."""
    db = spec.db
    if db.type == "sqlite":
        for suffix in ("", "-wal", "-shm", ".lock"):
            with suppress(FileNotFoundError):
                os.unlink(db.name + suffix)
        return
    server = _server(db)
    if db.type == "new_database":
        with _pg(server, server.maintenance_db) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    _checked_identifier(db.name)
                )
            )
        return
    with _pg(server, db.name) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(_checked_identifier(db.schema))
        )


def database_exists(spec: AppSpec) -> bool:
    db = spec.db
    if db.type == "sqlite":
        return Path(db.name).exists()
    server = _server(db)
    found = server_has_database(server, db.name)
    if not found or db.type == "new_database":
        return found
    with _pg(server, db.name) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [db.schema])
        return cur.fetchone() is not None


def install_lock_key(db: DbSpec) -> int:
    """The PostgreSQL advisory lock key of one app's install (64-bit, from its names)."""
    return _lock_key(f"app-install:{db.name}:{db.schema}")


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def install_lock(spec: AppSpec) -> Iterator[None]:
    """Serialise install/upgrade of one app across every process that can reach its database.

    SQLite: an flock on a file beside the database. PostgreSQL: a session advisory lock held
    on its own connection to the app's (containing) database, released when it closes, so a
    crashed holder never leaves it locked.
    """
    db = spec.db
    if db.type == "sqlite":
        path = Path(db.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    key = install_lock_key(db)
    with _pg(_server(db), db.name) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", [key])
        try:
            yield
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", [key])
