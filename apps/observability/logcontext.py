"""Log context: fields bound for a stretch of work and added to every log record in it.

    with bind(command_id=command["id"], app=command["app"], env=command["env"], action="start"):
        ...  # every log line here, in any logger, carries those four fields

The context lives in a contextvar, so it follows the code into asgiref's sync_to_async and
async_to_sync threads (they copy the context) and never leaks between two Celery tasks or two
requests. The command id is the message's own id: the supervisor binds it when it sends the
command and when it ingests the environment's reports, the environment when it runs the
command, so one start can be followed across processes by grepping its id.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType

# The fields callers bind; others are accepted too (they show in JSON lines all the same).
FIELDS = ("command_id", "app", "env", "action")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("appsup_log_context", default=_EMPTY)


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Add `fields` to every log record made inside the block (None and "" are left out).

    Nested binds add to (and may override) the outer ones; leaving the block restores them.
    """
    values = {key: str(value) for key, value in fields.items() if value is not None and value != ""}
    token = _context.set(MappingProxyType({**_context.get(), **values}))
    try:
        yield
    finally:
        _context.reset(token)


def bound() -> dict[str, str]:
    """The fields bound here and now."""
    return dict(_context.get())


def program_name(argv: list[str] | None = None) -> str:
    """What this process is, for the logs: `celery`, `uvicorn`, `manage.py run_environment`."""
    argv = sys.argv if argv is None else argv
    if not argv or argv[0] in ("", "-c", "-m"):
        return "python"
    first = os.path.basename(argv[0])
    if first == "__main__.py":  # python -m celery / python -m uvicorn
        return os.path.basename(os.path.dirname(argv[0])) or "python"
    if first == "manage.py":
        return f"manage.py {argv[1]}" if len(argv) > 1 else "manage.py"
    return first


class ContextFilter(logging.Filter):
    """Adds the bound fields and the process's identity to every record a handler emits.

    Put on handlers, not loggers: a logger's filters do not see records propagated from its
    children. A field given explicitly (`extra={"app": ...}`) wins over the bound one.
    """

    def __init__(self, name: str = "", *, mode: str = "", environment: str = "") -> None:
        super().__init__(name)
        self.static = {"mode": mode, "program": program_name()}
        if environment:
            self.static["environment"] = environment

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.static.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True
