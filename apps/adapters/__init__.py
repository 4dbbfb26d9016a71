"""Adapter factories: the one place that reads APP_*_ADAPTER."""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.adapters.base import DiscoveryAdapter, ProcessAdapter


@cache
def discovery() -> DiscoveryAdapter:
    from apps.adapters import local

    adapters = {"local": local.LocalDiscoveryAdapter}
    try:
        return adapters[settings.APP_DISCOVERY_ADAPTER]()
    except KeyError:
        raise ImproperlyConfigured(
            f"APP_DISCOVERY_ADAPTER={settings.APP_DISCOVERY_ADAPTER!r} is not available"
        ) from None


@cache
def process() -> ProcessAdapter:
    from apps.adapters import local

    adapters = {"local": local.LocalProcessAdapter}
    try:
        return adapters[settings.APP_PROCESS_ADAPTER]()
    except KeyError:
        raise ImproperlyConfigured(
            f"APP_PROCESS_ADAPTER={settings.APP_PROCESS_ADAPTER!r} is not available"
        ) from None


def background(fn, /, *args, **kwargs) -> None:
    from apps.adapters import local

    local.background(fn, *args, **kwargs)
