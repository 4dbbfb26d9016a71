"""Routes /apps/<name>/... to the sub-application (see routing.decide).

For a served app the request continues down the ordinary middleware stack with:
- the app's database active (runtime.routing.current_app_alias) for every model but the
  control plane's;
- the app's URLconf and script prefix, so its admin, links and redirects live under
  /apps/<name>/ (path_info loses the prefix, as under a WSGI/ASGI mount);
- its own cookies: the session and CSRF cookies are renamed per app and scoped to
  /apps/<name>/, and the supervisor's cookies never reach the app.
"""

from __future__ import annotations

from http.cookies import Morsel

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string
from django.urls import get_script_prefix, set_script_prefix

from apps.gateway.routing import Page, Redirect, Serve, decide
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


def render_page(request: HttpRequest, page: Page) -> HttpResponse:
    accepts_json = "application/json" in request.headers.get("Accept", "")
    if accepts_json:
        from django.http import JsonResponse

        response: HttpResponse = JsonResponse(
            {"status": page.status, "title": page.title, "message": page.message},
            status=page.status,
        )
    else:
        body = render_to_string(
            "gateway/page.html", {"page": page, **page.context}, request=request
        )
        response = HttpResponse(body, status=page.status)
    if page.refresh:
        response["Refresh"] = str(page.refresh)
        response["Retry-After"] = str(page.refresh)
    response["Cache-Control"] = "no-store"
    return response


class AppGatewayMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        decision = decide(request.path_info)
        if decision is None:
            return self.get_response(request)
        if isinstance(decision, Redirect):
            query = request.META.get("QUERY_STRING", "")
            return HttpResponseRedirect(decision.location + (f"?{query}" if query else ""))
        if isinstance(decision, Page):
            return render_page(request, decision)
        return self._serve(request, decision)

    def _serve(self, request: HttpRequest, decision: Serve) -> HttpResponse:
        spec = decision.spec
        prefix = f"/apps/{spec.name}/"
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
