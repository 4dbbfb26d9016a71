"""The one place that decides what happens to a request for an app: serve it here, forward
it to the environment that hosts it, or answer with a page (404 unknown, 503 stopped or
starting, 502 environment offline, a chooser when the app runs on several environments).

`decide` is pure and cheap on a route-cache hit, so the async proxy can call it per request;
side effects (a lazy start, attaching a database) are carried out by `carry_out`.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from apps import adapters
from apps.adapters.base import AppRoute, DeploymentRoute
from apps.runtime import runtime
from apps.runtime.spec import AppSpec, app_name_problem
from apps.supervisor.statuses import COMMANDING, IN_PROGRESS, UNKNOWN, AppStatus, Desired

APP_PATH_RE = re.compile(r"^/apps/(?P<name>[^/]+)(?P<rest>/.*)?$", re.DOTALL)
ENV_PARAM = "_environment"  # the query parameter that carries an environment choice
ENV_COOKIE = "appsup_environment"  # remembers the choice, scoped to /apps/<name>/
_ENV_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass(frozen=True)
class Serve:
    spec: AppSpec
    prefix: str  # the app's URL prefix, "/apps/<name>/"


@dataclass(frozen=True)
class Forward:
    name: str
    environment: str
    base_url: str  # the environment's registered proxy URL: never taken from the request


@dataclass(frozen=True)
class Page:
    """An answer the gateway gives itself instead of the app."""

    status: int
    title: str
    message: str
    refresh: int | None = None
    context: dict[str, Any] = field(default_factory=dict)
    template: str = "gateway/page.html"
    start: str = ""  # app to start lazily (carried out by the caller)
    set_cookie: tuple[str, str, str] | None = None  # (name, value, path)


@dataclass(frozen=True)
class Redirect:
    location: str
    set_cookie: tuple[str, str, str] | None = None


Decision = Serve | Forward | Page | Redirect

_routes: dict[str, tuple[float, AppRoute | None]] = {}
_domains: dict[str, tuple[float, str | None]] = {}
_routes_lock = threading.Lock()


def cached_route(name: str) -> AppRoute | None:
    """The app's route, trusted for APP_ROUTE_CACHE_SECONDS (another process may change it)."""
    hit = peek_route(name)
    if hit is not False:
        return hit
    route = adapters.discovery().route(name)
    with _routes_lock:
        _routes[name] = (time.monotonic() + settings.APP_ROUTE_CACHE_SECONDS, route)
    return route


def peek_route(name: str) -> AppRoute | bool | None:
    """The cached route, or False when it must be read (no I/O: safe in async code)."""
    hit = _routes.get(name)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    return False


def domain_app(host: str) -> str | None:
    """The app a custom domain belongs to (cached like routes)."""
    hit = _domains.get(host)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    route = adapters.discovery().route_for_domain(host)
    name = route.spec.name if route is not None else None
    with _routes_lock:
        _domains[host] = (time.monotonic() + settings.APP_ROUTE_CACHE_SECONDS, name)
    return name


def peek_domain(host: str) -> str | bool | None:
    hit = _domains.get(host)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    return False


def may_be_custom_domain(host: str) -> bool:
    """Only a dotted name can be an app's custom domain (never an IP literal or localhost):
    requests to the supervisor by address cost no lookup."""
    if not host or "." not in host or host.endswith(".localhost"):
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    return False


def forget_route(name: str) -> None:
    with _routes_lock:
        _routes.pop(name, None)


def forget_all() -> None:
    with _routes_lock:
        _routes.clear()
        _domains.clear()


def unsafe_path(path: str, raw_path: bytes | None = None) -> bool:
    """True for paths that could leave /apps/<name>/ once an upstream normalises them."""
    if raw_path is not None and re.search(rb"%(2[fF]|5[cC]|00)", raw_path):
        return True  # encoded slash, backslash or NUL
    if "\\" in path or "\x00" in path or "//" in path:
        return True
    segments = path.split("/")
    if any(s in (".", "..") for s in segments):
        return True
    return posixpath.normpath(path) != path.rstrip("/") and path != "/"


def parse(path: str) -> tuple[str, str] | Decision | None:
    """(app name, rest of the path) for /apps/<name>/..., a page or redirect, or None."""
    match = APP_PATH_RE.match(path)
    if match is None:
        return None
    name = match.group("name")
    if app_name_problem(name):
        return Page(404, "Not found", "There is no app with that name.")
    if match.group("rest") is None:
        return Redirect(f"/apps/{name}/")
    return name, match.group("rest")


