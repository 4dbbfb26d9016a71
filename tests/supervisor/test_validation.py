"""Every Application field with bad values, through the real service (services.application_create).

Each refused input must raise ValidationError naming the field and must store nothing.
The suite runs once on SQLite and once on PostgreSQL; where the answer depends on the
supervisor's own database the test branches on connection.vendor (no skips).
"""

from __future__ import annotations

import re
import string

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from hypothesis import example, given
from hypothesis import strategies as st

from apps.runtime.spec import RESERVED_APP_NAMES, app_name_problem
from apps.supervisor import services
from apps.supervisor.models import Application, Deployment, Environment

pytestmark = pytest.mark.django_db

# A valid external PostgreSQL server, so db_* fields can be tested on both supervisor databases.
DB_HOST = "db.example.com"


@pytest.fixture(autouse=True)
def local_environment() -> Environment:
    return services.environment_ensure_local()


def stored() -> tuple[list[tuple], int, list[str]]:
    """Everything application_create can write, in a comparable form."""
    apps = list(
        Application.objects.order_by("pk").values_list(
            "pk", "name", "title", "custom_domain", "db_type", "db_host", "options"
        )
    )
    return apps, Deployment.objects.count(), list(Environment.objects.values_list("name"))


def create(**fields) -> Application:
    fields.setdefault("title", "A title")
    fields.setdefault("db_type", "sqlite")
    return services.application_create(**fields)


def assert_refused(field: str, **fields) -> ValidationError:
    """application_create(**fields) raises ValidationError on `field` and stores nothing."""
    before = stored()
    with pytest.raises(ValidationError) as caught:
        create(**fields)
    assert field in caught.value.message_dict, caught.value.message_dict
    assert all(caught.value.message_dict[field]), "every error has a message"
    assert stored() == before
    return caught.value


def test_a_valid_app_is_accepted_so_the_refusals_below_mean_something():
    application = create(
        name="shop_2",
        title="Shop",
        custom_domain="shop.example.com",
        options={
            "admin_username": "root",
            "admin_password": "a-long-password-1",
            "admin_email": "root@example.com",
            "description": "A shop.",
        },
    )
    application.refresh_from_db()
    assert application.name == "shop_2"
    assert application.custom_domain == "shop.example.com"
    assert [d.environment.name for d in application.deployments.all()] == ["local"]


# --- name --------------------------------------------------------------------------------
BAD_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("a" * 49, id="49-chars"),
    pytest.param("Shop", id="upper-case"),
    pytest.param("2shop", id="leading-digit"),
    pytest.param("_shop", id="leading-underscore"),
    pytest.param("my-shop", id="hyphen"),
    pytest.param("my shop", id="space"),
    pytest.param("shop\n", id="trailing-newline"),
    pytest.param("sh\u043ep", id="cyrillic-o-in-shop"),
    pytest.param("\u0430pp", id="cyrillic-a-in-app"),
    pytest.param("\uff53hop", id="fullwidth-s"),
    pytest.param("x; drop table", id="sql"),
    pytest.param("x'--", id="sql-quote"),
    pytest.param("..", id="dot-dot"),
    pytest.param("../x", id="path-traversal"),
    pytest.param("pg_shop", id="pg-prefix"),
    pytest.param("pg_", id="pg-prefix-only"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_app_name_is_refused(name):
    assert_refused("name", name=name)


@pytest.mark.parametrize("name", sorted(RESERVED_APP_NAMES))
def test_reserved_app_name_is_refused(name):
    error = assert_refused("name", name=name)
    assert "reserved" in " ".join(error.message_dict["name"])


def test_a_49_character_name_is_refused_but_48_is_accepted():
    assert_refused("name", name="a" * 49)
    assert create(name="a" * 48).name == "a" * 48


def test_duplicate_name_is_refused_and_the_original_row_is_unchanged():
    original = create(name="shop", title="The original", custom_domain="shop.example.com")
    before = stored()

    with pytest.raises(ValidationError) as caught:
        create(name="shop", title="An impostor", custom_domain="other.example.com")

    assert "name" in caught.value.message_dict
    assert stored() == before
    original.refresh_from_db()
    assert (original.title, original.custom_domain) == ("The original", "shop.example.com")


# --- title -------------------------------------------------------------------------------
@pytest.mark.parametrize("title", [pytest.param("", id="empty"), pytest.param("t" * 201, id="201")])
def test_bad_title_is_refused(title):
    assert_refused("title", name="shop", title=title)


def test_title_of_only_white_space_is_refused():
    assert_refused("title", name="shop", title="   ")


# --- custom_domain -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "domain",
    [
        pytest.param("not a host", id="spaces"),
        pytest.param("shop", id="no-dot"),
        pytest.param("Shop.Example.com", id="upper-case-not-normalised-by-the-service"),
        pytest.param("shop..example.com", id="empty-label"),
        pytest.param("-shop.example.com", id="leading-hyphen"),
        pytest.param("http://shop.example.com", id="url"),
        pytest.param("shop.example.com/path", id="path"),
        pytest.param("shop.example.com:8000", id="port"),
        pytest.param(("a" * 64) + ".example.com", id="64-char-label"),
    ],
)
def test_bad_custom_domain_is_refused(domain):
    assert_refused("custom_domain", name="shop", custom_domain=domain)


