"""Provisioning, install and upgrade of sub-app databases, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connections

from apps.runtime import provision, runtime
from apps.runtime.routing import using_app
from apps.supervisor import selectors, services
from tests.factories import make_app

pytestmark = pytest.mark.django_db(transaction=True)


def _server_fields(pg_server) -> dict:
    return {
        "db_host": pg_server.host,
        "db_port": pg_server.port,
        "db_user": pg_server.user,
        "db_password": pg_server.password,
    }


def _superusers(spec) -> list[str]:
    with using_app(spec.alias):
        users = get_user_model()._default_manager.db_manager(spec.alias)
        names = list(users.filter(is_superuser=True).values_list("username", flat=True))
    connections[spec.alias].close()
    return names


def _start(application):
    outcome = services.application_start(application=application, actor="test")
    assert outcome.ok, outcome.failed
    return outcome


def test_sqlite_app_gets_its_own_file_with_tenant_tables_only():
    app = make_app("shop")
    outcome = _start(app)
    spec = selectors.application_spec(app)
    assert Path(spec.db.name).parent == Path(selectors.settings.APP_SQLITE_DIR)
    assert Path(spec.db.name).exists()
    tables = connections[spec.alias].introspection.table_names()
    connections[spec.alias].close()
    assert "notes_note" in tables and "auth_user" in tables
    assert not any(t.startswith("supervisor_") for t in tables)
    assert outcome.install.installed and _superusers(spec) == ["admin"]


@pytest.mark.parametrize("db_type", ["new_database", "new_schema"])
def test_postgres_app_on_a_separate_server(db_type, pg_server):
    app = make_app(
        f"pg_{db_type[4:]}_x".replace("pg_", "sep_"), db_type=db_type, **_server_fields(pg_server)
    )
    _start(app)
    spec = selectors.application_spec(app)
    assert provision.database_exists(spec)
    assert spec.db.name.startswith(selectors.settings.APP_DB_PREFIX) or db_type == "new_schema"
    if db_type == "new_schema":
        assert spec.db.schema == selectors.settings.APP_DB_PREFIX + app.name
        with connections[spec.alias].cursor() as cursor:
            cursor.execute("SELECT current_schema()")
            assert cursor.fetchone()[0] == spec.db.schema
        connections[spec.alias].close()
    assert _superusers(spec) == ["admin"]


def test_new_database_on_the_supervisor_server_when_it_runs_on_postgres(on_postgres):
    if not on_postgres:
        with pytest.raises(services.ValidationError, match="DB_DIALECT=postgres"):
            make_app("nodb", db_type="new_database")
        return
    app = make_app("samesrv", db_type="new_database")
    _start(app)
    spec = selectors.application_spec(app)
    assert spec.db.server.host == connections["default"].settings_dict["HOST"]
    assert provision.database_exists(spec)


def test_second_start_upgrades_pending_migrations_and_keeps_users_and_data():
    app = make_app("shop", options={"admin_username": "owner", "admin_password": "owner-pass-123"})
    first = _start(app)
    assert first.install.installed and first.install.admin_password == ""  # set via options
    spec = selectors.application_spec(app)
    with using_app(spec.alias):
        get_user_model()._default_manager.db_manager(spec.alias).create_user("clerk", password="x")
    # Simulate a code upgrade: the notes module's migration is not applied yet.
    call_command("migrate", "notes", "zero", database=spec.alias, verbosity=0)
    connections[spec.alias].close()
    assert runtime.pending_migrations(spec) == 1
    services.application_stop(application=app, actor="test")
    second = _start(app)
    assert second.install is None  # no new superuser, no password shown
    assert runtime.pending_migrations(spec) == 0
    assert sorted(_superusers(spec)) == ["owner"]
    with using_app(spec.alias):
        assert (
            get_user_model()
            ._default_manager.db_manager(spec.alias)
            .filter(username="clerk")
            .exists()
        )
    connections[spec.alias].close()
    history = [c.reason for c in selectors.application_history(app)]
    assert any("upgrading: 1 migrations" in r for r in history)
    assert any("installing:" in r for r in history)


@pytest.mark.parametrize("db_type", ["sqlite", "new_database"])
def test_concurrent_installs_of_one_app_create_one_superuser(db_type, pg_server):
    fields = {} if db_type == "sqlite" else _server_fields(pg_server)
    app = make_app("racy", db_type=db_type, **fields)
    spec = selectors.application_spec(app)
    provision.provision(spec)
    results, errors = [], []
    barrier = threading.Barrier(4)

    def install():
        try:
            barrier.wait()
            results.append(runtime.install_or_upgrade(spec, lambda s, d: None))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=install) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(r.installed for r in results) == 1
    assert len(_superusers(spec)) == 1


def test_start_of_an_unreachable_server_reports_error_with_the_reason():
    app = make_app("lost", db_type="new_database", db_host="127.0.0.1", db_port=1)
    outcome = services.application_start(application=app, actor="test")
    assert not outcome.ok
    assert "cannot connect to PostgreSQL 127.0.0.1:1" in outcome.failed["local"]
    app = selectors.application_list_with_status().get(name="lost")
    assert selectors.application_statuses(app) == {"local": "error"}
    assert app.deployments.get().error.startswith("cannot connect")


def test_delete_keeps_or_drops_the_database_as_asked(pg_server):
    kept = make_app("kept", db_type="new_database", **_server_fields(pg_server))
    dropped = make_app("gone", db_type="new_database", **_server_fields(pg_server))
    _start(kept)
    _start(dropped)
    kept_spec, dropped_spec = selectors.application_spec(kept), selectors.application_spec(dropped)
    services.application_delete(application=kept, drop_database=False, actor="test")
    services.application_delete(application=dropped, drop_database=True, actor="test")
    assert provision.database_exists(kept_spec)
    assert not provision.database_exists(dropped_spec)
    provision.drop(kept_spec)


@pytest.mark.parametrize("bad", ['x"; DROP DATABASE postgres; --', "UPPER", "a b", "", "x" * 64])
def test_unsafe_identifiers_never_reach_sql(bad):
    with pytest.raises(provision.ProvisionError, match="unsafe"):
        provision._checked_identifier(bad)


@pytest.mark.postgres
def test_new_databases_are_copies_of_a_template_kept_per_migration_state(pg_server, settings):
    """A new PostgreSQL app is a copy of a migrated template; when TENANT_APPS gain a
    migration, a new template is built and new apps get it too."""
    fields = _server_fields(pg_server)
    runtime._migration_digest = None
    first = make_app("tpl_one", db_type="new_database", **fields)
    outcome = _start(first)
    spec = selectors.application_spec(first)
    template = f"{settings.APP_DB_PREFIX}_template_{runtime._migration_state()}"
    assert provision.server_has_database(spec.db.server, template)
    assert outcome.install.installed and _superusers(spec) == ["admin"]
    assert runtime.pending_migrations(spec) == 0
    connections[spec.alias].close()
    reasons = [c.reason for c in selectors.application_history(first)]
    assert any(r.startswith("installing: copied the migrated template") for r in reasons)
    assert not any(r.startswith("migrating ") for r in reasons)  # no migrate from scratch

    settings.MIGRATION_MODULES = {"notes": "tests.runtime.notes_migrations_v2"}
    runtime._migration_digest = None
    try:
        second = make_app("tpl_two", db_type="new_database", **fields)
        _start(second)
        spec2 = selectors.application_spec(second)
        newer = f"{settings.APP_DB_PREFIX}_template_{runtime._migration_state()}"
        assert newer != template and provision.server_has_database(spec2.db.server, newer)
        assert runtime.pending_migrations(spec2) == 0
        with connections[spec2.alias].cursor() as cursor:
            columns = [
                c.name
                for c in connections[spec2.alias].introspection.get_table_description(
                    cursor, "notes_note"
                )
            ]
        connections[spec2.alias].close()
        assert "colour" in columns
        # The first app, copied from the older template, is upgraded in place at its start.
        services.application_stop(application=first, actor="test")
        _start(first)
        assert runtime.pending_migrations(spec) == 0
        connections[spec.alias].close()
    finally:
        runtime._migration_digest = None
