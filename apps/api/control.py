"""The proxy page's Start button: /apps-control/<name>/start/ (outside /apps/<name>/, which
the gateway forwards to the app).

The "not running" page is rendered without a Django request (the raw ASGI proxy sends it,
and in local mode the gateway middleware answers before the CSRF middleware runs), so it
cannot carry a CSRF token. Its button is therefore a GET form leading to this view, and the
action takes two steps:

  GET   log-in required (else a redirect to the admin's login page, back here afterwards)
        and supervisor.start_application (else 403); renders a confirmation form that
        carries a CSRF token. A GET changes nothing, so a link or a prefetch cannot start
        an app.
  POST  the same checks plus Django's CSRF check (CsrfViewMiddleware); starts the app in
        the background (services.application_start, wait=False, the user as actor) and
        redirects to /apps/<name>/, which then shows "starting" until it runs.
"""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from apps.api import permissions
from apps.gateway import routing
from apps.supervisor import selectors, services


@require_http_methods(["GET", "POST"])
def start_app(request: HttpRequest, name: str) -> HttpResponse:
    user = request.user
    if not (user.is_authenticated and user.is_active):
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    lacking = permissions.missing(user, "start")
    if lacking or not user.is_staff:
        return TemplateResponse(
            request,
            "api/start_app.html",
            {"denied": True, "name": name[:48], "lacking": lacking or ["staff status"]},
            status=403,
        )
    application = selectors.application_by_name(name)
    if application is None:
        raise Http404("no such app")
    if request.method == "POST":
        services.application_start(application=application, actor=user.get_username(), wait=False)
        routing.forget_route(name)  # the page we send the browser back to must see it
        return HttpResponseRedirect(f"/apps/{name}/")
    return TemplateResponse(
        request,
        "api/start_app.html",
        {
            "app": application,
            "statuses": selectors.application_statuses(application),
            "action": routing.START_URL.format(name=name),
        },
    )
