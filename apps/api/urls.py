"""/api/v1/ (the JSON API) and /apps-control/ (the proxy page's Start button)."""

from __future__ import annotations

from django.urls import include, path, re_path

from apps.api import control, views

NAME = r"(?P<name>[^/]+)"

api_urlpatterns = [
    re_path(r"^apps/?$", views.AppsView.as_view(), name="api-apps"),
    re_path(rf"^apps/{NAME}/?$", views.AppView.as_view(), name="api-app"),
    re_path(
        rf"^apps/{NAME}/(?P<action>start|stop|restart)/?$",
        views.AppCommandView.as_view(),
        name="api-app-command",
    ),
    re_path(r"^(?P<rest>.*)$", views.not_found),
]

control_urlpatterns = [
    path("<str:name>/start/", control.start_app, name="app-control-start"),
]

urlpatterns = [
    path("api/v1/", include(api_urlpatterns)),
    path("apps-control/", include(control_urlpatterns)),
]
