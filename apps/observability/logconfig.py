"""settings.LOGGING, built from LOG_FORMAT and LOG_LEVEL.

json: one JSON object per line (python-json-logger): timestamp (UTC, ISO 8601), level, logger,
      message, mode, program, pid, process_name, environment (on an environment), the bound
      context (command_id, app, env, action) and any `extra=` fields; exc_info as text.
text: one readable line: `2025-01-31 12:00:00,123 INFO workers [command_id=... app=crm
      env=env_a action=start]: message` (the brackets only when something is bound).

Every process applies the same dictionary: Django does at setup, the Celery worker through its
setup_logging signal (supervisor_project/celery.py), so Celery's own lines (task received,
succeeded) come out in the same format. In json mode uvicorn's loggers are taken over too, so
its start-up and access lines are JSON like the rest; in text mode they keep uvicorn's look.
"""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

from apps.observability.logcontext import FIELDS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


class TextFormatter(logging.Formatter):
    """The readable line, with the bound context in brackets after the logger's name."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        pairs = [f"{key}={getattr(record, key)}" for key in FIELDS if hasattr(record, key)]
        record.context = f" [{' '.join(pairs)}]" if pairs else ""
        return super().format(record)


def json_formatter() -> dict[str, Any]:
    return {
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": ["levelname", "name", "message", "process", "processName"],
        "rename_fields": {
            "levelname": "level",
            "name": "logger",
            "process": "pid",
            "processName": "process_name",
        },
        "timestamp": True,
        # uvicorn adds `color_message` (the message with terminal colours) to its records.
        "reserved_attrs": [*RESERVED_ATTRS, "color_message", "context"],
    }


# Celery's loggers that write a line per task sent by beat, received and finished.
CELERY_TASK_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


class HousekeepingFilter(logging.Filter):
    """Leaves out Celery's below-WARNING lines about the periodic housekeeping tasks (beat's
    "Sending due task", "received", "succeeded"): the heartbeat fold alone runs every second,
    which was three lines a second, 250,000 a day, burying the lines about commands. Their
    failures (WARNING and up) and every line about other tasks pass. LOG_HOUSEKEEPING=true
    keeps them all."""

    def __init__(self, tasks: list[str]) -> None:
        super().__init__()
        self.tasks = frozenset(tasks)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or not record.name.startswith(CELERY_TASK_LOGGERS):
            return True
        data = getattr(record, "data", None)  # strategy and trace: {"name": task, ...}
        if isinstance(data, dict) and data.get("name") in self.tasks:
            return False
        args = record.args if isinstance(record.args, tuple) else ()  # beat: (entry, task)
        return not any(isinstance(arg, str) and arg in self.tasks for arg in args)


def logging_config(
    *,
    log_format: str,
    level: str,
    mode: str,
    environment: str = "",
    quiet_tasks: list[str] | None = None,
) -> dict[str, Any]:
    """The LOGGING dictionary (logging.config.dictConfig schema). `quiet_tasks`: the
    periodic tasks whose routine Celery lines are left out (HousekeepingFilter)."""
    as_json = log_format == "json"
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {
                "()": "apps.observability.logcontext.ContextFilter",
                "mode": mode,
                "environment": environment,
            },
            "housekeeping": {
                "()": "apps.observability.logconfig.HousekeepingFilter",
                "tasks": list(quiet_tasks or ()),
            },
        },
        "formatters": {
            "json": json_formatter(),
            "text": {"()": "apps.observability.logconfig.TextFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json" if as_json else "text",
                "filters": ["housekeeping", "context"],
            }
        },
        "root": {"handlers": ["console"], "level": level.upper()},
        "loggers": {"django.db.backends": {"level": "WARNING"}},
    }
    if as_json:
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            # uvicorn configures these before it imports the application; this replaces its
            # plain-text handlers (propagate off: one line per event, not two).
            config["loggers"][name] = {
                "handlers": ["console"],
                "level": level.upper(),
                "propagate": False,
            }
    return config
