"""URLs of a sub-application, relative to /apps/<name>/ (the gateway strips the prefix).

Its admin, plus the `tenant_urls` module of every TENANT_APPS module that has one.
"""

from importlib.util import find_spec

from django.conf import settings
from django.urls import include, path
from django.views.generic import RedirectView

from apps.runtime import tenant_admin

tenant_admin.autodiscover()

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="tenant_admin:index", permanent=False)),
    path("admin/", tenant_admin.site.urls),
] + [
    path("", include(f"{module}.tenant_urls"))
    for module in settings.TENANT_APPS
    if find_spec(f"{module}.tenant_urls") is not None
]
