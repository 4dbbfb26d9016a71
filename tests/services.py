"""Find the real PostgreSQL the suite needs: the machine's, or a private one we start."""

from __future__ import annotations

import glob
import os
import shutil
import socket

PG_START_HINT = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
    "(or install the server: apt-get install postgresql)"
)

REDIS_START_HINT = (
    "start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' "
    "--appendonly no (or install it: apt-get install redis-server)"
)


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pg_ctl() -> str | None:
    found = shutil.which("pg_ctl") or sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if isinstance(found, list):
        return found[-1] if found else None
    return found


def machine_pg() -> tuple[str, int]:
    return os.environ.get("DB_HOST", "127.0.0.1"), int(os.environ.get("DB_PORT", "5432"))
