"""Serves /apps/<name>/... in this process, or answers with the gateway's pages.

Requests that must be forwarded to another environment never get here under ASGI: the proxy
in front of Django (apps/gateway/proxy.py) takes them. For a served app the request goes on
down the ordinary middleware stack with:
- the app's database active (runtime.routing.current_app_alias) for every model but the
  control plane's;
- the app's URLconf and script prefix, so its admin, links and redirects live under
  /apps/<name>/ (path_info loses the prefix, as under a WSGI/ASGI mount);
- its own cookies: the session and CSRF cookies are renamed per app and scoped to
  /apps/<name>/, and the supervisor's cookies never reach the app.
"""

from __future__ import annotations

from http.cookies import Morsel
from urllib.parse import parse_qsl, urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.urls import get_script_prefix, set_script_prefix

from apps.gateway import routing
from apps.gateway.routing import Forward, Page, Redirect, Serve
from apps.runtime.routing import using_app

# Cookies the inner stack knows by their ordinary names and the browser per app.
_RENAMED = ("SESSION_COOKIE_NAME", "CSRF_COOKIE_NAME")


def app_cookie_name(inner: str, app: str) -> str:
    return f"{inner}_{app}"


def _inner_cookies(request: HttpRequest, app: str) -> dict[str, str]:
    inner_names = {getattr(settings, s) for s in _RENAMED}
    cookies = {k: v for k, v in request.COOKIES.items() if k not in inner_names}
    for inner in inner_names:
        outer = app_cookie_name(inner, app)
        if outer in cookies:
            cookies[inner] = cookies.pop(outer)
    return cookies


def _outer_cookies(response: HttpResponse, app: str, prefix: str) -> None:
    inner_names = {getattr(settings, s) for s in _RENAMED}
    for key in list(response.cookies):
        morsel = response.cookies[key]
        if morsel["path"] in ("", "/"):
            morsel["path"] = prefix
        if key in inner_names:
            renamed = Morsel()
            renamed.set(app_cookie_name(key, app), morsel.value, morsel.coded_value)
            renamed.update(morsel)
            del response.cookies[key]
            response.cookies[renamed.key] = renamed


def query_without_choice(query_string: str) -> str:
    pairs = [
        (k, v) for k, v in parse_qsl(query_string, keep_blank_values=True) if k != routing.ENV_PARAM
    ]
    return urlencode(pairs)


def page_body(page: Page, *, as_json: bool) -> tuple[bytes, str]:
    """The bytes and content type of a gateway page (shared with the ASGI proxy)."""
    if as_json:
        import json

        data = {"status": page.status, "title": page.title, "message": page.message}
        if page.context.get("deployments"):
            data["environments"] = {d.environment: d.status for d in page.context["deployments"]}
        return json.dumps(data).encode(), "application/json"
    html = render_to_string(page.template, {"page": page, **page.context})
    return html.encode(), "text/html; charset=utf-8"


def render_page(request: HttpRequest, page: Page) -> HttpResponse:
    body, content_type = page_body(
        page, as_json="application/json" in request.headers.get("Accept", "")
    )
    response = HttpResponse(body, status=page.status, content_type=content_type)
    if page.refresh:
        response["Refresh"] = str(page.refresh)
        response["Retry-After"] = str(page.refresh)
    response["Cache-Control"] = "no-store"
    return response


class AppGatewayMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        decision = routing.decide(
            request.path_info,
            host=request.META.get("HTTP_HOST", "").split(":")[0].lower(),
            chosen=request.GET.get(routing.ENV_PARAM, ""),
            remembered=request.COOKIES.get(routing.ENV_COOKIE, ""),
        )
        if decision is None:
            return self.get_response(request)
        match = routing.parse(request.path_info)
        if isinstance(match, tuple):
            routing.stop_if_not_served(match[0], decision)
        routing.carry_out(decision)
        if isinstance(decision, Redirect):
            query = query_without_choice(request.META.get("QUERY_STRING", ""))
            response = HttpResponseRedirect(decision.location + (f"?{query}" if query else ""))
            if decision.set_cookie:
                name, value, path = decision.set_cookie
                response.set_cookie(name, value, path=path, samesite="Lax", httponly=True)
            return response
        if isinstance(decision, Page):
            return render_page(request, decision)
        if isinstance(decision, Forward):
            return render_page(
                request, Page(502, "Proxy unavailable", "Forwarding needs the ASGI server.")
            )
        return self._serve(request, decision)

    def _serve(self, request: HttpRequest, decision: Serve) -> HttpResponse:
        spec, prefix = decision.spec, decision.prefix
        request.sub_app = spec
        request.urlconf = settings.TENANT_URLCONF
        request.path_info = "/" + request.path_info[len(prefix) :]
        request.COOKIES = _inner_cookies(request, spec.name)
        outer_prefix = get_script_prefix()
        set_script_prefix(prefix)
        try:
            with using_app(spec.alias):
                response = self.get_response(request)
        finally:
            set_script_prefix(outer_prefix)
        _outer_cookies(response, spec.name, prefix)
        return response
