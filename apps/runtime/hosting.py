"""An environment executing commands: the runtime plus a record of what it hosts.

Called by the environment's command task (workers/tasks.py). Knows nothing of the control
plane: the app's configuration comes from the config cache, statuses go out through `send`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import transaction

from apps.runtime import runtime
from apps.runtime.models import HostedApp
from apps.runtime.runtime import AppRuntimeError
from apps.runtime.spec import AppSpec
from workers.messages import TEXT_LIMIT

log = logging.getLogger(__name__)

# send(report_fields) delivers a report to the supervisor (best effort; heartbeats repeat it).
Sender = Callable[[dict[str, Any]], None]


def _now_ns() -> int:
    return time.time_ns()


def record(
    name: str,
    *,
    status: str,
    detail: str,
    command_id: str | None,
    send: Sender,
    env: str,
    credentials: dict[str, str] | None = None,
) -> None:
    at = _now_ns()
    HostedApp.objects.filter(name=name).update(
        status=status, detail=detail[:4000], command_id=command_id or "", status_ns=at
    )
    fields = {
        "env": env,
        "app": name,
        "command_id": command_id,
        "status": status,
        "detail": detail[:4000],
        "at": at,
    }
    if credentials:
        fields["credentials"] = credentials
    send(fields)


def _remember(spec: AppSpec, start_mode: str, desired: str) -> HostedApp:
    hosted, _ = HostedApp.objects.update_or_create(
        name=spec.name,
        defaults={"spec": spec.to_dict(), "start_mode": start_mode, "desired": desired},
    )
    return hosted


def execute(
    *,
    env: str,
    action: str,
    app: str,
    command_id: str,
    config: dict[str, Any] | None,
    drop_database: bool,
    send: Sender,
    lock: Callable[[str], Any],
) -> None:
    """Carry out one command. Idempotent: a redelivered start of a running app does nothing."""
    if action == "ping":  # no-op: answer with a pong report carrying the ping's id
        send({"kind": "pong", "env": env, "command_id": command_id, "at": _now_ns()})
        return
    hosted = HostedApp.objects.filter(name=app).first()
    if (
        hosted is not None
        and hosted.command_id == command_id
        and hosted.status in ("running", "stopped", "error")
        and action != "remove"
    ):
        # Redelivered (late ack after a crash or a lost connection): already done; repeat the
        # outcome so a supervisor that missed it learns it.
        record(
            app,
            status=hosted.status,
            detail=hosted.detail or "already done",
            command_id=command_id,
            send=send,
            env=env,
        )
        return

    def report(status: str, detail: str) -> None:
        record(app, status=status, detail=detail, command_id=command_id, send=send, env=env)

    if config is None and action in ("create", "start", "restart"):
        if hosted is None:
            send(
                {
                    "env": env,
                    "app": app,
                    "command_id": command_id,
                    "status": "error",
                    "detail": "no configuration for this app in the config cache",
                    "at": _now_ns(),
                }
            )
            return
        config = {"spec": hosted.spec, "start_mode": hosted.start_mode}
    spec = AppSpec.from_dict(config["spec"]) if config else AppSpec.from_dict(hosted.spec)
    start_mode = (config or {}).get("start_mode", hosted.start_mode if hosted else "")

    if action == "create":
        # Know the app (so a first visit here asks for a start); never reset one we host.
        HostedApp.objects.get_or_create(
            name=spec.name,
            defaults={"spec": spec.to_dict(), "start_mode": start_mode, "desired": "stopped"},
        )
        return
    if action in ("start", "restart"):
        _remember(spec, start_mode, desired="running")
        if action == "restart":
            runtime.stop(app)

        # One install per app across every environment and supervisor: a lock in Redis held
        # (and extended) while the runtime works; the database's own lock backs it up.
        with lock(app):
            try:
                result = runtime.start(spec, report, report_running=False)
            except AppRuntimeError as exc:
                report("error", str(exc))
                return
        record(
            app,
            status="running",
            detail="serving",
            command_id=command_id,
            send=send,
            env=env,
            credentials=result.credentials,
        )
        return
    if action == "stop":
        if hosted is None:
            send(
                {
                    "env": env,
                    "app": app,
                    "command_id": command_id,
                    "status": "stopped",
                    "detail": "not hosted here",
                    "at": _now_ns(),
                }
            )
            return
        HostedApp.objects.filter(name=app).update(desired="stopped")
        runtime.stop(app)
        report("stopped", "stopped")
        return
    if action == "remove":
        runtime.stop(app)
        if drop_database and hosted is not None:
            try:
                runtime.remove(spec, drop_database=True)
            except AppRuntimeError as exc:
                report("error", str(exc))
                return
        with transaction.atomic():
            HostedApp.objects.filter(name=app).delete()
        send(
            {
                "env": env,
                "app": app,
                "command_id": command_id,
                "status": "not_found",
                "detail": "removed",
                "at": _now_ns(),
            }
        )
        return
    raise AppRuntimeError(f"unknown action {action}")


def heal_interrupted(*, env: str, send: Sender) -> list[str]:
    """At environment start: a start cut short by a crash will never finish by itself.
    Report it failed; the supervisor's reconciliation then starts it again (install resumes)."""
    interrupted = list(
        HostedApp.objects.filter(status__in=("preparing", "initializing", "initialized"))
    )
    for hosted in interrupted:
        record(
            hosted.name,
            status="error",
            command_id=hosted.command_id or None,
            send=send,
            env=env,
            detail="interrupted: the environment restarted during this start",
        )
    return [h.name for h in interrupted]


def hosted_states() -> dict[str, dict[str, Any]]:
    """What this environment hosts, for its heartbeat (with an error's reason: a beat may
    reach the supervisor before the report that carries it, or instead of a lost one)."""
    return {
        h.name: {
            "status": h.status,
            "command_id": h.command_id or None,
            "at": h.status_ns,
            **({"detail": h.detail[:TEXT_LIMIT]} if h.status == "error" else {}),
        }
        for h in HostedApp.objects.all()
    }


class LockKeeper:
    """Extends a redis-py Lock while work goes on, so a long install keeps it; a crashed
    holder stops extending and the lock expires after its TTL (the lock's own timeout)."""

    def __init__(self, lock):
        self.lock = lock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lock-keeper")

    def _run(self) -> None:
        while not self._stop.wait(self.lock.timeout / 3):
            try:
                self.lock.reacquire()
            except Exception:  # lost (expired or Redis gone): the DB install lock still holds
                log.warning("could not extend lock %s", self.lock.name)
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(1)
