from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    # The JSON API (/api/v1/) and the proxy page's Start button (/apps-control/).
    path("", include("apps.api.urls")),
    # Liveness (public), readiness and Prometheus metrics (apps/observability/urls.py).
    path("", include("apps.observability.urls")),
]
