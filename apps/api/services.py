"""Writes of the API app: tokens are created (shown once), used and revoked here."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q
from django.utils import timezone

from apps.api.models import ApiToken

TOKEN_PREFIX = "appsup_"  # noqa: S105 (a marker, not a secret)
# What a token looks like; anything else is refused before the database is asked.
TOKEN_RE = re.compile(r"^appsup_[A-Za-z0-9_-]{43}$")
# last_used_at is refreshed at most this often per token (one write per minute, not per call).
LAST_USED_RESOLUTION = timedelta(seconds=60)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def api_token_create(*, user: AbstractBaseUser, name: str = "") -> tuple[ApiToken, str]:
    """A new token for `user`: the row (digest only) and the token itself, to show once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 32 bytes -> 43 characters
    row = ApiToken.objects.create(
        user=user,
        name=name[:100],
        prefix=token[: len(TOKEN_PREFIX) + 4],
        digest=token_digest(token),
    )
    return row, token


def api_token_revoke(
    *, token_id: int | None = None, user: AbstractBaseUser | None = None, token: str = ""
) -> int:
    """Delete one token (by id or by the token itself) or all of a user's: how many went."""
    rows = ApiToken.objects.all()
    if token_id is not None:
        rows = rows.filter(pk=token_id)
    if user is not None:
        rows = rows.filter(user=user)
    if token:
        rows = rows.filter(digest=token_digest(token)) if TOKEN_RE.fullmatch(token) else rows.none()
    if token_id is None and user is None and not token:
        raise ValueError("name a token or a user")
    deleted, _ = rows.delete()
    return deleted


def api_token_authenticate(token: str) -> AbstractBaseUser | None:
    """The active user a token belongs to, or None; notes when the token was used."""
    if not TOKEN_RE.fullmatch(token):
        return None
    row = ApiToken.objects.select_related("user").filter(digest=token_digest(token)).first()
    if row is None or not row.user.is_active:
        return None
    now = timezone.now()
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=row.pk).filter(
            Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
        ).update(last_used_at=now)
    return row.user
