"""Websockets under /apps/<name>/: served here (the app's own consumers) or proxied to the
app's environment through Channels with the `websockets` client. Close codes propagate both
ways. The decision is routing.decide, as for HTTP."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from apps.gateway.proxy import _header, decide_for_scope
from apps.gateway.routing import Forward, Page, Serve

log = logging.getLogger(__name__)

_FORWARDED = (b"cookie", b"user-agent", b"accept-language")


def _sendable(code: int | None) -> int:
    """A close code one may send (1005/1006/1015 are reserved for reporting only)."""
    if code is None or code in (1005, 1006, 1015) or not (1000 <= code <= 4999):
        return 1000
    return code


class WebsocketProxy(AsyncWebsocketConsumer):
    upstream = None
    pump: asyncio.Task | None = None

    async def connect(self):
        url = self.scope["upstream_url"]
        headers = [
            (k.decode(), v.decode("latin-1")) for k, v in self.scope["headers"] if k in _FORWARDED
        ]
        headers.append(("X-Forwarded-Prefix", f"/apps/{self.scope['app_name']}"))
        origin = _header(self.scope["headers"], b"origin").decode("latin-1") or None
        try:
            self.upstream = await ws_connect(
                url,
                additional_headers=headers,
                origin=origin,
                subprotocols=self.scope.get("subprotocols") or None,
                open_timeout=settings.PROXY_CONNECT_TIMEOUT,
                max_size=2**24,
            )
        except (OSError, TimeoutError, InvalidStatus, WebSocketException) as exc:
            log.warning("websocket proxy to %s failed: %s", url, exc)
            await self.close()  # before accept: the client sees the handshake refused
            return
        await self.accept(subprotocol=self.upstream.subprotocol)
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for message in self.upstream:
                if isinstance(message, bytes):
                    await self.send(bytes_data=message)
                else:
                    await self.send(text_data=message)
        except ConnectionClosed:
            pass
        await self.close(code=_sendable(self.upstream.close_code))

    async def receive(self, text_data=None, bytes_data=None):
        try:
            await self.upstream.send(text_data if text_data is not None else bytes_data)
        except ConnectionClosed:
            await self.close(code=_sendable(self.upstream.close_code))

    async def disconnect(self, code):
        if self.upstream is not None:
            await self.upstream.close(code=_sendable(code))
        if self.pump is not None and self.pump is not asyncio.current_task():
            self.pump.cancel()


def _ws_url(base_url: str, scope) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scheme}://{parts.netloc}{raw}" + (f"?{query}" if query else "")


def _tenant_websocket_routes():
    from apps.notes.consumers import NotesLiveConsumer

    return {"/ws/notes/": NotesLiveConsumer.as_asgi()}


class WebsocketGateway:
    """ASGI for websocket scopes."""

    def __init__(self):
        self.tenant_routes = None
        self.live = None

    async def __call__(self, scope, receive, send):
        if scope["path"] == "/admin/live/" and settings.APP_MODE != "worker":
            if self.live is None:  # the supervisor UI's live status (apps.supervisor.live)
                from channels.auth import AuthMiddlewareStack

                from apps.supervisor.live import LiveStatusConsumer

                self.live = AuthMiddlewareStack(LiveStatusConsumer.as_asgi())
            return await self.live(scope, receive, send)
        decision = await decide_for_scope(scope)
        if isinstance(decision, Forward):
            inner = {
                **scope,
                "upstream_url": _ws_url(decision.base_url, scope),
                "app_name": decision.name,
            }
            return await WebsocketProxy.as_asgi()(inner, receive, send)
        if isinstance(decision, Serve):
            if self.tenant_routes is None:
                self.tenant_routes = _tenant_websocket_routes()
            from asgiref.sync import sync_to_async

            from apps.gateway import routing

            await sync_to_async(routing.carry_out, thread_sensitive=False)(decision)
            rest = "/" + scope["path"][len(decision.prefix) :]
            consumer = self.tenant_routes.get(rest)
            if consumer is not None:
                return await consumer({**scope, "sub_app": decision.spec}, receive, send)
        if isinstance(decision, Page):
            log.info("websocket %s refused: %s", scope["path"], decision.title)
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008})
