"""Per-request database routing for sub-applications.

The gateway sets `current_app_alias` for the duration of a request to /apps/<name>/...;
while it is set, every model outside the control plane reads and writes the app's own
database. Contextvars follow the request into the threads that run sync code under ASGI.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

current_app_alias: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_app_alias", default=None
)

APP_ALIAS_PREFIX = "app__"
# Tables that only ever live in this process's own database (control plane, hosting state).
CONTROL_PLANE_LABELS = frozenset({"supervisor", "runtime"})


def _label(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def tenant_labels() -> frozenset[str]:
    """App labels whose tables every sub-app database gets."""
    return frozenset(_label(m) for m in [*settings.TENANT_SHARED_APPS, *settings.TENANT_APPS])


def tenant_only_labels() -> frozenset[str]:
    """App labels whose tables live only in sub-app databases (the TENANT_APPS)."""
    return frozenset(_label(m) for m in settings.TENANT_APPS)


@contextmanager
def using_app(alias: str) -> Iterator[None]:
    token = current_app_alias.set(alias)
    try:
        yield
    finally:
        current_app_alias.reset(token)


class AppDatabaseRouter:
    def _db(self, model, **hints) -> str | None:
        if model._meta.app_label in CONTROL_PLANE_LABELS:
            return "default"
        alias = current_app_alias.get()
        if alias is not None:
            return alias
        if model._meta.app_label in tenant_only_labels():
            # A TENANT_APPS model outside any app's request has no database to use.
            return None
        return "default"

    db_for_read = _db
    db_for_write = _db

    def allow_relation(self, obj1, obj2, **hints) -> bool | None:
        return obj1._state.db == obj2._state.db

    def allow_migrate(self, db: str, app_label: str, model_name=None, **hints) -> bool:
        if db.startswith(APP_ALIAS_PREFIX):
            return app_label in tenant_labels()
        return app_label not in tenant_only_labels()
