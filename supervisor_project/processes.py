"""Command lines of the project's long-running processes, in one place.

run_environment, `make cluster`, the benchmarks and the integration tests start the same
Celery workers and ASGI servers; they all build the command here.
"""

from __future__ import annotations

import sys

# How long our ASGI servers (environments among them) keep an idle client connection. Set
# explicitly (it is uvicorn's default) so that the proxy's own idle expiry,
# PROXY_KEEPALIVE_SECONDS, can be held below it by the settings' range check.
ASGI_KEEPALIVE_SECONDS = 5
# The flags an environment's uvicorn runs with (run_environment; bench/routing compares a plain
# Django site served the same way).
ENVIRONMENT_ASGI_FLAGS = ("--lifespan", "on", "--no-server-header")


def celery_worker_argv(
    queue: str,
    node: str,
    *,
    concurrency: int,
    beat_schedule: str = "",
    loglevel: str = "INFO",
    app: str = "supervisor_project",
) -> list[str]:
    """A Celery worker of `app` (the project's by default) consuming `queue` (with beat when
    `beat_schedule` names its file)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        queue,
        "-n",
        node,
        "--concurrency",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        loglevel,
    ]
    if beat_schedule:
        argv += ["-B", "-s", beat_schedule]
    return argv


def asgi_server_argv(
    host: str, port: int, *extra: str, app: str = "supervisor_project.asgi:application"
) -> list[str]:
    """uvicorn serving `app` (the project's ASGI application by default)."""
    return [
        *(sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port)),
        *("--timeout-keep-alive", str(ASGI_KEEPALIVE_SECONDS), *extra),
    ]
