"""Shared output for the supervisor's management commands: human tables or --json."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError


def emit(command: BaseCommand, rows: list[dict[str, Any]], columns: list[str], as_json: bool):
    if as_json:
        command.stdout.write(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        command.stdout.write("(none)")
        return

    def cell(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return "" if value is None else str(value)

    table = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    header = [c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)]
    command.stdout.write("  ".join(header).rstrip())
    for line in table:
        cells = [v.ljust(w) for v, w in zip(line, widths, strict=True)]
        command.stdout.write("  ".join(cells).rstrip())


def fail(message: str) -> CommandError:
    """One clear line, non-zero exit."""
    return CommandError(message.replace("\n", " "), returncode=2)
