"""Adapter factories: the one place that reads APP_MODE and APP_*_ADAPTER."""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.adapters.base import DiscoveryAdapter, ProcessAdapter


def _pick(setting: str, choices: dict):
    key = (settings.APP_MODE, getattr(settings, setting))
    try:
        return choices[key]()
    except KeyError:
        # The system checks refuse this at start-up; reaching it means they were skipped.
        raise ImproperlyConfigured(f"{setting}={key[1]!r} with APP_MODE={key[0]}") from None


@cache
def discovery() -> DiscoveryAdapter:
    from apps.adapters import local, remote

    return _pick(
        "APP_DISCOVERY_ADAPTER",
        {
            ("local", "local"): local.LocalDiscoveryAdapter,
            ("supervisor", "remote"): remote.SupervisorDiscoveryAdapter,
            ("worker", "remote"): remote.EnvironmentDiscoveryAdapter,
        },
    )


@cache
def process() -> ProcessAdapter:
    from apps.adapters import local, remote

    return _pick(
        "APP_PROCESS_ADAPTER",
        {
            ("local", "local"): local.LocalProcessAdapter,
            ("supervisor", "remote"): remote.RemoteProcessAdapter,
            ("worker", "local"): local.LocalProcessAdapter,
        },
    )


def background(fn, /, *args, **kwargs) -> None:
    from apps.adapters import local

    local.background(fn, *args, **kwargs)
