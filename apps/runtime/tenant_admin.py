"""The admin site every sub-application serves at /apps/<name>/admin/ from its own database."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User


class TenantAdminSite(admin.AdminSite):
    site_title = "App admin"
    index_title = "Administration"

    def each_context(self, request):
        context = super().each_context(request)
        spec = getattr(request, "sub_app", None)
        if spec is not None:
            context["site_header"] = spec.title
            context["site_title"] = spec.title
            context["site_url"] = f"/apps/{spec.name}/"
        return context


site = TenantAdminSite(name="tenant_admin")
site.register(User, UserAdmin)
site.register(Group, GroupAdmin)


def autodiscover() -> None:
    """Import `tenant_admin` from every TENANT_APPS module, as admin.autodiscover does."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tenant_admin")
