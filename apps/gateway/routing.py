"""The one place that decides what happens to a request for /apps/<name>/...: serve it here,
or answer with a page (404 unknown, 503 stopped / starting). The proxy's "forward" joins here.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from apps import adapters
from apps.adapters.base import AppRoute
from apps.runtime import runtime
from apps.runtime.spec import AppSpec, app_name_problem
from apps.supervisor.statuses import COMMANDING, IN_PROGRESS, AppStatus, Desired

APP_PATH_RE = re.compile(r"^/apps/(?P<name>[^/]+)(?P<rest>/.*)?$", re.DOTALL)


@dataclass(frozen=True)
class Serve:
    spec: AppSpec


@dataclass(frozen=True)
class Page:
    """An answer the gateway gives itself instead of the app."""

    status: int
    title: str
    message: str
    refresh: int | None = None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Redirect:
    location: str


_routes: dict[str, tuple[float, AppRoute | None]] = {}
_routes_lock = threading.Lock()


def cached_route(name: str) -> AppRoute | None:
    """The app's route, trusted for APP_ROUTE_CACHE_SECONDS (another process may change it)."""
    now = time.monotonic()
    hit = _routes.get(name)
    if hit is not None and hit[0] > now:
        return hit[1]
    route = adapters.discovery().route(name)
    with _routes_lock:
        _routes[name] = (now + settings.APP_ROUTE_CACHE_SECONDS, route)
    return route


def forget_route(name: str) -> None:
    with _routes_lock:
        _routes.pop(name, None)


def decide(path: str) -> Serve | Page | Redirect | None:
    """None: not an app path (the supervisor's own URLs handle it)."""
    match = APP_PATH_RE.match(path)
    if match is None:
        return None
    name = match.group("name")
    if match.group("rest") is None:
        return Redirect(f"/apps/{name}/")
    if app_name_problem(name):
        return Page(404, "Not found", "There is no app with that name.")
    return decide_for(name)


def decide_for(name: str) -> Serve | Page:
    route = cached_route(name)
    if route is None:
        runtime.stop(name)
        return Page(404, "Not found", f"There is no app named “{name}”.")
    here = route.on(settings.ENVIRONMENT_NAME)
    if here is None:
        return Page(404, "Not found", f"{route.spec.title} is not hosted on this environment.")
    if here.desired == Desired.RUNNING and here.status == AppStatus.RUNNING:
        runtime.attach(route.spec)
        return Serve(route.spec)
    runtime.stop(name)
    context = {"app": route.spec, "deployments": route.deployments}
    if here.status in IN_PROGRESS or (
        here.desired == Desired.RUNNING and here.status == COMMANDING
    ):
        return Page(503, "Starting", f"{route.spec.title} is starting…", refresh=2, context=context)
    if here.status == AppStatus.ERROR:
        return Page(
            503,
            "Unavailable",
            f"{route.spec.title} failed to start: {here.error or 'unknown error'}",
            context=context,
        )
    if route.start_mode == "on_first_visit" and here.never_commanded:
        # "On first visit": the first request starts it. Once an operator has stopped it,
        # a visit no longer restarts it: it answers "stopped" like any other app.
        adapters.discovery().request_start(name, actor="first visit")
        forget_route(name)
        return Page(503, "Starting", f"{route.spec.title} is starting…", refresh=2, context=context)
    return Page(503, "Stopped", f"{route.spec.title} is stopped.", context=context)
