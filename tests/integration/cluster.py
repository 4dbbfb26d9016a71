"""A real multi-environment cluster for tests: the supervisor's job worker and environments
as subprocesses, on the machine's (or a private) PostgreSQL and Redis, short heartbeats.

The test process itself plays the supervisor's web process: it runs in supervisor mode and
calls the services, sharing the test database with the job worker."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.test import override_settings

from supervisor_project.processes import asgi_server_argv, celery_worker_argv
from workers.signing import environment_keys_value

# A log line worth showing from a failed test: JSON lines by level, plain ones by keyword.
_ALARM = re.compile(r'"level": "(WARNING|ERROR|CRITICAL)"|Traceback|^(WARNING|ERROR|CRITICAL)')

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-cluster-secret-key-that-is-long-enough-0123456789"
# The supervisor's master secret (APP_MESSAGE_SECRETS); environments get their derived keys.
MESSAGE_SECRET = "test-cluster-message-secret-that-is-long-enough-0123"
INTERVAL, GRACE = 1, 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path):
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        handle = open(self.log, "a")  # noqa: SIM115 - owned by the process
        # Its own process group: kill() takes the whole tree at once, like a container kill.
        self.popen = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        """SIGKILL of the process and everything it started (nothing gets to clean up)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        self.terminate()
        self.wait_stopped()

    def terminate(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        if self.popen:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(20)
            # Then its whole group: the process if it is still there, and what it started and
            # left behind (Celery's embedded beat outlives a killed main process; one was found
            # still running an hour after its test session).
            self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def environment_keys(name: str, secrets: str = MESSAGE_SECRET) -> str:
    """APP_ENVIRONMENT_KEYS of environment `name` (what `manage.py environment_key` prints)."""
    return environment_keys_value(secrets.split(","), name)


class Cluster:
    def __init__(self, tmp: Path, redis_url: str):
        self.tmp, self.redis_url = tmp, redis_url
        self.procs: dict[str, Proc] = {}
        self.ports: dict[str, int] = {}
        self.extra_env: dict[str, str] = {}  # for every process (a module's own settings)
        # This process plays the supervisor's web process: it signs commands with the same
        # master secret as the job worker (undone by stop()).
        self._signing = override_settings(APP_MESSAGE_SECRETS=[MESSAGE_SECRET])
        self._signing.enable()

    def base_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DB_", "APP_", "ENVIRONMENT_", "HEARTBEAT_"))
        }
        env.update(
            SECRET_KEY=SECRET,
            APP_SUPERVISOR_REDIS_URL=self.redis_url,
            APP_COMMAND_REDIS_URL=self.redis_url,
            APP_DISCOVERY_ADAPTER="remote",
            APP_COMMAND_ADAPTER="redis",
            HEARTBEAT_INTERVAL=str(INTERVAL),
            HEARTBEAT_GRACE=str(GRACE),
            APP_DB_PREFIX=settings.APP_DB_PREFIX,
            APP_SCHEMA_DATABASE=settings.APP_SCHEMA_DATABASE,
            APP_CONFIG_REFRESH_INTERVAL="2",
            APP_COMMAND_TIME_LIMIT="60",
            APP_QUEUE_PREFIX=settings.APP_QUEUE_PREFIX,
            APP_COMMAND_SOFT_TIME_LIMIT="50",
            APP_MESSAGE_SECRETS=MESSAGE_SECRET,
            LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def supervisor_env(self) -> dict[str, str]:
        env = self.base_env()
        db = connection.settings_dict
        env.update(
            APP_MODE="supervisor",
            APP_PROCESS_ADAPTER="remote",
            DB_DATABASE=db["NAME"],
            STORAGE_DIR=str(self.tmp / "supervisor"),
        )
        if connection.vendor == "postgresql":
            env.update(
                DB_DIALECT="postgres",
                DB_HOST=db["HOST"],
                DB_PORT=str(db["PORT"]),
                DB_USER=db["USER"],
                DB_PASSWORD=db["PASSWORD"] or "",
            )
        else:
            env.update(DB_DIALECT="sqlite")
        return env

    def start_jobs(self, name: str = "jobs") -> Proc:
        """A supervisor job worker (with beat: a second one runs the periodic jobs twice,
        which they must survive)."""
        env = self.supervisor_env()
        cmd = celery_worker_argv(
            settings.SUPERVISOR_QUEUE,
            f"{name}-{os.getpid()}@%h",
            concurrency=2,
            beat_schedule=str(self.tmp / f"{name}-celerybeat-schedule"),
        )
        return self._start(name, cmd, env)

    def start_web(self, name: str = "web", **extra: str) -> Proc:
        """The supervisor's web process (uvicorn): the proxy."""
        port = self.ports.setdefault(name, free_port())
        env = {
            **self.supervisor_env(),
            "ALLOWED_HOSTS": "127.0.0.1,localhost,shop.example.test",
            **extra,
        }
        # --no-proxy-headers: test our own X-Forwarded-* handling, not uvicorn's.
        cmd = asgi_server_argv("127.0.0.1", port, "--lifespan", "on", "--no-proxy-headers")
        proc = self._start(name, cmd, env)
        wait_until(lambda: _listening(port), timeout=30, what="the supervisor web to listen")
        return proc

    def start_echo(self) -> Proc:
        port = self.ports.setdefault("echo", free_port())
        cmd = asgi_server_argv("127.0.0.1", port, app="tests.integration.echo_app:app")
        proc = self._start("echo", cmd, dict(os.environ))
        wait_until(lambda: _listening(port), timeout=30, what="the echo server to listen")
        return proc

    def start_environment(self, name: str) -> Proc:
        port = self.ports.setdefault(name, free_port())
        env = self.base_env()
        env.update(
            APP_MODE="worker",
            APP_PROCESS_ADAPTER="local",
            ENVIRONMENT_NAME=name,
            ENVIRONMENT_URL=f"http://127.0.0.1:{port}",
            DB_DIALECT="sqlite",
            STORAGE_DIR=str(self.tmp / name),
        )
        # As in production: only its own keys, never the master secret.
        secrets = env.pop("APP_MESSAGE_SECRETS")
        env.setdefault("APP_ENVIRONMENT_KEYS", environment_keys(name, secrets))
        return self._start(name, [sys.executable, "manage.py", "run_environment"], env)

    def _start(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        (self.tmp / name).mkdir(parents=True, exist_ok=True)
        proc = Proc(name, cmd, env, self.tmp / f"{name}.log").start()
        self.procs[name] = proc
        return proc

    def restart(self, name: str) -> Proc:
        proc = self.procs[name]
        proc.stop()
        return proc.start()

    def ensure_web(self, **extra: str) -> str:
        if "web" not in self.procs:
            self.start_web(**extra)
        return f"http://127.0.0.1:{self.ports['web']}"

    def url(self, env: str) -> str:
        return f"http://127.0.0.1:{self.ports[env]}"

    def stop(self) -> None:
        # All at once: each takes a second or two to shut down cleanly.
        for proc in reversed(list(self.procs.values())):
            proc.terminate()
        for proc in reversed(list(self.procs.values())):
            proc.wait_stopped()
        if self._signing is not None:
            self._signing.disable()
            self._signing = None

    def logs(self) -> str:
        """Each process's warnings and errors (the cause is rarely in the last lines of a
        busy access log), then the tail of its output."""
        parts = []
        for name, proc in self.procs.items():
            output = proc.output()
            alarms = [line for line in output.splitlines() if _ALARM.search(line)]
            parts.append(f"--- {name}: {len(alarms)} warning/error lines ---")
            parts += [line[:600] for line in alarms[:20]]
            if len(alarms) > 20:
                parts.append(f"... {len(alarms) - 20} more")
            parts.append(f"--- {name}: last lines ---\n{output[-4000:]}")
        return "\n".join(parts)
