"""`manage.py api_token create|list|revoke`: the token is printed once, only its digest kept."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from apps.api.models import ApiToken
from apps.api.services import token_digest
from tests.api.conftest import VIEW, call, staff


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def refused(*args: str) -> str:
    before = list(ApiToken.objects.values_list("pk", "digest"))
    with pytest.raises(CommandError) as caught:
        run(*args)
    assert "\n" not in str(caught.value)
    assert list(ApiToken.objects.values_list("pk", "digest")) == before
    return str(caught.value)


@pytest.mark.django_db
def test_create_prints_the_token_once_and_stores_only_its_digest(client):
    staff("ops", VIEW)
    out, err = run("api_token", "create", "--user", "ops", "--name", "deploy bot")
    token = out.strip()
    assert token.startswith("appsup_") and "\n" not in token
    assert "shown once" in err and token not in err
    row = ApiToken.objects.get()
    assert row.digest == token_digest(token) and row.name == "deploy bot"
    assert token not in row.prefix and len(row.prefix) < 16
    assert call(client, "GET", "/api/v1/apps/", token).status_code == 200

    listing, _ = run("api_token", "list", "--json")
    [entry] = json.loads(listing)
    assert entry["user"] == "ops" and entry["last_used_at"] is not None
    assert token not in listing


@pytest.mark.django_db
def test_create_json_and_two_tokens_differ():
    staff("ops", VIEW)
    first = json.loads(run("api_token", "create", "--user", "ops", "--json")[0])[0]
    second = json.loads(run("api_token", "create", "--user", "ops", "--json")[0])[0]
    assert first["token"] != second["token"] and ApiToken.objects.count() == 2


@pytest.mark.django_db
def test_create_refuses_unknown_and_inactive_users():
    assert "no user named 'ghost'" in refused("api_token", "create", "--user", "ghost")
    user = staff("gone", VIEW)
    user.is_active = False
    user.save()
    assert "inactive" in refused("api_token", "create", "--user", "gone")


@pytest.mark.django_db
def test_revoke_by_id_by_token_and_by_user(client):
    staff("ops", VIEW)
    staff("other", VIEW)
    tokens = [run("api_token", "create", "--user", "ops")[0].strip() for _ in range(3)]
    other = run("api_token", "create", "--user", "other")[0].strip()
    ids = list(ApiToken.objects.filter(user__username="ops").values_list("pk", flat=True))

    run("api_token", "revoke", "--id", str(ids[0]))
    assert call(client, "GET", "/api/v1/apps/", tokens[0]).status_code == 401
    assert call(client, "GET", "/api/v1/apps/", tokens[1]).status_code == 200

    run("api_token", "revoke", "--token", tokens[1])
    assert call(client, "GET", "/api/v1/apps/", tokens[1]).status_code == 401

    run("api_token", "revoke", "--user", "ops")
    assert call(client, "GET", "/api/v1/apps/", tokens[2]).status_code == 401
    assert call(client, "GET", "/api/v1/apps/", other).status_code == 200


@pytest.mark.django_db
def test_revoke_refuses_what_it_cannot_find():
    staff("ops", VIEW)
    run("api_token", "create", "--user", "ops")
    assert "name what to revoke" in refused("api_token", "revoke")
    assert "no such token" in refused("api_token", "revoke", "--id", "999999")
    assert "no such token" in refused("api_token", "revoke", "--token", "appsup_nope")
    assert "no user named" in refused("api_token", "revoke", "--user", "ghost")
