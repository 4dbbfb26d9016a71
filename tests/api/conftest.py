"""Shared by the permission tests of every surface (API, CLI --as-user, admin, Start button)."""

from __future__ import annotations

import json as jsonlib
from typing import Any

from apps.api import services as api_services
from apps.api.models import ApiToken
from apps.supervisor.models import Application, Deployment, Environment, StatusChange
from tests.factories import make_staff

VIEW = "supervisor.view_application"
CREATE = "supervisor.add_application"
CHANGE = "supervisor.change_application"
START = "supervisor.start_application"
DELETE = "supervisor.delete_application"
DROP = "supervisor.drop_application_database"
ALL = (VIEW, CREATE, CHANGE, START, DELETE, DROP)


def all_but(*excluded: str) -> tuple[str, ...]:
    """Every application permission except these: shows exactly which one an action needs."""
    return tuple(p for p in ALL if p not in excluded)


def staff(username: str, *perms: str):
    return make_staff(username, *perms)


def token_for(user) -> str:
    return api_services.api_token_create(user=user, name="test")[1]


def snapshot() -> tuple:
    """Everything an app operation can change in the supervisor database."""
    return (
        list(
            Application.objects.order_by("pk").values_list(
                "pk",
                "name",
                "title",
                "db_type",
                "start_mode",
                "options",
                "custom_domain",
                "updated_at",
            )
        ),
        list(
            Deployment.objects.order_by("pk").values_list(
                "pk", "desired", "status", "command_id", "command_actor"
            )
        ),
        list(Environment.objects.order_by("pk").values_list("pk", "name", "status")),
        StatusChange.objects.count(),
        # Tokens: which exist (last_used_at is usage bookkeeping, not stored input).
        list(ApiToken.objects.order_by("pk").values_list("pk", "digest")),
    )


def call(
    client,
    method: str,
    url: str,
    token: str | None = None,
    body: Any = None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
    **headers: str,
):
    """One API request. `body` is sent as JSON, `raw` as it is."""
    if token is not None:
        headers.setdefault("Authorization", f"Bearer {token}")
    data = raw if raw is not None else (b"" if body is None else jsonlib.dumps(body).encode())
    return client.generic(method, url, data=data, content_type=content_type, headers=headers)
