"""Which Django permissions each operation on applications needs.

One table for every surface that acts on behalf of a named user: the JSON API, the
`manage.py apps --as-user` commands and the proxy page's Start button. The admin enforces the
same permissions through its actions (apps/supervisor/admin.py).
"""

from __future__ import annotations

VIEW = "supervisor.view_application"
CREATE = "supervisor.add_application"
START = "supervisor.start_application"  # start, stop and restart
DELETE = "supervisor.delete_application"
DROP_DATABASE = "supervisor.drop_application_database"  # needs DELETE as well

OPERATIONS: dict[str, tuple[str, ...]] = {
    "list": (VIEW,),
    "view": (VIEW,),
    "history": (VIEW,),
    "create": (CREATE,),
    "start": (START,),
    "stop": (START,),
    "restart": (START,),
    "delete": (DELETE,),
    "delete_with_database": (DELETE, DROP_DATABASE),
}


def required(operation: str, *, drop_database: bool = False) -> tuple[str, ...]:
    if operation == "delete" and drop_database:
        operation = "delete_with_database"
    return OPERATIONS[operation]


def missing(user, operation: str, *, drop_database: bool = False) -> list[str]:
    """The permissions `user` lacks for `operation` (empty: allowed). Inactive users lack all."""
    return [p for p in required(operation, drop_database=drop_database) if not user.has_perm(p)]