def test_custom_domain_of_another_app_is_refused():
    create(name="first", custom_domain="shop.example.com")
    assert_refused("custom_domain", name="second", custom_domain="shop.example.com")


def test_empty_custom_domain_is_stored_as_null_so_many_apps_can_have_none():
    create(name="first", custom_domain="")
    create(name="second", custom_domain="")
    assert list(Application.objects.values_list("custom_domain", flat=True)) == [None, None]


# --- database ----------------------------------------------------------------------------
@pytest.mark.parametrize("db_type", ["mysql", "SQLITE", "", "new-database"])
def test_db_type_not_in_the_choices_is_refused(db_type):
    assert_refused("db_type", name="shop", db_type=db_type)


@pytest.mark.parametrize("db_type", ["new_database", "new_schema"])
def test_postgres_db_types_without_a_host_depend_on_the_supervisor_database(db_type):
    """On SQLite there is no PostgreSQL server to put them on; on PostgreSQL there is."""
    if connection.vendor == "postgresql":
        application = create(name="shop", db_type=db_type)
        application.refresh_from_db()
        assert application.db_type == db_type
        assert application.db_host == ""
    else:
        error = assert_refused("db_type", name="shop", db_type=db_type)
        assert "DB_DIALECT=postgres" in " ".join(error.message_dict["db_type"])


@pytest.mark.parametrize("db_type", ["new_database", "new_schema"])
def test_postgres_db_types_with_a_host_are_accepted_on_any_supervisor_database(db_type):
    application = create(name="shop", db_type=db_type, db_host=DB_HOST, db_port=5433)
    application.refresh_from_db()
    assert (application.db_type, application.db_host, application.db_port) == (
        db_type,
        DB_HOST,
        5433,
    )


@pytest.mark.parametrize(
    "server",
    [
        pytest.param({"db_host": DB_HOST}, id="host"),
        pytest.param({"db_user": "bob"}, id="user"),
        pytest.param({"db_port": 5432}, id="port"),
    ],
)
def test_sqlite_app_with_a_database_server_is_refused(server):
    assert_refused("db_host", name="shop", db_type="sqlite", **server)


@pytest.mark.parametrize("db_type", ["sqlite", "new_database"])
def test_db_database_with_a_type_other_than_new_schema_is_refused(db_type):
    host = {} if db_type == "sqlite" else {"db_host": DB_HOST}
    assert_refused("db_database", name="shop", db_type=db_type, db_database="shared", **host)


@pytest.mark.parametrize("db_database", ["Shared", "shared-db", "1shared", "a b"])
def test_bad_db_database_of_a_new_schema_app_is_refused(db_database):
    assert_refused(
        "db_database", name="shop", db_type="new_schema", db_host=DB_HOST, db_database=db_database
    )


