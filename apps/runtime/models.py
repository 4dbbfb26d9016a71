"""What an environment hosts, kept in the environment's own database.

It survives a Redis flush and a restart, and it is what the environment's gateway routes by,
so an environment never needs the supervisor's database.
"""

from __future__ import annotations

from django.db import models


class HostedApp(models.Model):
    name = models.CharField(max_length=48, unique=True)
    spec = models.JSONField()  # the last AppSpec this environment worked from
    start_mode = models.CharField(max_length=20, default="on_first_visit")
    desired = models.CharField(max_length=16, default="stopped")
    status = models.CharField(max_length=16, default="stopped")
    detail = models.TextField(blank=True)
    command_id = models.CharField(max_length=36, blank=True)
    # Nanoseconds on this environment's clock of the last status change: orders its reports.
    status_ns = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}: {self.status}"