def decide(
    path: str,
    *,
    host: str = "",
    chosen: str = "",
    remembered: str = "",
    raw_path: bytes | None = None,
    route: AppRoute | bool | None = False,
) -> Decision | None:
    """What to do with a request. None: not an app path (the supervisor's own URLs).

    `chosen` is the environment named in the query (ENV_PARAM), `remembered` the one in the
    app's cookie; `route` may be passed in when the caller already has it.
    """
    if may_be_custom_domain(host) and not path.startswith("/apps/"):
        name = domain_app(host) if peek_domain(host) is False else peek_domain(host)
        if name:
            return Redirect(f"/apps/{name}{path}")  # a custom domain is served as its app
    parsed = parse(path)
    if parsed is None or not isinstance(parsed, tuple):
        return parsed
    if unsafe_path(path, raw_path):
        return Page(400, "Bad request", "That path is not allowed.")
    name, _rest = parsed
    if route is False:
        route = cached_route(name)
    if route is None:
        return Page(404, "Not found", f"There is no app named “{name}”.")
    here = route.on(settings.ENVIRONMENT_NAME) if settings.ENVIRONMENT_NAME else None
    if here is not None:
        return _serve_here(route, here)
    if settings.ENVIRONMENT_NAME:
        return Page(404, "Not found", f"{route.spec.title} is not hosted on this environment.")
    return _forward(route, path=path, chosen=chosen, remembered=remembered)


def _context(route: AppRoute) -> dict[str, Any]:
    return {"app": route.spec, "deployments": route.deployments}


# The Start button of a "not running" page: a supervisor view outside /apps/<name>/ (which
# is the app's), defined in apps/api/urls.py; it checks the login and the permission.
START_URL = "/apps-control/{name}/start/"


def _with_start_button(route: AppRoute, context: dict[str, Any]) -> dict[str, Any]:
    return {**context, "start_url": START_URL.format(name=route.spec.name)}


def _not_running(route: AppRoute, here: DeploymentRoute) -> Page:
    title, context = route.spec.title, _context(route)
    if here.status in IN_PROGRESS or (
        here.desired == Desired.RUNNING and here.status == COMMANDING
    ):
        return Page(503, "Starting", f"{title} is starting…", refresh=2, context=context)
    if here.status == UNKNOWN:
        return Page(
            502,
            "Environment offline",
            f"{title} runs on {here.environment}, which is offline.",
            context=context,
        )
    if here.status == AppStatus.ERROR:
        return Page(
            503,
            "Unavailable",
            f"{title} failed to start: {here.error or 'unknown error'}",
            context=_with_start_button(route, context),
        )
    if route.start_mode == "on_first_visit" and here.never_commanded:
        # "On first visit": the first request starts it. Once an operator has stopped it,
        # a visit no longer restarts it: it answers "stopped" like any other app.
        return Page(
            503,
            "Starting",
            f"{title} is starting…",
            refresh=2,
            context=context,
            start=route.spec.name,
        )
    return Page(503, "Stopped", f"{title} is stopped.", context=_with_start_button(route, context))


def _serve_here(route: AppRoute, here: DeploymentRoute) -> Decision:
    if here.desired == Desired.RUNNING and here.status == AppStatus.RUNNING:
        return Serve(route.spec, f"/apps/{route.spec.name}/")
    return _not_running(route, here)


def _forward(route: AppRoute, *, path: str, chosen: str, remembered: str) -> Decision:
    name = route.spec.name
    by_env = {d.environment: d for d in route.deployments}
    if chosen:
        if chosen not in by_env:
            return Page(
                404,
                "Not found",
                f"{route.spec.title} does not run on “{chosen[:48]}”.",
                context=_context(route),
            )
        # Remember the choice for this app only; the caller drops it from the query.
        return Redirect(path, set_cookie=(ENV_COOKIE, chosen, f"/apps/{name}/"))
    if len(by_env) == 1:
        target = route.deployments[0]
    elif remembered in by_env:
        target = by_env[remembered]
    else:
        return Page(
            300,
            "Choose an environment",
            f"{route.spec.title} runs on several environments. Choose one:",
            context={**_context(route), "chooser": True, "param": ENV_PARAM},
            template="gateway/chooser.html",
        )
    if target.status == AppStatus.RUNNING and target.desired == Desired.RUNNING:
        if not target.proxy_url:
            return Page(
                502,
                "Environment unreachable",
                f"{target.environment} has no registered address.",
                context=_context(route),
            )
        return Forward(name, target.environment, target.proxy_url.rstrip("/"))
    if len(by_env) > 1 and target.status in (UNKNOWN, AppStatus.ERROR):
        return Page(
            502 if target.status == UNKNOWN else 503,
            "Environment unavailable",
            f"{route.spec.title} on {target.environment} is {target.status}. "
            "Choose another environment:",
            context={**_context(route), "chooser": True, "param": ENV_PARAM},
            template="gateway/chooser.html",
        )
    return _not_running(route, target)


def carry_out(decision: Decision) -> Decision:
    """Side effects of a decision, in sync code: lazy start, attaching the app's database."""
    if isinstance(decision, Serve):
        runtime.attach(decision.spec)
    elif isinstance(decision, Page) and decision.start:
        adapters.discovery().request_start(decision.start, actor="first visit")
        forget_route(decision.start)
    return decision


def stop_if_not_served(name: str, decision: Decision) -> None:
    if not isinstance(decision, Serve):
        runtime.stop(name)
