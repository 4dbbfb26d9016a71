"""Validation of operator input that the models and forms share."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from django.core.exceptions import ValidationError

from apps.runtime.spec import app_name_problem
from supervisor_project.envconfig import http_url_problem

ENV_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$"
)
DB_HOST_RE = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,253}$")

# Options a sub-app accepts; anything else is refused rather than silently kept.
OPTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "admin_username": {"type": "string", "pattern": r"^[\w.@+-]{1,150}\Z"},
        "admin_password": {"type": "string", "minLength": 10, "maxLength": 128},
        "admin_email": {"type": "string", "maxLength": 254, "format": "email"},
        "description": {"type": "string", "maxLength": 2000},
    },
}
_OPTIONS_VALIDATOR = jsonschema.Draft202012Validator(
    OPTIONS_SCHEMA, format_checker=jsonschema.FormatChecker()
)


def validate_app_name(value: str) -> None:
    if problem := app_name_problem(value):
        raise ValidationError(problem, code="invalid_name")


def validate_environment_name(value: str) -> None:
    if not isinstance(value, str) or not ENV_NAME_RE.fullmatch(value):
        raise ValidationError(
            "use 1-48 characters: lower-case ASCII letters, digits and _, starting with a letter",
            code="invalid_environment_name",
        )


def validate_http_url(value: str) -> None:
    if value and (problem := http_url_problem(value)):
        raise ValidationError(f"URL {problem}.", code="invalid_url")


def validate_hostname(value: str) -> None:
    if not HOSTNAME_RE.fullmatch(value or ""):
        raise ValidationError(
            "enter a lower-case host name such as shop.example.com", code="invalid_domain"
        )


def validate_db_host(value: str) -> None:
    if value and not DB_HOST_RE.fullmatch(value):
        raise ValidationError("enter a host name or IP address", code="invalid_db_host")


# PostgreSQL's own databases: a schema there would leak into every new database (templates)
# or into the server's maintenance database.
RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})


def validate_options(value: Any) -> None:
    errors = sorted(_OPTIONS_VALIDATOR.iter_errors(value), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = ".".join(str(p) for p in first.path) or "options"
        raise ValidationError(f"{where}: {first.message}", code="invalid_options")
