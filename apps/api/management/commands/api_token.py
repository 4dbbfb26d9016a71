"""python manage.py api_token create|list|revoke: per-user tokens for the JSON API.

Only a SHA-256 digest of a token is stored: `create` prints the token once (alone on
stdout, so `TOKEN=$(manage.py api_token create --user ops)` works) and it cannot be shown
again. The token acts with its user's permissions.
"""

from __future__ import annotations

import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from apps.api import services
from apps.api.models import ApiToken
from apps.supervisor.management.commands._output import emit, fail


class Command(BaseCommand):
    help = "Manage API tokens: create (printed once), list, revoke."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        create = sub.add_parser("create", help="create a token for a user and print it once")
        create.add_argument("--user", required=True, metavar="NAME")
        create.add_argument("--name", default="", help="what the token is for")
        create.add_argument("--json", action="store_true")

        listing = sub.add_parser("list", help="list tokens (never the tokens themselves)")
        listing.add_argument("--user", metavar="NAME")
        listing.add_argument("--json", action="store_true")

        revoke = sub.add_parser("revoke", help="revoke tokens: by --id, --token, or all of --user")
        revoke.add_argument("--id", type=int, dest="token_id")
        revoke.add_argument("--user", metavar="NAME")
        revoke.add_argument(
            "--token", metavar="TOKEN", help="the token itself; '-' reads it from stdin"
        )
        revoke.add_argument("--json", action="store_true")

    def handle(self, *args, action: str, **options):
        return getattr(self, f"do_{action}")(**options)

    def _user(self, username: str):
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: username})
        found = user.first()
        if found is None:
            raise fail(f"no user named {username!r}")
        return found

    def do_create(self, user, name, json, **_):
        owner = self._user(user)
        if not owner.is_active:
            raise fail(f"user {user!r} is inactive: activate it first")
        if len(name) > 100 or "\x00" in name:
            raise fail("--name takes at most 100 characters")
        row, token = services.api_token_create(user=owner, name=name)
        if json:
            emit(
                self,
                [
                    {
                        "id": row.pk,
                        "user": user,
                        "name": row.name,
                        "token": token,
                        "created_at": row.created_at.isoformat(),
                    }
                ],
                [],
                True,
            )
            return
        self.stderr.write(
            f"API token {row.pk} for {user} (shown once: keep it now; "
            "send it as 'Authorization: Bearer <token>'):"
        )
        self.stdout.write(token)

    def do_list(self, user, json, **_):
        rows = ApiToken.objects.select_related("user")
        if user is not None:
            rows = rows.filter(user=self._user(user))
        emit(
            self,
            [
                {
                    "id": t.pk,
                    "user": t.user.get_username(),
                    "name": t.name,
                    "prefix": t.prefix + "…",
                    "created_at": t.created_at.isoformat(timespec="seconds"),
                    "last_used_at": t.last_used_at.isoformat(timespec="seconds")
                    if t.last_used_at
                    else None,
                }
                for t in rows
            ],
            ["id", "user", "name", "prefix", "created_at", "last_used_at"],
            json,
        )

    def do_revoke(self, token_id, user, token, json, **_):
        if token_id is None and user is None and token is None:
            raise fail("name what to revoke: --id N, --token TOKEN or --user NAME")
        if token == "-":  # noqa: S105 (read it from stdin)
            token = sys.stdin.readline().strip()
        if token is not None and not token:
            raise fail("--token is empty")
        owner = self._user(user) if user is not None else None
        revoked = services.api_token_revoke(token_id=token_id, user=owner, token=token or "")
        if not revoked:
            raise fail("no such token (nothing revoked)")
        emit(self, [{"revoked": revoked}], ["revoked"], json)
