"""ASGI entry point: Django over HTTP, Channels for websockets, a lifespan hook for start-up.

Servers like uvicorn do not run Django's system checks, so this module runs them itself and
exits with one line per configuration error.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supervisor_project.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from asgiref.sync import sync_to_async  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.supervisor.checks import startup_errors  # noqa: E402

log = logging.getLogger("supervisor_project.asgi")

_errors = startup_errors()
if _errors:
    for line in _errors:
        print(line, file=sys.stderr)
    raise SystemExit(1)

from apps.gateway.proxy import ProxyApp, close_client  # noqa: E402
from apps.gateway.websockets import WebsocketGateway  # noqa: E402


class LifespanApp:
    """Runs the mode's start-up work (start "with supervisor" apps) once the server is up."""

    async def __call__(self, scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await sync_to_async(_startup, thread_sensitive=False)()
                except Exception as exc:  # the server must still come up; say why loudly
                    log.exception("start-up work failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await close_client()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _startup() -> None:
    from django.db import close_old_connections

    from apps import adapters

    try:
        adapters.discovery().startup()
    finally:
        close_old_connections()


application = ProtocolTypeRouter(
    {
        # The proxy forwards what routing.decide sends elsewhere; Django does the rest.
        "http": ProxyApp(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(WebsocketGateway()),
        "lifespan": LifespanApp(),
    }
)