def test_new_schema_app_in_a_postgres_template_database_is_refused():
    assert_refused(
        "db_database", name="shop", db_type="new_schema", db_host=DB_HOST, db_database="template1"
    )


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_db_port_outside_1_to_65535_is_refused(port):
    assert_refused("db_port", name="shop", db_type="new_database", db_host=DB_HOST, db_port=port)


@pytest.mark.parametrize(
    "host", ["db host", "db/host", "db.example.com/x", "db;drop", " ", "db\nhost"]
)
def test_bad_db_host_is_refused(host):
    assert_refused("db_host", name="shop", db_type="new_database", db_host=host)


# --- options -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        pytest.param(["admin"], "object", id="list"),
        pytest.param("admin", "object", id="string"),
        pytest.param(42, "object", id="number"),
        pytest.param({"colour": "red"}, "colour", id="unknown-key"),
        pytest.param({"admin_password": "short"}, "admin_password", id="short-password"),
        pytest.param({"admin_password": 1234567890123}, "admin_password", id="password-not-str"),
        pytest.param({"admin_username": "the boss"}, "admin_username", id="username-spaces"),
        pytest.param({"admin_username": ""}, "admin_username", id="username-empty"),
        pytest.param({"admin_email": "not-an-email"}, "admin_email", id="bad-email"),
        pytest.param({"description": "d" * 2001}, "description", id="description-too-long"),
    ],
)
def test_options_failing_the_schema_are_refused(options, fragment):
    error = assert_refused("options", name="shop", options=options)
    assert fragment in " ".join(error.message_dict["options"])


@pytest.mark.parametrize("options", [pytest.param([], id="empty-list"), pytest.param("", id="str")])
def test_empty_options_that_are_not_an_object_are_refused(options):
    assert_refused("options", name="shop", options=options)


def test_admin_username_with_a_trailing_newline_is_refused():
    assert_refused("options", name="shop", options={"admin_username": "root\n"})


# --- environments ------------------------------------------------------------------------
def test_unknown_environment_is_refused():
    error = assert_refused("environments", name="shop", environments=["local", "mars"])
    assert "mars" in " ".join(error.message_dict["environments"])


def test_empty_environment_list_is_refused():
    assert_refused("environments", name="shop", environments=[])


# --- names, for any text -----------------------------------------------------------------
_ALLOWED_FIRST = set(string.ascii_lowercase)
_ALLOWED_REST = set(string.ascii_lowercase + string.digits + "_")
PG_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*")
LONGEST_PREFIX = "p" * 15  # checks.py allows APP_DB_PREFIX of up to 15 characters


def acceptable(name: str) -> bool:
    """The rule, written without the product's regex: ^[a-z][a-z0-9_]{0,47}$, not reserved."""
    return (
        1 <= len(name) <= 48
        and name[0] in _ALLOWED_FIRST
        and set(name) <= _ALLOWED_REST
        and name not in RESERVED_APP_NAMES
        and not name.startswith("pg_")
    )


@given(
    st.text(max_size=60)
    | st.from_regex(r"[a-z][a-z0-9_]{0,52}", fullmatch=True)
    | st.sampled_from(sorted(RESERVED_APP_NAMES))
    | st.from_regex(r"pg_[a-z0-9_]{0,10}", fullmatch=True)
)
@example("a" * 48)
@example("a" * 49)
@example("shop\n")
@example("sh\u043ep")
@example("\u0131")  # dotless i: lower-case, but not ASCII
@example("K")  # Kelvin sign, which case-insensitive matching folds to k
def test_app_name_problem_is_none_exactly_for_safe_identifiers(name):
    problem = app_name_problem(name)

    assert (problem is None) == acceptable(name), (name, problem)
    if problem is None:
        for prefix in ("app_", LONGEST_PREFIX):
            identifier = prefix + name
            assert PG_IDENTIFIER.fullmatch(identifier)
            assert len(identifier.encode()) <= 63
    else:
        assert isinstance(problem, str) and problem
