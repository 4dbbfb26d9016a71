"""The one message format between supervisor and environments: typed, validated, versioned.

Commands (supervisor -> env.<name> queue), reports, heartbeats, goodbyes and start requests
(environment -> supervisor queue) are plain JSON objects. `decode` refuses anything that is
not exactly one of them; callers log and drop what it refuses, so one bad message never stops
a consumer.

On the queues every message also carries a signed envelope (`kid`, `ts`, `mid`, `sig`):
workers.signing adds it when a message is published and checks it before `decode` runs.
`decode` ignores those fields, so it validates the same message with or without them.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal, NotRequired, TypedDict

from supervisor_project.envconfig import http_url_problem

VERSION = 1
MAX_TEXT = 4000
MAX_APPS_IN_HEARTBEAT = 10_000

ACTIONS = ("create", "start", "stop", "restart", "remove", "ping")
STATUSES = ("stopped", "preparing", "initializing", "initialized", "running", "error", "not_found")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
NAME = _NAME  # an environment's or app's name (workers.signing checks `kid` with it)


class MessageError(ValueError):
    """A message we do not accept: the text says why (for the log), `reason` is a short
    token (for the rejected-messages metric)."""

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


class Command(TypedDict):
    v: int
    type: Literal["command"]
    id: str
    app: str
    env: str
    action: str
    drop_database: bool
    sent_at: float


class Report(TypedDict):
    v: int
    type: Literal["report"]
    env: str
    app: str
    command_id: str | None
    status: str
    detail: str
    at: int  # nanoseconds on the environment's clock: orders reports of one environment
    credentials: NotRequired[dict[str, str]]  # a generated initial superuser, shown once


class Pong(TypedDict):
    """An environment's reply to a `ping` command: a report of kind "pong" (no app, no
    status), carrying the ping's command id."""

    v: int
    type: Literal["report"]
    kind: Literal["pong"]
    env: str
    command_id: str
    at: int  # nanoseconds on the environment's clock


class Heartbeat(TypedDict):
    v: int
    type: Literal["heartbeat"]
    env: str
    url: str
    proxy_url: str
    version: str
    started_at: float
    interval: int
    apps: dict[str, dict[str, Any]]  # app -> {"status", "command_id", "at", "detail"}


class Goodbye(TypedDict):
    v: int
    type: Literal["goodbye"]
    env: str
    started_at: float


class StartRequest(TypedDict):
    v: int
    type: Literal["start_request"]
    env: str
    app: str


TEXT_LIMIT = 500  # characters of a plain text field (a beat's error reason among them)


def _str(
    data: dict, key: str, *, pattern: re.Pattern | None = None, limit: int = TEXT_LIMIT
) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise MessageError(f"{key} must be a string")
    if len(value) > limit:
        raise MessageError(f"{key} is longer than {limit} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise MessageError(f"{key}={value[:60]!r} is not a valid name")
    return value


def _url(data: dict, key: str, *, optional: bool = False) -> str:
    """An environment's address: the proxy forwards to it, so only a plain http(s) URL."""
    value = _str(data, key)
    if not value and optional:
        return ""
    if problem := http_url_problem(value):
        raise MessageError(f"{key} {problem}")
    return value


def _uuid(data: dict, key: str, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise MessageError(f"{key} must be a UUID") from None


def _number(data: dict, key: str, kind: type = float, minimum: float = 0) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError(f"{key} must be a number")
    if kind is int and not isinstance(value, int):
        raise MessageError(f"{key} must be a whole number")
    if value < minimum:
        raise MessageError(f"{key} must be >= {minimum}")
    return kind(value)


def _no_app(data: dict) -> str:
    """A ping names no app."""
    if data.get("app", "") != "":
        raise MessageError("a ping names no app")
    return ""


def decode(data: Any) -> Command | Report | Pong | Heartbeat | Goodbye | StartRequest:
    if not isinstance(data, dict):
        raise MessageError("a message must be a JSON object")
    if data.get("v") != VERSION:
        raise MessageError(f"unsupported message version {data.get('v')!r}", "bad_version")
    kind = data.get("type")
    env = _str(data, "env", pattern=_NAME)
    if kind == "command":
        action = _str(data, "action")
        if action not in ACTIONS:
            raise MessageError(f"unknown action {action[:40]!r}")
        if not isinstance(data.get("drop_database", False), bool):
            raise MessageError("drop_database must be true or false")
        return Command(
            v=VERSION,
            type="command",
            id=_uuid(data, "id"),
            env=env,
            action=action,
            app=_str(data, "app", pattern=_NAME) if action != "ping" else _no_app(data),
            drop_database=data.get("drop_database", False),
            sent_at=_number(data, "sent_at"),
        )
    if kind == "report" and "kind" in data:
        if data["kind"] != "pong":
            raise MessageError(f"unknown report kind {str(data['kind'])[:40]!r}")
        extra = sorted({"app", "status", "detail", "credentials"} & data.keys())
        if extra:
            raise MessageError(f"a pong carries no {', '.join(extra)}")
        return Pong(
            v=VERSION,
            type="report",
            kind="pong",
            env=env,
            command_id=_uuid(data, "command_id"),
            at=_number(data, "at", int),
        )
    if kind == "report":
        status = _str(data, "status")
        if status not in STATUSES:
            raise MessageError(f"unknown status {status[:40]!r}")
        report = Report(
            v=VERSION,
            type="report",
            env=env,
            app=_str(data, "app", pattern=_NAME),
            command_id=_uuid(data, "command_id", optional=True),
            status=status,
            detail=_str(data, "detail", limit=MAX_TEXT),
            at=_number(data, "at", int),
        )
        if data.get("credentials") is not None:
            credentials = data["credentials"]
            if not isinstance(credentials, dict):
                raise MessageError("credentials must be an object")
            report["credentials"] = {
                "username": _str(credentials, "username", limit=150),
                "password": _str(credentials, "password", limit=128),
            }
        return report
    if kind == "heartbeat":
        apps = data.get("apps")
        if not isinstance(apps, dict) or len(apps) > MAX_APPS_IN_HEARTBEAT:
            raise MessageError("apps must be an object of at most 10000 entries")
        clean: dict[str, dict[str, Any]] = {}
        for name, state in apps.items():
            if (
                not isinstance(name, str)
                or not _NAME.fullmatch(name)
                or not isinstance(state, dict)
            ):
                raise MessageError("apps must map app names to objects")
            if state.get("status") not in STATUSES:
                raise MessageError(f"apps.{name}.status is not a status")
            clean[name] = {
                "status": state["status"],
                "command_id": _uuid(state, "command_id", optional=True),
                "at": _number(state, "at", int),
                # an error's reason, so a beat that arrives before the report keeps it
                "detail": _str(state, "detail") if "detail" in state else "",
            }
        return Heartbeat(
            v=VERSION,
            type="heartbeat",
            env=env,
            url=_url(data, "url"),
            proxy_url=_url(data, "proxy_url", optional=True),
            version=_str(data, "version", limit=64),
            started_at=_number(data, "started_at"),
            interval=_number(data, "interval", int, minimum=1),
            apps=clean,
        )
    if kind == "goodbye":
        return Goodbye(v=VERSION, type="goodbye", env=env, started_at=_number(data, "started_at"))
    if kind == "start_request":
        return StartRequest(
            v=VERSION, type="start_request", env=env, app=_str(data, "app", pattern=_NAME)
        )
    raise MessageError(f"unknown message type {str(kind)[:40]!r}")
