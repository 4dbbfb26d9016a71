"""/healthz (liveness), /readyz (readiness) and /metrics (Prometheus).

/healthz is public and does nothing but answer: no database, no Redis. /readyz and /metrics
say more than an outsider should know (component names, hosts, counts), so unless
OBSERVABILITY_PUBLIC is true they answer only a logged-in staff user of this site or a request
with `Authorization: Bearer <METRICS_TOKEN>`, and everyone else gets 403 (never a redirect to
a login page: a scraper cannot follow one).
"""

from __future__ import annotations

import asyncio
import hmac
import json

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.views.decorators.http import require_safe
from health_check.views import HealthCheckView, MediaType
from prometheus_client.exposition import choose_encoder

from apps.observability import metrics
from apps.observability.health import readiness_checks


def _wants_json(request: HttpRequest) -> bool:
    if request.GET.get("format") == "json":
        return True
    try:
        for media in MediaType.parse_header(request.headers.get("accept", "*/*")):
            if media.weight <= 0:
                continue
            if media.mime_type in ("application/json", "application/*"):
                return True
            if media.mime_type in ("text/plain", "text/*", "*/*", "text/html"):
                return False
    except ValueError:  # an Accept header the parser refuses: answer in text
        return False
    return False


def bearer_token_matches(request: HttpRequest) -> bool:
    expected = settings.METRICS_TOKEN
    if not expected:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def open_to(request: HttpRequest) -> bool:
    """Public, or the right bearer token (checked before the session: no database)."""
    return settings.OBSERVABILITY_PUBLIC or bearer_token_matches(request)


def is_staff(user) -> bool:
    return bool(user is not None and user.is_active and user.is_staff)


def forbidden(request: HttpRequest) -> HttpResponse:
    message = (
        "forbidden: log in as staff or send Authorization: Bearer <METRICS_TOKEN> "
        "(or set OBSERVABILITY_PUBLIC=true)"
    )
    if _wants_json(request):
        response: HttpResponse = JsonResponse({"error": message}, status=403)
    else:
        response = HttpResponse(message + "\n", status=403, content_type="text/plain")
    add_never_cache_headers(response)
    patch_vary_headers(response, ["Accept", "Authorization", "Cookie"])
    return response


@require_safe
def healthz(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("ok\n", content_type="text/plain; charset=utf-8")
    add_never_cache_headers(response)
    return response


class ReadinessView(HealthCheckView):
    """django-health-check's view with the checks of this role, 503 on failure, and text or
    JSON (never the HTML page: /readyz is for probes and curl)."""

    http_method_names = ["get", "head"]

    def get_checks(self):
        return readiness_checks()

    async def dispatch(self, request, *args, **kwargs):
        if not open_to(request):
            user = await request.auser() if hasattr(request, "auser") else None
            if not is_staff(user):
                return forbidden(request)
        return await super().dispatch(request, *args, **kwargs)

    async def get(self, request, *args, **kwargs):
        self.results = await asyncio.gather(
            *(check.get_result(None) for check in self.get_checks())
        )
        failed = any(result.error for result in self.results)
        status = 503 if failed else 200
        if _wants_json(request):
            return self.render_to_response_json(status)
        return self.render_to_response_text(status)

    def render_to_response_json(self, status):
        body = {
            "status": "unavailable" if status != 200 else "ok",
            "checks": {
                repr(result.check): {
                    "ok": result.error is None,
                    **({"error": str(result.error)} if result.error else {}),
                    "seconds": round(result.time_taken, 3),
                }
                for result in self.results
            },
        }
        return HttpResponse(
            json.dumps(body, indent=2) + "\n", status=status, content_type="application/json"
        )

    def render_to_response_text(self, status):
        lines = [
            f"{result.check!r}: {'OK' if result.error is None else result.error}"
            for result in self.results
        ]
        return HttpResponse(
            "\n".join(lines) + "\n", status=status, content_type="text/plain; charset=utf-8"
        )


readyz = ReadinessView.as_view()


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not (open_to(request) or is_staff(getattr(request, "user", None))):
        return forbidden(request)
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    response = HttpResponse(encoder(metrics.scrape_registry()), content_type=content_type)
    add_never_cache_headers(response)
    patch_vary_headers(response, ["Accept"])
    return response
