"""Bad input to the API: a 4xx with a JSON error, and nothing stored changes.

Every case runs as a user holding every application permission, so what refuses the request
is the input and nothing else.
"""

from __future__ import annotations

import json

import pytest

from apps.api.views import MAX_BODY_BYTES
from apps.supervisor import services
from tests.api.conftest import ALL, call, snapshot, staff, token_for
from tests.factories import make_app

APPS = "/api/v1/apps/"
GOOD = {"name": "crm", "title": "CRM", "db_type": "sqlite", "environments": ["local"]}


def good(**changes):
    body = {**GOOD, **changes}
    return {k: v for k, v in body.items() if v is not ...}


def raw(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode()


# (case id, body: a dict sent as JSON or bytes sent as they are, expected status, field with
# an error or None)
CREATE_CASES = [
    # not JSON, or not an object
    ("empty object", {}, 400, "name"),
    ("truncated JSON", raw('{"name": "crm", "title": '), 400, None),
    ("trailing garbage", raw('{"name": "crm", "title": "CRM"} x'), 400, None),
    ("array", raw('[{"name": "crm", "title": "CRM"}]'), 400, None),
    ("string", raw('"crm"'), 400, None),
    ("null", raw("null"), 400, None),
    ("NaN", raw('{"name": "crm", "title": "CRM", "db_port": NaN}'), 400, None),
    ("duplicate key", raw('{"name": "crm", "name": "other", "title": "CRM"}'), 400, None),
    ("invalid UTF-8", b'{"name": "crm", "title": "\xff\xfe"}', 400, None),
    ("lone surrogate", raw('{"name": "crm", "title": "\\ud800"}'), 400, None),
    ("NUL in a string", raw('{"name": "crm", "title": "a\\u0000b"}'), 400, None),
    ("NUL in options", good(options={"description": "a\x00b"}), 400, None),
    ("deep nesting", raw('{"options": ' + "[" * 5000 + "]" * 5000 + "}"), 400, None),
    (
        "huge integer",
        raw('{"name": "crm", "title": "CRM", "db_port": ' + "9" * 5000 + "}"),
        400,
        None,
    ),
    # wrong types
    ("name is a number", good(name=123), 400, "name"),
    ("name is a list", good(name=["crm"]), 400, "name"),
    ("title is null", good(title=None), 400, "title"),
    ("title missing", good(title=...), 400, "title"),
    ("pinned is a string", good(pinned="yes"), 400, "pinned"),
    ("pinned is 1", good(pinned=1), 400, "pinned"),
    ("port is a string", good(db_port="5432"), 400, "db_port"),
    ("port is a bool", good(db_port=True), 400, "db_port"),
    ("port is a float", good(db_port=5432.0), 400, "db_port"),
    ("environments is a string", good(environments="local"), 400, "environments"),
    ("environments holds a number", good(environments=[1]), 400, "environments"),
    ("options is a list", good(options=[]), 400, "options"),
    ("options is a string", good(options="{}"), 400, "options"),
    # unknown fields
    ("unknown field", good(nope=1), 400, "nope"),
    ("read-only field", good(pending_admin_password="x"), 400, "pending_admin_password"),
    ("id", good(id=5), 400, "id"),
    # name rules
    ("upper case", good(name="Shop"), 400, "name"),
    ("too long", good(name="a" * 49), 400, "name"),
    ("empty", good(name=""), 400, "name"),
    ("dot dot", good(name=".."), 400, "name"),
    ("path", good(name="../etc"), 400, "name"),
    ("slash", good(name="shop/admin"), 400, "name"),
    ("space", good(name="my shop"), 400, "name"),
    ("leading digit", good(name="1shop"), 400, "name"),
    ("trailing newline", good(name="shop\n"), 400, "name"),
    ("cyrillic o look-alike", good(name="sh\u043ep"), 400, "name"),
    ("fullwidth letters", good(name="\uff53\uff48\uff4f\uff50"), 400, "name"),
    ("kelvin sign", good(name="\u212aiosk"), 400, "name"),
    ("dotless i", good(name="sh\u0131p"), 400, "name"),
    ("SQL", good(name="x'; DROP TABLE supervisor_application; --"), 400, "name"),
    ("SQL quote", good(name='x" OR 1=1 --'), 400, "name"),
    ("reserved", good(name="main"), 400, "name"),
    ("reserved api", good(name="api"), 400, "name"),
    ("pg prefix", good(name="pg_shop"), 400, "name"),
    # values the model refuses
    ("blank title", good(title="   "), 400, "title"),
    ("long title", good(title="t" * 201), 400, "title"),
    ("bad db_type", good(db_type="mysql"), 400, "db_type"),
    ("bad start_mode", good(start_mode="sometimes"), 400, "start_mode"),
    ("no environments", good(environments=[]), 400, "environments"),
    ("unknown environment", good(environments=["nowhere"]), 400, "environments"),
    ("one unknown environment", good(environments=["local", "nowhere"]), 400, "environments"),
    ("bad option", good(options={"nope": 1}), 400, "options"),
    ("short admin password", good(options={"admin_password": "short"}), 400, "options"),
    ("bad domain", good(custom_domain="Not A Domain"), 400, "custom_domain"),
    ("port out of range", good(db_host="db.example.com", db_port=70000), 400, "db_port"),
    ("server for sqlite", good(db_host="db.example.com"), 400, "db_host"),
    ("bad db host", good(db_type="new_database", db_host="h;rm -rf"), 400, "db_host"),
    ("taken name", good(name="taken"), 400, "name"),
    # size
    ("huge body", raw('{"name": "crm", "title": "' + "x" * MAX_BODY_BYTES + '"}'), 413, None),
]


@pytest.fixture
def admin_token(db):
    services.environment_ensure_local()
    make_app("taken")
    return token_for(staff("ops", *ALL))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "status", "field"),
    [pytest.param(b, s, f, id=i) for i, b, s, f in CREATE_CASES],
)
def test_bad_create_input_is_refused_and_nothing_changes(client, admin_token, body, status, field):
    before = snapshot()
    if isinstance(body, bytes):
        response = call(client, "POST", APPS, admin_token, raw=body)
    else:
        response = call(client, "POST", APPS, admin_token, body)
    assert response.status_code == status, response.content[:500]
    answer = response.json()
    assert answer["error"]
    if field is not None:
        assert field in answer["errors"], answer
    assert snapshot() == before


