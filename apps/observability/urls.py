"""/healthz (public), /readyz and /metrics (see views.py): every process that serves HTTP
includes these, the supervisor's URLconf and an environment's alike."""

from django.urls import path

from apps.observability import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
]
