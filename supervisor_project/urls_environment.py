"""The URLs an environment serves besides its apps (APP_MODE=worker).

An environment is managed from the supervisor: it has no admin, no API and no Start button of
its own (the supervisor's admin, served here, would show an empty database that nothing
reads). What is left is for probes: `/` (the compose healthcheck: no database, no app),
/healthz, /readyz and /metrics. Apps under /apps/<name>/ never reach a URLconf of the project:
apps.gateway routes them to the tenant's own (TENANT_URLCONF).
"""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_safe


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    text = (
        f"App Supervisor environment {settings.ENVIRONMENT_NAME}: its apps are served under "
        "/apps/<name>/ and managed from the supervisor.\n"
    )
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    add_never_cache_headers(response)
    return response


urlpatterns = [
    path("", index, name="environment-index"),
    path("", include("apps.observability.urls")),
]