@pytest.mark.django_db
def test_the_good_body_of_the_table_is_accepted(client, admin_token):
    """The cases above differ from this one only by what makes them bad."""
    response = call(client, "POST", APPS, admin_token, GOOD)
    assert response.status_code == 201, response.content


@pytest.mark.django_db
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_a_body_that_is_not_json_is_415(client, admin_token, content_type):
    before = snapshot()
    response = call(
        client, "POST", APPS, admin_token, raw=json.dumps(GOOD).encode(), content_type=content_type
    )
    assert response.status_code == 415
    assert snapshot() == before


@pytest.mark.django_db
def test_a_declared_huge_body_is_413_before_anything_else(client):
    response = client.generic(
        "POST", APPS, data=b"{}", content_type="application/json", CONTENT_LENGTH="10000000"
    )
    assert response.status_code == 413


# Requests to the other endpoints: (method, url, body) -> status
OTHER_CASES = [
    ("start with a field", "POST", f"{APPS}taken/start", {"wait": True}, 400),
    ("start with a query", "POST", f"{APPS}taken/start?now=1", None, 400),
    ("start with bad JSON", "POST", f"{APPS}taken/start", raw("{"), 400),
    ("stop with an array", "POST", f"{APPS}taken/stop", raw("[]"), 400),
    ("delete with a body", "DELETE", f"{APPS}taken/", {"drop_database": True}, 400),
    ("drop_database=yes", "DELETE", f"{APPS}taken/?drop_database=yes", None, 400),
    ("drop_database=1", "DELETE", f"{APPS}taken/?drop_database=1", None, 400),
    ("drop_database=True", "DELETE", f"{APPS}taken/?drop_database=True", None, 400),
    (
        "drop_database twice",
        "DELETE",
        f"{APPS}taken/?drop_database=false&drop_database=true",
        None,
        400,
    ),
    ("delete with unknown query", "DELETE", f"{APPS}taken/?force=1", None, 400),
    ("list page 0", "GET", f"{APPS}?page=0", None, 400),
    ("list page -1", "GET", f"{APPS}?page=-1", None, 400),
    ("list page text", "GET", f"{APPS}?page=two", None, 400),
    ("list page unicode digit", "GET", f"{APPS}?page=%D9%A1", None, 400),
    ("list page_size too big", "GET", f"{APPS}?page_size=1000", None, 400),
    ("list unknown query", "GET", f"{APPS}?status=running", None, 400),
    ("detail with a query", "GET", f"{APPS}taken/?x=1", None, 400),
    ("create with a query", "POST", f"{APPS}?x=1", GOOD, 400),
    ("huge start body", "POST", f"{APPS}taken/start", raw(" " * (MAX_BODY_BYTES + 1)), 413),
]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "url", "body", "status"),
    [pytest.param(m, u, b, s, id=i) for i, m, u, b, s in OTHER_CASES],
)
def test_bad_input_to_other_endpoints_is_refused(client, admin_token, method, url, body, status):
    before = snapshot()
    if isinstance(body, bytes):
        response = call(client, method, url, admin_token, raw=body)
    else:
        response = call(client, method, url, admin_token, body)
    assert response.status_code == status, response.content[:500]
    assert response.json()["error"]
    assert snapshot() == before
