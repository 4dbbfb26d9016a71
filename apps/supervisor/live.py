"""Live status for the supervisor UI: what changed is pushed to staff browsers over a
Channels websocket (/admin/live/) within a second of being stored.

Writers (services, in the web process or in the job worker) call `apps_changed` or
`environment_changed` inside their transaction; once it commits, the new state is read and
handed to the publisher, which coalesces everything for FLUSH_SECONDS and sends one group
message through the channel layer (channels-redis in supervisor mode, so a report stored by
the job worker reaches the browsers connected to any web process; in-memory in local mode).
The consumer passes messages on; a browser that (re)connects asks for the current state of
what it shows, so nothing changed while it was away is missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.supervisor import selectors
from apps.supervisor.models import Deployment, Environment
from apps.supervisor.statuses import AppStatus, Desired

log = logging.getLogger(__name__)

GROUP = "supervisor.live"
FLUSH_SECONDS = 0.1
CHUNK = 500  # items per group message
MAX_SUBSCRIBE = 5000


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="milliseconds") if value else None


def deployment_items(deployments: Iterable[Deployment], now: datetime) -> dict[str, dict]:
    """Display state of deployments (environment and application selected), keyed for the
    publisher. A start queue's waiting environments say `queued`, the first one `next`."""
    # Read time, taken before the rows are read: each process publishes what it read after its
    # own commit, and two can arrive in either order; the page keeps the newest read per item.
    version = time.time_ns() // 1000  # µs: exact in a browser's number
    deployments = list(deployments)
    next_of_app: dict[int, int] = {}
    for d in sorted(deployments, key=lambda d: (d.position, d.environment.name)):
        if _queued(d) and d.application_id not in next_of_app:
            next_of_app[d.application_id] = d.pk
    items = {}
    for d in deployments:
        queued = _queued(d)
        if queued:
            step = "queued, next" if next_of_app.get(d.application_id) == d.pk else "queued"
        else:
            step = d.detail
        items[f"d{d.pk}"] = {
            "kind": "deployment",
            "v": version,
            "id": d.pk,
            "app": d.application.name,
            "env": d.environment.name,
            "status": selectors.deployment_status(d, now),
            "desired": d.desired,
            "step": step,
            "error": d.error if d.status == AppStatus.ERROR else "",
            "at": _iso(d.status_at),
        }
    return items


def _queued(d: Deployment) -> bool:
    return (
        d.desired == Desired.RUNNING
        and d.command_action == "start"
        and d.command_id is not None
        and d.command_sent_at is None
    )


def environment_item(environment: Environment, now: datetime) -> dict[str, Any]:
    return {
        "kind": "environment",
        "v": time.time_ns() // 1000,
        "name": environment.name,
        "state": selectors.environment_state(environment, now),
        "stored": environment.status,
        "last_heartbeat_at": _iso(environment.last_heartbeat_at),
        "interval": environment.heartbeat_interval,
        "grace": settings.HEARTBEAT_GRACE,
        "started_at": _iso(environment.started_at),
        "version": environment.version,
    }


def _deployments_of(**filters) -> Iterable[Deployment]:
    return Deployment.objects.filter(**filters).select_related("environment", "application")


# --- what writers call ---------------------------------------------------------------------
def apps_changed(application_ids: Iterable[int]) -> None:
    """After commit: push the state of every deployment of these apps."""
    ids = set(application_ids)
    if ids:
        transaction.on_commit(lambda: _push_apps(ids))


def environment_changed(environment: Environment, *, with_deployments: bool = False) -> None:
    """After commit: push an environment's liveness (and its apps' badges when liveness
    changes what they show: offline makes them `unknown`, back online restores them)."""
    name = environment.name
    if with_deployments:
        transaction.on_commit(lambda: _push_environment(name, True))
        return
    # The caller's row is current: no need to read it again (a heartbeat does this).
    transaction.on_commit(
        lambda: publisher.publish({f"e{name}": environment_item(environment, timezone.now())})
    )


def environment_removed(name: str) -> None:
    transaction.on_commit(
        lambda: publisher.publish({f"e{name}": {"kind": "environment", "name": name, "gone": True}})
    )


