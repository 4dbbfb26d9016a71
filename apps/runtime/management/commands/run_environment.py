"""python manage.py run_environment: everything one environment needs, in one command.

- its Celery worker, consuming the environment's command queue env.<ENVIRONMENT_NAME>;
- the ASGI server that serves its running apps at /apps/<name>/...;
- the heartbeat (this process), registering first and saying goodbye on SIGTERM/SIGINT; both
  are left in Redis for the supervisor's fold (apps.adapters.transport: heartbeats).

Children die with this process (PR_SET_PDEATHSIG), so a SIGKILL of it never leaves an orphan
worker consuming commands. If a child dies, everything stops with a non-zero exit: the
process manager (compose, systemd, make cluster) restarts the environment as a whole.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import threading
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

import supervisor_project
from apps.adapters import transport
from apps.runtime import hosting
from supervisor_project.processes import (
    ENVIRONMENT_ASGI_FLAGS,
    asgi_server_argv,
    celery_worker_argv,
)
from workers import messages
from workers.tasks import send_to_supervisor

log = logging.getLogger("environment")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EnvironmentRunner:
    """The heartbeat loop, in small steps a test can call one at a time."""

    def __init__(self, *, name: str, url: str, proxy_url: str, interval: int):
        self.name, self.url, self.proxy_url, self.interval = name, url, proxy_url, interval
        self.started_at = time.time()
        self.stopping = threading.Event()

    def heartbeat(self) -> dict:
        close_old_connections()
        beat = {
            "v": messages.VERSION,
            "type": "heartbeat",
            "env": self.name,
            "url": self.url,
            "proxy_url": self.proxy_url,
            "version": supervisor_project.__version__,
            "started_at": self.started_at,
            "interval": self.interval,
            "apps": hosting.hosted_states(),
        }
        messages.decode(beat)
        transport.beat_put(beat)  # folded by the supervisor (transport: heartbeats)
        return beat

    def goodbye(self) -> None:
        """Replaces a beat not yet folded: the supervisor sees the goodbye last."""
        message = {"v": messages.VERSION, "type": "goodbye", "env": self.name}
        try:
            transport.beat_put(message | {"started_at": self.started_at})
        except Exception as exc:  # Redis away: the supervisor finds out by the deadline
            log.warning("could not say goodbye to the supervisor: %s", exc)


class Command(BaseCommand):
    help = "Run this environment: command worker, heartbeat and ASGI server (APP_MODE=worker)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="listen address of the ASGI server")
        parser.add_argument("--port", type=int, default=None, help="its port")

    def handle(self, *args, host: str | None, port: int | None, **options):
        if settings.APP_MODE != "worker" or not settings.ENVIRONMENT_NAME:
            raise CommandError(
                "run_environment needs APP_MODE=worker with ENVIRONMENT_NAME, ENVIRONMENT_URL, "
                "APP_SUPERVISOR_REDIS_URL and APP_COMMAND_REDIS_URL set",
                returncode=2,
            )
        url = settings.ENVIRONMENT_URL
        host = host or settings.ENVIRONMENT_LISTEN_HOST
        port = port or settings.ENVIRONMENT_LISTEN_PORT or urlsplit(url).port or 80
        call_command("migrate", interactive=False, verbosity=0)
        name = settings.ENVIRONMENT_NAME
        for app in hosting.heal_interrupted(env=name, send=send_to_supervisor):
            log.warning("start of %s was interrupted by a restart; reported as failed", app)
        children = {
            # Prefork: the hard time limit needs it; one command at a time keeps order.
            "worker": [
                *celery_worker_argv(transport.env_queue(name), f"{name}@%h", concurrency=1),
                "--pool",
                "prefork",
                "--without-heartbeat",
            ],
            "web": asgi_server_argv(host, port, *ENVIRONMENT_ASGI_FLAGS),
        }
        runner = EnvironmentRunner(
            name=name,
            url=url,
            proxy_url=settings.ENVIRONMENT_PROXY_URL,
            interval=settings.HEARTBEAT_INTERVAL,
        )

        def stop(signum, frame) -> None:
            runner.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        procs = {
            role: subprocess.Popen(cmd, preexec_fn=_die_with_parent)
            for role, cmd in children.items()
        }
        self.stdout.write(
            f"environment {name}: serving {url} (listening on {host}:{port}), "
            f"queue env.{name}, heartbeat every {runner.interval} s"
        )
        exit_code = 0
        try:
            next_beat = 0.0
            while not runner.stopping.is_set():
                for role, proc in procs.items():
                    if proc.poll() is not None:
                        log.error("%s of environment %s exited (%s)", role, name, proc.returncode)
                        exit_code = 1
                        runner.stopping.set()
                if time.monotonic() >= next_beat and not runner.stopping.is_set():
                    try:
                        runner.heartbeat()
                    except Exception:
                        log.exception("heartbeat failed")
                    next_beat = time.monotonic() + runner.interval
                runner.stopping.wait(0.2)
        finally:
            runner.goodbye()
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + 15
            for proc in procs.values():
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
        if exit_code:
            raise CommandError(f"environment {name} stopped: a child process exited", returncode=1)
