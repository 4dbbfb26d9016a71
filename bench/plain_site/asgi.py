"""Django's ASGI application, plus the lifespan messages uvicorn's `--lifespan on` sends
(Django's handler refuses them), so the plain site runs with the environment's flags."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.plain_site.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()


async def application(scope, receive, send):
    if scope["type"] != "lifespan":
        return await django_application(scope, receive, send)
    for phase in ("startup", "shutdown"):
        assert (await receive())["type"] == f"lifespan.{phase}"
        await send({"type": f"lifespan.{phase}.complete"})
    return None
