"""URLs of a sub-application, relative to /apps/<name>/ (the gateway strips the prefix)."""

from django.urls import path
from django.views.generic import RedirectView

from apps.runtime import tenant_admin

tenant_admin.autodiscover()

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="tenant_admin:index", permanent=False)),
    path("admin/", tenant_admin.site.urls),
]
