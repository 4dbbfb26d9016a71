"""Adapter factories: the one place that reads APP_*_ADAPTER."""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.adapters.base import DiscoveryAdapter, ProcessAdapter


def _pick(setting: str, choices: dict):
    name = getattr(settings, setting)
    try:
        return choices[name]()
    except KeyError:
        # The system checks refuse this at start-up; reaching it means they were skipped.
        raise ImproperlyConfigured(f"{setting}={name!r} is not available") from None


@cache
def discovery() -> DiscoveryAdapter:
    from apps.adapters import local

    return _pick("APP_DISCOVERY_ADAPTER", {"local": local.LocalDiscoveryAdapter})


@cache
def process() -> ProcessAdapter:
    from apps.adapters import local

    return _pick("APP_PROCESS_ADAPTER", {"local": local.LocalProcessAdapter})


def background(fn, /, *args, **kwargs) -> None:
    from apps.adapters import local

    local.background(fn, *args, **kwargs)
