"""App and environment statuses: what is stored, and the one place the rest is derived."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models


class AppStatus(models.TextChoices):
    """Observed status of an app on one environment, as stored (reported by the runtime)."""

    STOPPED = "stopped", "stopped"
    PREPARING = "preparing", "preparing"
    INITIALIZING = "initializing", "initializing"
    INITIALIZED = "initialized", "initialized"
    RUNNING = "running", "running"
    ERROR = "error", "error"
    NOT_FOUND = "not_found", "not found"


# Derived, never stored.
COMMANDING = "commanding"  # a command was sent and nothing has reported on it yet
UNKNOWN = "unknown"  # the environment is offline: we cannot know

IN_PROGRESS = frozenset({AppStatus.PREPARING, AppStatus.INITIALIZING, AppStatus.INITIALIZED})
DISPLAY_STATUSES = (*AppStatus.values, COMMANDING, UNKNOWN)


class Desired(models.TextChoices):
    RUNNING = "running", "running"
    STOPPED = "stopped", "stopped"


class EnvStatus(models.TextChoices):
    """Stored liveness of an environment; `stale` is derived from heartbeat age."""

    ONLINE = "online", "online"
    OFFLINE = "offline", "offline"


STALE = "stale"


def environment_liveness(
    *,
    status: str,
    last_heartbeat_at: datetime | None,
    interval: int | None,
    grace: int,
    now: datetime,
) -> str:
    """online / stale / offline, judged by the receiver's clock.

    stale after one missed beat plus the grace, offline after two plus the grace. An
    environment without a heartbeat interval (the in-process `local` one) is online while its
    stored status says so.
    """
    if status == EnvStatus.OFFLINE:
        return EnvStatus.OFFLINE
    if not interval or last_heartbeat_at is None:
        return status
    age = now - last_heartbeat_at
    if age > timedelta(seconds=2 * interval + grace):
        return EnvStatus.OFFLINE
    if age > timedelta(seconds=interval + grace):
        return STALE
    return EnvStatus.ONLINE


def display_status(*, status: str, commanded: bool, answered: bool, liveness: str) -> str:
    """The status an operator sees for an app on one environment."""
    if liveness == EnvStatus.OFFLINE:
        return UNKNOWN
    if commanded and not answered and status not in IN_PROGRESS:
        return COMMANDING
    return status
