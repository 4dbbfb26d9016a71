"""What the runtime needs to know of an app: plain data, no control-plane models.

The control plane (or, on an environment, the config cache) builds an AppSpec; the runtime
provisions, installs, upgrades and serves from it alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DbType = Literal["sqlite", "new_database", "new_schema"]
DB_TYPES: tuple[str, ...] = ("sqlite", "new_database", "new_schema")

# An app name doubles as a database, schema and file name; keep it to a safe identifier.
APP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
RESERVED_APP_NAMES = frozenset(
    {
        "main",
        "admin",
        "api",
        "static",
        "media",
        "apps",
        "supervisor",
        "default",
        "local",
        "postgres",
        "template0",
        "template1",
        "public",
        "information_schema",
        "pg_catalog",
        "healthz",
        "readyz",
        "metrics",
        "ws",
        "login",
        "logout",
    }
)


def app_name_problem(name: object) -> str | None:
    """Why `name` cannot name an app, or None when it can."""
    if not isinstance(name, str) or not name:
        return "a name is required"
    if not APP_NAME_RE.fullmatch(name):
        return "use 1-48 characters: lower-case ASCII letters, digits and _, starting with a letter"
    if name in RESERVED_APP_NAMES or name.startswith("pg_"):
        return f"'{name}' is reserved"
    return None


@dataclass(frozen=True)
class DbServer:
    """A PostgreSQL server the runtime may connect to (credentials included)."""

    host: str
    port: int
    user: str
    password: str = ""
    maintenance_db: str = "postgres"


@dataclass(frozen=True)
class DbSpec:
    type: DbType
    # sqlite: the file; new_database: the database; new_schema: the containing database.
    name: str
    schema: str = ""
    server: DbServer | None = None


@dataclass(frozen=True)
class AppSpec:
    name: str
    title: str
    db: DbSpec
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def alias(self) -> str:
        """The Django database alias of this app's database.

        It names the database settings too, so an app deleted and re-created with the same
        name but another database can never reuse a stale per-thread connection to the old one.
        """
        digest = hashlib.sha256(json.dumps(asdict(self.db), sort_keys=True).encode()).hexdigest()
        return f"app__{self.name}__{digest[:10]}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppSpec:
        db = dict(data["db"])
        server = db.pop("server", None)
        return cls(
            name=data["name"],
            title=data["title"],
            db=DbSpec(**db, server=DbServer(**server) if server else None),
            options=dict(data.get("options") or {}),
        )
