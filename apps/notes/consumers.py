"""Live updates of the example module: /apps/<name>/ws/notes/ pushes the app's note count
whenever a note changes. Staff of that app only (its own session, its own database)."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from apps.runtime.routing import using_app


def group_for(alias: str) -> str:
    return f"notes.{alias}"


class NotesLiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        spec = self.scope["sub_app"]
        self.alias = spec.alias
        if not await self._staff(spec):
            # Accept, then close with a code (a refused handshake carries none): 4403 says
            # "not allowed" to the client, through the proxy too.
            await self.accept()
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(group_for(self.alias), self.channel_name)
        await self.accept()
        await self.send_json({"type": "notes", "count": await self._count()})

    async def disconnect(self, code):
        if getattr(self, "alias", None):
            await self.channel_layer.group_discard(group_for(self.alias), self.channel_name)

    async def notes_changed(self, event):
        await self.send_json({"type": "notes", "count": await self._count()})

    async def receive_json(self, content, **kwargs):
        if content == {"type": "ping"}:
            await self.send_json({"type": "pong"})

    @database_sync_to_async
    def _count(self) -> int:
        from apps.notes.models import Note

        with using_app(self.alias):
            return Note.objects.count()

    @database_sync_to_async
    def _staff(self, spec) -> bool:
        from django.contrib.auth import get_user_model
        from django.contrib.sessions.backends.db import SessionStore

        cookies = {}
        for key, value in self.scope.get("headers", []):
            if key == b"cookie":
                for part in value.decode("latin-1").split(";"):
                    name, _, val = part.strip().partition("=")
                    cookies[name] = val
        key = cookies.get(f"{settings.SESSION_COOKIE_NAME}_{spec.name}")
        if not key:
            return False
        with using_app(self.alias):
            session = SessionStore(session_key=key).load()
            user_id = session.get("_auth_user_id")
            return (
                bool(user_id)
                and get_user_model()
                ._default_manager.filter(pk=user_id, is_staff=True, is_active=True)
                .exists()
            )
