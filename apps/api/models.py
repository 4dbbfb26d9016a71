"""API tokens: only a SHA-256 digest of each token is stored; the token is shown once."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True, help_text="What the token is for.")
    # The token's first characters, to tell tokens apart in listings (not enough to use one).
    prefix = models.CharField(max_length=16)
    # Hex SHA-256 of the whole token. Requests are authenticated by looking this up (unique
    # index): a token is 256 random bits, so a fast unsalted hash is enough.
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["user_id", "created_at", "id"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name or 'unnamed'})"
