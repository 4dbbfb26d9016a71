"""make cluster: supervisor + env_a + env_b on this machine (local PostgreSQL and Redis).

Writes .cluster.env (the supervisor's settings: `ENV_FILE=.cluster.env manage.py ...` runs any
command against it) and .cluster.env_a / .cluster.env_b, creates the databases, migrates,
creates a superuser, then runs four processes. When one of them dies the others go on (so a
killed environment can be watched going offline); Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages are one level up

from supervisor_project.processes import asgi_server_argv, celery_worker_argv  # noqa: E402
from workers.signing import environment_keys_value  # noqa: E402

PY = sys.executable


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        sys.exit(f"{name}={raw!r} must be a whole number between 1 and 65535")
    return int(raw)


def read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def write_env(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)


def ensure_database(host: str, port: int, user: str, name: str) -> None:
    try:
        conn = psycopg2.connect(
            host=host, port=port, user=user, dbname="postgres", connect_timeout=5
        )
    except psycopg2.OperationalError as exc:
        sys.exit(f"PostgreSQL at {host}:{port} is not answering ({exc}); start it first")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if not cur.fetchone():
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()


def main() -> None:
    ports = {
        "supervisor": env_int("SUPERVISOR_PORT", 14000),
        "env_a": env_int("ENV_A_PORT", 15000),
        "env_b": env_int("ENV_B_PORT", 16000),
    }
    interval = env_int("HEARTBEAT_INTERVAL", 120)
    pg_host = os.environ.get("DB_HOST", "127.0.0.1")
    pg_port = env_int("DB_PORT", 5432)
    pg_user = os.environ.get("DB_USER", "postgres")
    redis_url = os.environ.get("CLUSTER_REDIS_URL", "redis://127.0.0.1:6379/0")
    storage = ROOT / "storage" / "cluster"
    previous = read_env(ROOT / ".cluster.env")
    # Signs every queue message; only the supervisor holds it, each environment its own key.
    message_secrets = previous.get("APP_MESSAGE_SECRETS") or secrets.token_urlsafe(48)
    common = {
        "SECRET_KEY": previous.get("SECRET_KEY") or secrets.token_urlsafe(50),
        # /readyz and /metrics of every process answer `Authorization: Bearer <token>`.
        "METRICS_TOKEN": previous.get("METRICS_TOKEN") or secrets.token_urlsafe(32),
        "DB_DIALECT": "postgres",
        "DB_HOST": pg_host,
        "DB_PORT": str(pg_port),
        "DB_USER": pg_user,
        "APP_DISCOVERY_ADAPTER": "remote",
        "APP_COMMAND_ADAPTER": "redis",
        "APP_SUPERVISOR_REDIS_URL": redis_url,
        "APP_COMMAND_REDIS_URL": redis_url,
        "HEARTBEAT_INTERVAL": str(interval),
        "APP_DB_PREFIX": "cluster_app_",
        "APP_SCHEMA_DATABASE": "cluster_schemas",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "info",
    }
    files = {
        "supervisor": {
            **common,
            "APP_MODE": "supervisor",
            "APP_PROCESS_ADAPTER": "remote",
            "DB_DATABASE": "cluster_supervisor",
            "STORAGE_DIR": str(storage / "supervisor"),
            "APP_MESSAGE_SECRETS": message_secrets,
        },
    }
    for env in ("env_a", "env_b"):
        files[env] = {
            **common,
            "APP_MODE": "worker",
            "APP_PROCESS_ADAPTER": "local",
            "ENVIRONMENT_NAME": env,
            "DB_DATABASE": f"cluster_{env}",
            "ENVIRONMENT_URL": f"http://127.0.0.1:{ports[env]}",
            "STORAGE_DIR": str(storage / env),
            # What `ENV_FILE=.cluster.env manage.py environment_key <env>` prints.
            "APP_ENVIRONMENT_KEYS": environment_keys_value(message_secrets.split(","), env),
        }
    for role, values in files.items():
        ensure_database(pg_host, pg_port, pg_user, values["DB_DATABASE"])
        Path(values["STORAGE_DIR"]).mkdir(parents=True, exist_ok=True)
        suffix = "" if role == "supervisor" else role.removeprefix("env")
        write_env(ROOT / f".cluster.env{suffix}", values)

    def env_for(role: str) -> dict[str, str]:
        suffix = "" if role == "supervisor" else role.removeprefix("env")
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in common
            and k
            not in (
                "APP_MODE",
                "APP_PROCESS_ADAPTER",
                "ENVIRONMENT_NAME",
                "ENVIRONMENT_URL",
                "STORAGE_DIR",
                "DB_DATABASE",
                # The shell's would win over ENV_FILE's (read_env_file never overrides).
                "APP_MESSAGE_SECRETS",
                "APP_ENVIRONMENT_KEYS",
                "APP_MESSAGE_MAX_AGE",
            )
        }
        return {**clean, "ENV_FILE": str(ROOT / f".cluster.env{suffix}")}

    manage = [PY, str(ROOT / "manage.py")]
    subprocess.run(
        [*manage, "migrate", "--noinput", "-v0"], env=env_for("supervisor"), cwd=ROOT, check=True
    )
    boot = subprocess.run(
        [*manage, "cluster_superuser"],
        env=env_for("supervisor"),
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    sup_storage = files["supervisor"]["STORAGE_DIR"]
    commands = {
        "supervisor": asgi_server_argv("127.0.0.1", ports["supervisor"], "--lifespan", "on"),
        "jobs": celery_worker_argv(
            "supervisor",
            "supervisor@%h",
            concurrency=2,
            beat_schedule=f"{sup_storage}/celerybeat-schedule",
        ),
        "env_a": [*manage, "run_environment"],
        "env_b": [*manage, "run_environment"],
    }
    roles = {"supervisor": "supervisor", "jobs": "supervisor", "env_a": "env_a", "env_b": "env_b"}
    procs = {
        name: subprocess.Popen(cmd, env=env_for(roles[name]), cwd=ROOT)
        for name, cmd in commands.items()
    }
    auth = f"Authorization: Bearer {common['METRICS_TOKEN']}"
    print(
        f"""
App Supervisor cluster ({boot.stdout.strip()})
  supervisor  http://127.0.0.1:{ports["supervisor"]}/admin/
  env_a       http://127.0.0.1:{ports["env_a"]}/apps/<name>/admin/
  env_b       http://127.0.0.1:{ports["env_b"]}/apps/<name>/admin/
  heartbeat   every {interval} s: stale after {interval}+30 s, offline after {2 * interval}+30 s
  CLI         ENV_FILE=.cluster.env {PY} manage.py apps list
  restart an environment: ENV_FILE=.cluster.env_b {PY} manage.py run_environment
  health      curl http://127.0.0.1:{ports["supervisor"]}/healthz   (env_a, env_b: same path)
  readiness   curl -H '{auth}' http://127.0.0.1:{ports["supervisor"]}/readyz
  metrics     curl -H '{auth}' http://127.0.0.1:{ports["env_a"]}/metrics
              (any of the three ports; METRICS_TOKEN is in .cluster.env)
Ctrl-C stops everything.
""",
        flush=True,
    )

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    reported: set[str] = set()
    while not stopping:
        for name, proc in procs.items():
            if proc.poll() is not None and name not in reported:
                print(
                    f"[cluster] {name} exited with {proc.returncode}; the others go on", flush=True
                )
                reported.add(name)
        time.sleep(0.5)
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
