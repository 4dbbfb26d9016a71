"""System checks for configuration that must be right. Stable ids; one line each.

supervisor.E001 APP_MODE unknown            supervisor.E007 DB_DIALECT unknown
supervisor.E002 adapter unknown / conflict   supervisor.E008 adapter not valid for the mode
supervisor.E003 ENVIRONMENT_NAME missing/bad supervisor.E009 SECRET_KEY missing
supervisor.E004 Redis URL missing/bad        supervisor.E010 adapter not in this build
supervisor.E005 ENVIRONMENT_URL not http(s)  supervisor.E011 ENV_FILE unreadable
supervisor.E006 bad number/boolean/level     supervisor.E012 APP_DB_PREFIX / schema db bad
supervisor.W001 APP_COMMAND_ADPATER misspelled
"""

from __future__ import annotations

import re

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from apps.supervisor.validators import ENV_NAME_RE
from supervisor_project.envconfig import PROBLEMS, redis_url_problem

# Which adapters each mode may use.
_VALID = {
    "local": {"discovery": {"local"}, "process": {"local"}, "command": {"local"}},
    "supervisor": {"discovery": {"remote"}, "process": {"remote"}, "command": {"redis"}},
    "worker": {"discovery": {"remote"}, "process": {"local"}, "command": {"redis"}},
}
# Adapters this build implements.
_IMPLEMENTED = {
    "discovery": {"local", "remote"},
    "process": {"local", "remote"},
    "command": {"local", "redis"},
}
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


@register(Tags.compatibility, deploy=False)
def check_settings(app_configs=None, **kwargs):
    messages = [Error(msg, id=cid) for cid, msg in PROBLEMS.errors]
    messages += [Warning(msg, id=cid) for cid, msg in PROBLEMS.warnings]
    mode = settings.APP_MODE
    if mode not in _VALID:
        return messages  # E001 already says why
    chosen = {
        "discovery": settings.APP_DISCOVERY_ADAPTER,
        "process": settings.APP_PROCESS_ADAPTER,
        "command": settings.APP_COMMAND_ADAPTER,
    }
    known = {
        "discovery": {"local", "remote"},
        "process": {"local", "remote"},
        "command": {"local", "redis"},
    }
    for kind, value in chosen.items():
        variable = f"APP_{kind.upper()}_ADAPTER"
        if value not in known[kind]:
            continue  # E002 already says why
        if value not in _VALID[mode][kind]:
            allowed = ", ".join(sorted(_VALID[mode][kind]))
            messages.append(
                Error(
                    f"{variable}={value} does not work with APP_MODE={mode} (use {allowed}).",
                    id="supervisor.E008",
                )
            )
        elif value not in _IMPLEMENTED[kind]:
            messages.append(
                Error(
                    f"{variable}={value} (APP_MODE={mode}) is not implemented in this build; "
                    "only APP_MODE=local runs today.",
                    id="supervisor.E010",
                )
            )
    if mode != "local":
        if mode == "supervisor" and settings.ENVIRONMENT_NAME:
            messages.append(
                Error(
                    "ENVIRONMENT_NAME is for environments (APP_MODE=worker); unset it for "
                    "the supervisor.",
                    id="supervisor.E003",
                )
            )
        if not settings.ENVIRONMENT_NAME and mode == "worker":
            messages.append(Error("APP_MODE=worker needs ENVIRONMENT_NAME.", id="supervisor.E003"))
        uses_redis = "remote" in (chosen["discovery"], chosen["process"])
        for variable, needed in (
            ("APP_SUPERVISOR_REDIS_URL", uses_redis),
            ("APP_COMMAND_REDIS_URL", chosen["command"] == "redis"),
        ):
            value = getattr(settings, variable)
            if needed and not value:
                messages.append(
                    Error(f"{variable} must be set when APP_MODE={mode}.", id="supervisor.E004")
                )
            elif value and (problem := redis_url_problem(value)):
                messages.append(Error(f"{variable} {problem}.", id="supervisor.E004"))
        if mode == "worker" and not settings.ENVIRONMENT_URL:
            messages.append(
                Error(
                    "APP_MODE=worker needs ENVIRONMENT_URL (http or https).", id="supervisor.E005"
                )
            )
    if settings.ENVIRONMENT_NAME and not ENV_NAME_RE.fullmatch(settings.ENVIRONMENT_NAME):
        messages.append(
            Error(
                f"ENVIRONMENT_NAME={settings.ENVIRONMENT_NAME!r} must be 1-48 lower-case "
                "letters, digits or _, starting with a letter.",
                id="supervisor.E003",
            )
        )
    prefix = settings.APP_DB_PREFIX
    if not _IDENT.fullmatch(prefix) or len(prefix) > 15:
        messages.append(
            Error(
                f"APP_DB_PREFIX={prefix!r} must be 1-15 lower-case letters, digits or _.",
                id="supervisor.E012",
            )
        )
    if not _IDENT.fullmatch(settings.APP_SCHEMA_DATABASE) or len(settings.APP_SCHEMA_DATABASE) > 63:
        messages.append(
            Error(
                f"APP_SCHEMA_DATABASE={settings.APP_SCHEMA_DATABASE!r} is not a safe database "
                "name.",
                id="supervisor.E012",
            )
        )
    return messages


def startup_errors() -> list[str]:
    """One line per configuration error, for servers that start without manage.py."""
    return [f"{m.id}: {m.msg}" for m in check_settings() if m.is_serious()]
