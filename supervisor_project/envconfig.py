"""Typed readers for environment variables.

Every reader records a problem instead of raising, so that settings always load and the
problems surface as Django system checks with stable ids (see apps/supervisor/checks.py): one
clear line each, and start-up stops. A bad value never silently becomes the default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class EnvProblems:
    """Problems found while reading settings: (check id, message) pairs."""

    errors: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def error(self, check_id: str, message: str) -> None:
        self.errors.append((check_id, message))

    def warn(self, check_id: str, message: str) -> None:
        self.warnings.append((check_id, message))


PROBLEMS = EnvProblems()


def read_env_file(path: str) -> None:
    """Load KEY=VALUE lines from `path` into os.environ (existing variables win)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        PROBLEMS.error("supervisor.E011", f"ENV_FILE={path!r} cannot be read: {exc.strerror}.")
        return
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        if not sep or not key.isidentifier():
            PROBLEMS.error("supervisor.E011", f"ENV_FILE={path!r} line {number} is not KEY=VALUE.")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        os.environ.setdefault(key, value)


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_choice(name: str, choices: Iterable[str], default: str, check_id: str) -> str:
    # Set but empty (compose's `KEY=`, an unset ${VAR}) means "not set", as for numbers.
    value = (env_str(name) or default).lower()
    allowed = sorted(choices)
    if value not in allowed:
        PROBLEMS.error(
            check_id, f"{name}={value!r} is not one of {', '.join(allowed)}; no fallback is used."
        )
    return value


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int = 10**9) -> int:
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        PROBLEMS.error("supervisor.E006", f"{name}={raw!r} is not a whole number.")
        return default
    if not minimum <= value <= maximum:
        PROBLEMS.error("supervisor.E006", f"{name}={value} is outside {minimum}..{maximum}.")
        return default
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0, maximum: float = 1e9) -> float:
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        PROBLEMS.error("supervisor.E006", f"{name}={raw!r} is not a number.")
        return default
    if not minimum <= value <= maximum:
        PROBLEMS.error("supervisor.E006", f"{name}={value} is outside {minimum}..{maximum}.")
        return default
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_bool(name: str, default: bool) -> bool:
    raw = env_str(name).lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    PROBLEMS.error("supervisor.E006", f"{name}={raw!r} is not a boolean (use true or false).")
    return default


def env_list(name: str, default: list[str]) -> list[str]:
    raw = env_str(name)
    if not raw:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def http_url_problem(value: str) -> str | None:
    """Why `value` is not a usable http(s) base URL, or None when it is."""
    if any(ch.isspace() for ch in value):
        return "contains white space"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    if parts.username or parts.password:
        return "must not carry credentials"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    return None


def redis_url_problem(value: str) -> str | None:
    """Why `value` is not a usable Redis URL, or None when it is."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return "must start with redis://, rediss:// or unix://"
    if parts.scheme != "unix" and not parts.hostname:
        return "has no host"
    return None


def token_problem(value: str, *, minimum: int = 32) -> str | None:
    """Why `value` is not a usable bearer token, or None when it is."""
    if len(value) < minimum:
        return (
            f"must be at least {minimum} characters long (e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if not all("!" <= ch <= "~" for ch in value):
        return "must be printable ASCII without spaces (it is sent in an HTTP header)"
    return None


def secret_problem(value: str, *, minimum: int = 32) -> str | None:
    """Why `value` is not a usable signing secret, or None when it is (never quotes it)."""
    if len(value) < minimum:
        return (
            f"is {len(value)} characters long; use at least {minimum} (e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    if not all("!" <= ch <= "~" for ch in value):
        return "must be printable ASCII without spaces"
    return None


def env_secrets(name: str, check_id: str, *, minimum: int = 32) -> list[str]:
    """Comma-separated secrets (the first signs, all verify). A bad one is reported by its
    position, never by its value; it is still returned, so that no "missing" error hides the
    real problem."""
    values = env_list(name, [])
    for position, value in enumerate(values, start=1):
        if problem := secret_problem(value, minimum=minimum):
            PROBLEMS.error(check_id, f"{name}: secret {position} of {len(values)} {problem}.")
    if len(set(values)) != len(values):
        PROBLEMS.error(check_id, f"{name} lists the same secret twice.")
    return values


def env_hex_keys(name: str, check_id: str) -> list[str]:
    """Comma-separated 256-bit keys in hex (as `manage.py environment_key` prints them)."""
    values = [value.lower() for value in env_list(name, [])]
    for position, value in enumerate(values, start=1):
        try:
            valid = len(bytes.fromhex(value)) == 32
        except ValueError:
            valid = False
        if not valid:
            PROBLEMS.error(
                check_id,
                f"{name}: key {position} of {len(values)} is not 64 hex digits (print the "
                "keys on the supervisor: manage.py environment_key <ENVIRONMENT_NAME>).",
            )
    return values
