"""System checks for configuration that must be right. Stable ids; one line each.

supervisor.E001 APP_MODE unknown            supervisor.E007 DB_DIALECT unknown
supervisor.E002 adapter unknown / conflict   supervisor.E008 adapter not valid for the mode
supervisor.E003 ENVIRONMENT_NAME missing/bad supervisor.E009 SECRET_KEY missing
supervisor.E004 Redis URL missing/bad        supervisor.E010 adapter not in this build
supervisor.E005 ENVIRONMENT_URL not http(s)  supervisor.E011 ENV_FILE unreadable
supervisor.E006 bad number/boolean/level     supervisor.E012 APP_DB_PREFIX / schema db bad
supervisor.E013 METRICS_TOKEN / METRICS_DIR  supervisor.W001 APP_COMMAND_ADPATER misspelled
supervisor.E014 message secrets / keys       supervisor.W002 environment holds master secrets
"""

from __future__ import annotations

import os
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
        messages += _signing_problems(mode)
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
    messages += _metrics_dir_problems()
    return messages


def _signing_problems(mode: str) -> list[Error | Warning]:
    """Every queue message is signed (workers.signing): the supervisor derives each
    environment's key from the master secrets; an environment should hold only its own."""
    secrets, keys = settings.APP_MESSAGE_SECRETS, settings.APP_ENVIRONMENT_KEYS
    how = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
    if mode == "supervisor":
        found: list[Error | Warning] = []
        if not secrets:
            found.append(
                Error(
                    "APP_MODE=supervisor needs APP_MESSAGE_SECRETS: comma-separated secrets of at "
                    f"least 32 characters, the first signs, all verify (make one with {how}).",
                    id="supervisor.E014",
                )
            )
        if keys:
            found.append(
                Error(
                    "APP_ENVIRONMENT_KEYS is for environments (APP_MODE=worker); the supervisor "
                    "derives every environment's key from APP_MESSAGE_SECRETS: unset it.",
                    id="supervisor.E014",
                )
            )
        return found
    if secrets and keys:
        return [
            Error(
                "APP_MODE=worker: set APP_ENVIRONMENT_KEYS or APP_MESSAGE_SECRETS, not both "
                "(APP_ENVIRONMENT_KEYS, the environment's own keys, is the safer).",
                id="supervisor.E014",
            )
        ]
    if not secrets and not keys:
        return [
            Error(
                "APP_MODE=worker needs APP_ENVIRONMENT_KEYS: print it on the supervisor with "
                "manage.py environment_key <ENVIRONMENT_NAME> (or, for development only, give it "
                "the supervisor's APP_MESSAGE_SECRETS).",
                id="supervisor.E014",
            )
        ]
    if secrets:
        return [
            Warning(
                "APP_MESSAGE_SECRETS on an environment: it holds the master secrets and could "
                "sign messages as any environment; give it APP_ENVIRONMENT_KEYS instead "
                "(manage.py environment_key <ENVIRONMENT_NAME> on the supervisor).",
                id="supervisor.W002",
            )
        ]
    return []


def _metrics_dir_problems() -> list[Error]:
    """METRICS_DIR must be a writable directory: every process writes its counters there."""
    directory = settings.METRICS_DIR
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [
            Error(f"METRICS_DIR={str(directory)!r} cannot be created: {exc}.", id="supervisor.E013")
        ]
    if not os.access(directory, os.W_OK | os.X_OK):
        return [Error(f"METRICS_DIR={str(directory)!r} is not writable.", id="supervisor.E013")]
    return []


def startup_errors() -> list[str]:
    """One line per configuration error, for servers that start without manage.py."""
    return [f"{m.id}: {m.msg}" for m in check_settings() if m.is_serious()]