def _push_apps(ids: set[int]) -> None:
    try:
        now = timezone.now()
        publisher.publish(deployment_items(_deployments_of(application_id__in=ids), now))
    except Exception:  # live updates must never break the write that triggered them
        log.exception("live update of apps %s failed", sorted(ids))


def _push_environment(name: str, with_deployments: bool) -> None:
    try:
        now = timezone.now()
        environment = Environment.objects.filter(name=name).first()
        if environment is None:
            return
        items = {f"e{name}": environment_item(environment, now)}
        if with_deployments:
            items.update(deployment_items(_deployments_of(environment=environment), now))
        publisher.publish(items)
    except Exception:
        log.exception("live update of environment %s failed", name)


def snapshot(deployment_ids: list[int], environment_names: list[str]) -> list[dict]:
    """The current state of what a page shows (sent when its socket (re)connects)."""
    now = timezone.now()
    items = deployment_items(_deployments_of(pk__in=deployment_ids), now)
    for environment in Environment.objects.filter(name__in=environment_names):
        items[f"e{environment.name}"] = environment_item(environment, now)
    return list(items.values())


# --- the publisher ---------------------------------------------------------------------------
class Publisher:
    """Coalesces items (newest wins per key) and sends them as group messages.

    Sends on the web process's event loop when a consumer lives there (the in-memory layer
    only works on its own loop), otherwise on a background loop of its own (job worker).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict] = {}
        self._scheduled = False
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._server_loop = loop

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        if self._pid != os.getpid():  # forked (Celery's prefork pool): start afresh
            self.__init__()
        if self._server_loop is not None and not self._server_loop.is_closed():
            return self._server_loop
        layer = get_channel_layer()
        if layer is None or isinstance(layer, InMemoryChannelLayer):
            return None  # nobody can listen to this process's in-memory layer
        with self._lock:
            if self._own_loop is None:
                self._own_loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._own_loop.run_forever, name="live-publisher", daemon=True
                ).start()
        return self._own_loop

    def publish(self, items: dict[str, dict]) -> None:
        if not items:
            return
        loop = self._loop()
        if loop is None:
            return
        with self._lock:
            self._pending.update(items)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(loop.call_later, FLUSH_SECONDS, self._start_flush, loop)
        except RuntimeError:  # the loop closed under us (server shutting down)
            with self._lock:
                self._scheduled = False

    def _start_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.create_task(self._flush())

    async def _flush(self) -> None:
        with self._lock:
            items, self._pending, self._scheduled = list(self._pending.values()), {}, False
        layer = get_channel_layer()
        for start in range(0, len(items), CHUNK):
            try:
                await layer.group_send(
                    GROUP, {"type": "live.update", "items": items[start : start + CHUNK]}
                )
            except Exception as exc:  # Redis away: the page's next subscribe catches up
                log.warning("live update not sent: %s", exc)
                return


publisher = Publisher()


# --- the websocket ---------------------------------------------------------------------------
class LiveStatusConsumer(AsyncJsonWebsocketConsumer):
    """/admin/live/: logged-in active staff only (others: closed with 4403)."""

    joined = False

    async def connect(self):
        user = self.scope.get("user")
        if not (user is not None and user.is_active and user.is_staff):
            await self.accept()
            await self.close(code=4403)
            return
        publisher.attach_loop(asyncio.get_running_loop())
        await self.channel_layer.group_add(GROUP, self.channel_name)
        self.joined = True
        await self.accept()

    async def disconnect(self, code):
        if self.joined:
            await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or content.get("type") != "subscribe":
            await self.send_json({"type": "error", "message": "expected {type: subscribe}"})
            return
        deployments = content.get("deployments") or []
        environments = content.get("environments") or []
        if not (
            isinstance(deployments, list)
            and isinstance(environments, list)
            and len(deployments) + len(environments) <= MAX_SUBSCRIBE
            and all(isinstance(i, int) and not isinstance(i, bool) for i in deployments)
            and all(isinstance(n, str) and len(n) <= 48 for n in environments)
        ):
            await self.send_json({"type": "error", "message": "bad subscribe message"})
            return
        items = await database_sync_to_async(snapshot)(deployments, environments)
        await self.send_json({"type": "update", "items": items})

    async def live_update(self, event):
        await self.send_json({"type": "update", "items": event["items"]})
