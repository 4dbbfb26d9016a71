"""Small builders for tests: apps through the real services, users through Django."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from apps.supervisor import services
from apps.supervisor.models import Application


def make_app(name: str, **fields) -> Application:
    fields.setdefault("title", name.title())
    fields.setdefault("db_type", "sqlite")
    return services.application_create(name=name, **fields)


def make_superuser(username: str = "boss", password: str = "s3cret-pass-word"):
    return get_user_model().objects.create_superuser(username=username, password=password)


def make_staff(username: str, *perms: str, password: str = "s3cret-pass-word"):
    """A staff user with only the given permissions ("supervisor.start_application", ...)."""
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username=username, password=password, is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user
