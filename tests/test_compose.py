"""docker-compose.yml, Dockerfile and docker/ read against the code.

No Docker engine runs here, so these tests keep the container files honest by reading them and
by running what they name: the seed's multi-environment topology (seed/multi-environment.en.md)
plus the PostgreSQL service it forgot and this build's Celery jobs worker; variable names the
code really reads; settings and system checks as each container would see them; commands Django
and Celery really know; queues both sides agree on; healthchecks run against the real servers;
the entrypoint's per-mode flow with stub tools.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.services import REDIS_START_HINT

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
RUN_ENVIRONMENT = ROOT / "apps" / "runtime" / "management" / "commands" / "run_environment.py"

# Where the project reads its environment variables.
ENV_READERS = [
    ROOT / "supervisor_project" / "settings.py",
    ROOT / "supervisor_project" / "envconfig.py",
]
_READ_RE = re.compile(
    r"""(?:\benv_(?:str|int|bool|float|choice|list|secrets|hex_keys)\("""
    r"""|os\.environ\.get\(|os\.getenv\(|os\.environ\[)"""
    r"""\s*["']([A-Z_][A-Z0-9_]*)["']"""
)
# Names read by the images and interpreters themselves, not by our code.
PYTHON_NAMES = {
    "TZ",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}
IMAGE_NAMES = {
    "postgres": {"TZ", "POSTGRES_PASSWORD", "POSTGRES_DB", "POSTGRES_USER", "PGDATA"},
    "redis": {"TZ"},
}
# Values a test supplies for the compose file's required ${VAR:?...} variables.
REQUIRED_FROM_HOST = {
    "SECRET_KEY": "compose-test-secret-key-" + "x" * 40,
    "APP_MESSAGE_SECRETS": "compose-test-message-secret-" + "y" * 40,
}
# What each service's `manage.py check` may say and still be "as written": the environments
# get the master secret for convenience, which supervisor.W002 points out (see the compose
# file for the per-environment key that silences it).
EXPECTED_WARNINGS = {"worker_a": {"supervisor.W002"}, "worker_b": {"supervisor.W002"}}

# The seed's example (seed/multi-environment.en.md, "Docker Compose example").
SEED_ADAPTERS = {
    "supervisor": {
        "APP_DISCOVERY_ADAPTER": "remote",
        "APP_PROCESS_ADAPTER": "remote",
        "APP_COMMAND_ADAPTER": "redis",
    },
    "worker": {
        "APP_DISCOVERY_ADAPTER": "remote",
        "APP_PROCESS_ADAPTER": "local",
        "APP_COMMAND_ADAPTER": "redis",
    },
}
SEED_REDIS_URL = "redis://redis:6379/0"
SEED_SERVICES = {
    "supervisor": {"mode": "supervisor", "ports": ["14000:80"], "db": "nocobase_supervisor"},
    "worker_a": {
        "mode": "worker",
        "ports": ["15000:80"],
        "db": "nocobase_worker_a",
        "env": {
            "ENVIRONMENT_NAME": "env_a",
            "ENVIRONMENT_URL": "http://localhost:15000",
            "ENVIRONMENT_PROXY_URL": "http://worker_a",
        },
    },
    "worker_b": {
        "mode": "worker",
        "ports": ["16000:80"],
        "db": "nocobase_worker_b",
        "env": {
            "ENVIRONMENT_NAME": "env_b",
            "ENVIRONMENT_URL": "http://localhost:16000",
            "ENVIRONMENT_PROXY_URL": "http://worker_b",
        },
    },
}
# Not in the seed: its PostgreSQL host, and this build's Celery worker for the supervisor.
ADDED_SERVICES = {"postgres", "supervisor_jobs"}
WORKERS = sorted(n for n, s in SEED_SERVICES.items() if s["mode"] == "worker")
UVICORN_DEFAULT = (
    "uvicorn supervisor_project.asgi:application --host 0.0.0.0 --port 80 --lifespan on "
    "--no-server-header"
)


# --- reading the files ---------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def services() -> dict[str, dict]:
    return compose()["services"]


def build_services() -> dict[str, dict]:
    return {name: svc for name, svc in services().items() if "build" in svc}


def code_env_names() -> set[str]:
    names: set[str] = set()
    for path in ENV_READERS:
        names |= set(_READ_RE.findall(path.read_text(encoding="utf-8")))
    return names


_VAR_RE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, host_env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""
    host_env = REQUIRED_FROM_HOST if host_env is None else host_env

    def substitute(match: re.Match) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op") or "", match.group("arg") or ""
        current = host_env.get(name)
        missing = not current if op.startswith(":") else current is None
        if op.endswith("-"):
            return arg if missing else current
        if op.endswith("?"):
            if missing:
                raise ValueError(f"required variable {name} is missing a value: {arg}")
            return current
        return current or ""

    return _VAR_RE.sub(substitute, value)


def service_env(service: dict, host_env: dict[str, str] | None = None) -> dict[str, str]:
    """The service's environment as the container would see it (after interpolation)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    resolved = {}
    for name, value in raw.items():
        assert value is not None, f"{name} is passed through from the host; give it a value"
        resolved[name] = interpolate(str(value), host_env)
    return resolved


def env_of(name: str) -> dict[str, str]:
    return service_env(services()[name])


def ports_of(name: str) -> list[tuple[int, int]]:
    """(published, container) pairs."""
    pairs = []
    for port in services()[name].get("ports") or []:
        published, _, container = str(port).rpartition(":")
        pairs.append((int(published), int(container)))
    return pairs


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def dockerfile_values(keyword: str) -> list[str]:
    return [rest for key, rest in dockerfile_instructions() if key == keyword]


def dockerfile_argv(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        return json.loads(value)
    return ["/bin/sh", "-c", value]  # a Dockerfile's shell form


def compose_argv(value: str | list) -> list[str]:
    if isinstance(value, list):
        return [interpolate(str(part)) for part in value]
    return shlex.split(interpolate(value))  # compose splits a string; no shell runs it


def effective_argv(service: dict) -> list[str]:
    """What a build service's container runs, with Docker's ENTRYPOINT/CMD rules."""
    entrypoint = dockerfile_values("ENTRYPOINT")
    cmd = dockerfile_values("CMD")
    # CMD from the base image is cleared by an ENTRYPOINT here, so only this file's CMD counts.
    argv_entry = dockerfile_argv(entrypoint[-1]) if entrypoint else []
    argv_cmd = dockerfile_argv(cmd[-1]) if cmd else []
    if "entrypoint" in service:
        argv_entry, argv_cmd = compose_argv(service["entrypoint"]), []
    if "command" in service:
        argv_cmd = compose_argv(service["command"])
    return argv_entry + argv_cmd


def command_of(name: str) -> list[str]:
    """The service's command: what the image's entrypoint is given."""
    argv = effective_argv(services()[name])
    assert argv and argv[0] == image_entrypoint(), argv
    return argv[1:]


def image_entrypoint() -> str:
    return dockerfile_argv(dockerfile_values("ENTRYPOINT")[-1])[0]


def healthcheck_argv(service: dict) -> list[str]:
    """The healthcheck's command as Docker runs it: CMD as is, CMD-SHELL through /bin/sh."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", interpolate(test)]
    kind, *rest = [interpolate(str(part)) for part in test]
    if kind == "CMD-SHELL":
        assert len(rest) == 1, test
        return ["/bin/sh", "-c", rest[0]]
    assert kind == "CMD", test
    return rest


def repo_path(container_path: str) -> Path:
    """Map a path inside the image (WORKDIR /app) to the repository."""
    workdir = dockerfile_values("WORKDIR")[-1]
    path = Path(container_path)
    if path.is_absolute():
        path = path.relative_to(workdir)
    return ROOT / path


def storage_dir_in_image() -> str:
    env = " ".join(dockerfile_values("ENV"))
    return re.search(r"\bSTORAGE_DIR=(\S+)", env).group(1)


# --- running things with a service's environment -------------------------------------------


def _venv_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin")])


def process_env(name: str, storage: Path, *, sqlite: bool = False, **overrides: str) -> dict:
    """A clean process environment: the service's variables and nothing from this test run."""
    env = {"PATH": _venv_path(), "LANG": "C.UTF-8"}
    env.update(env_of(name))
    env["STORAGE_DIR"] = str(storage)
    if sqlite:
        for key in [k for k in env if k.startswith("DB_")]:
            del env[key]
        env["DB_DIALECT"] = "sqlite"
    env.update(overrides)
    return env


_SETTINGS_PROBE = """
import json, django
django.setup()
from django.conf import settings as s
from supervisor_project.envconfig import PROBLEMS
names = ["APP_MODE", "APP_DISCOVERY_ADAPTER", "APP_PROCESS_ADAPTER", "APP_COMMAND_ADAPTER",
         "APP_SUPERVISOR_REDIS_URL", "APP_COMMAND_REDIS_URL", "ENVIRONMENT_NAME",
         "ENVIRONMENT_URL", "ENVIRONMENT_PROXY_URL", "ENVIRONMENT_LISTEN_HOST",
         "ENVIRONMENT_LISTEN_PORT", "ALLOWED_HOSTS", "SUPERVISOR_QUEUE", "CELERY_BROKER_URL",
         "TIME_ZONE", "SECRET_KEY", "HEARTBEAT_INTERVAL"]
out = {n: getattr(s, n) for n in names}
db = s.DATABASES["default"]
out["db"] = {k: db.get(k) for k in ("ENGINE", "HOST", "PORT", "NAME", "USER", "PASSWORD")}
out["config_cache"] = s.CACHES.get("config", {}).get("LOCATION")
out["problems"] = PROBLEMS.errors + PROBLEMS.warnings
print(json.dumps(out))
"""


# Removed when the test process exits.
_PROBE_STORAGE = tempfile.TemporaryDirectory(prefix="appsup-compose-")


@cache
def settings_seen(name: str) -> dict:
    """Django's settings as the service's container computes them from its environment."""
    storage = Path(_PROBE_STORAGE.name) / name
    env = process_env(name, storage, DJANGO_SETTINGS_MODULE="supervisor_project.settings")
    result = subprocess.run(
        [sys.executable, "-c", _SETTINGS_PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _manage(env: dict[str, str], *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _running(argv: list[str], env: dict[str, str], log: Path):
    """A process in its own session, ended (with whatever it started) on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _wait_healthy(argv, env, proc, log: Path, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited:\n" + log.read_text(errors="replace")
        last = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        if last.returncode == 0:
            return
        time.sleep(0.5)
    pytest.fail(
        f"healthcheck never passed: {last.stdout}{last.stderr}\n"
        + log.read_text(errors="replace")[-4000:]
    )


# --- topology ------------------------------------------------------------------------------


def test_services_are_the_seeds_plus_postgres_and_the_jobs_worker():
    assert set(services()) == set(SEED_SERVICES) | {"redis"} | ADDED_SERVICES
    assert services()["postgres"]["image"] == "postgres:15"
    assert services()["redis"]["image"].startswith("redis:7")
    assert set(build_services()) == set(SEED_SERVICES) | {"supervisor_jobs"}


def test_the_app_services_share_one_image_built_from_this_repository():
    builds = {json.dumps(svc["build"], sort_keys=True) for svc in build_services().values()}
    images = {svc.get("image") for svc in build_services().values()}
    assert builds == {json.dumps(".")}
    assert len(images) == 1 and None not in images, "one tag: the image is built once"
    assert not any("entrypoint" in svc for svc in build_services().values()), (
        "the image's entrypoint prepares each mode; a service must not bypass it"
    )


def test_modes_and_adapters_are_the_seeds():
    for name, seed in SEED_SERVICES.items():
        env = env_of(name)
        assert env["APP_MODE"] == seed["mode"], name
        for variable, value in SEED_ADAPTERS[seed["mode"]].items():
            assert env[variable] == value, f"{name}: {variable}"
        assert "APP_COMMAND_ADPATER" not in env, "the seed's page misspells it; compose must not"
        assert env["APP_SUPERVISOR_REDIS_URL"] == env["APP_COMMAND_REDIS_URL"] == SEED_REDIS_URL


def test_supervisor_jobs_runs_with_exactly_the_supervisors_configuration():
    assert env_of("supervisor_jobs") == env_of("supervisor")
    assert not services()["supervisor_jobs"].get("ports"), "it serves no HTTP"


def test_shared_variables_come_from_the_x_common_anchor():
    common = compose()["x-common"]
    assert {
        "SECRET_KEY",
        "DB_HOST",
        "DB_PASSWORD",
        "APP_SUPERVISOR_REDIS_URL",
        "APP_COMMAND_REDIS_URL",
        "ALLOWED_HOSTS",
        "TZ",
    } <= set(common)
    for name, service in build_services().items():
        assert common.items() <= service["environment"].items(), name
    assert COMPOSE.read_text(encoding="utf-8").count("<<: *common") >= 3


def test_workers_are_the_seeds_environments():
    for name in WORKERS:
        seed, env = SEED_SERVICES[name], env_of(name)
        for variable, value in seed["env"].items():
            assert env[variable] == value, f"{name}: {variable}"
        assert env["DB_DATABASE"] == seed["db"]
        assert env["ENVIRONMENT_LISTEN_HOST"] == "0.0.0.0", "reachable from other containers"  # noqa: S104
        assert command_of(name) == ["python", "manage.py", "run_environment"]
    names = [env_of(n)["ENVIRONMENT_NAME"] for n in WORKERS]
    assert len(set(names)) == len(names), "each environment has its own name (and queue)"


def test_each_worker_listens_where_its_published_port_and_urls_lead():
    for name in WORKERS:
        env, seen = env_of(name), settings_seen(name)
        [(published, container)] = ports_of(name)
        url, proxy = urlsplit(env["ENVIRONMENT_URL"]), urlsplit(env["ENVIRONMENT_PROXY_URL"])
        # Browsers: the published port on the host.
        assert (url.hostname, url.port) == ("localhost", published), name
        # Containers (the supervisor): the service name and the container port.
        assert proxy.hostname == name and (proxy.port or 80) == container, name
        # run_environment: port = ENVIRONMENT_LISTEN_PORT or ENVIRONMENT_URL's port or 80.
        listen = seen["ENVIRONMENT_LISTEN_PORT"] or url.port or 80
        assert listen == container, f"{name} listens on {listen}, compose publishes {container}"
        assert seen["ENVIRONMENT_LISTEN_HOST"] == "0.0.0.0"  # noqa: S104
    # The rule above is run_environment's (its --host/--port are not used by compose).
    source = RUN_ENVIRONMENT.read_text(encoding="utf-8")
    assert "host = host or settings.ENVIRONMENT_LISTEN_HOST" in source
    assert "port = port or settings.ENVIRONMENT_LISTEN_PORT or urlsplit(url).port or 80" in source


def test_published_ports_are_the_seeds_and_the_image_exposes_80():
    for name, seed in SEED_SERVICES.items():
        assert [str(p) for p in services()[name]["ports"]] == seed["ports"], name
    published = [p for name in services() for p, _ in ports_of(name)]
    assert len(published) == len(set(published))
    assert "80" in [port.split()[0] for port in dockerfile_values("EXPOSE")]


def test_every_service_has_a_healthcheck_and_restarts():
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert service.get("restart") == "always", name


def test_app_services_wait_for_healthy_dependencies():
    for name, service in build_services().items():
        depends = service["depends_on"]
        assert isinstance(depends, dict), f"{name}: the long form is needed to wait for health"
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        for target, rule in depends.items():
            assert target in services(), f"{name} depends on unknown {target}"
            if rule["condition"] == "service_healthy":
                assert services()[target].get("healthcheck"), f"{target} has no healthcheck"
    # The jobs worker's entrypoint migrates the supervisor's database too: never concurrently.
    jobs = services()["supervisor_jobs"]["depends_on"]
    assert jobs["supervisor"]["condition"] == "service_healthy"


def test_app_services_point_at_the_postgres_and_redis_services():
    postgres = service_env(services()["postgres"])
    for name in build_services():
        env, seen = env_of(name), settings_seen(name)
        assert env["DB_DIALECT"] == "postgres"
        assert env["DB_HOST"] == "postgres" and env["DB_PORT"] == "5432"
        assert env["DB_USER"] == postgres.get("POSTGRES_USER", "postgres")
        assert env["DB_PASSWORD"] == postgres["POSTGRES_PASSWORD"]
        assert seen["db"]["ENGINE"] == "django.db.backends.postgresql"
        assert (seen["db"]["HOST"], seen["db"]["NAME"]) == ("postgres", env["DB_DATABASE"])
        for variable in ("APP_SUPERVISOR_REDIS_URL", "APP_COMMAND_REDIS_URL"):
            parts = urlsplit(env[variable])
            assert parts.hostname in services() and parts.port == 6379, f"{name}: {variable}"
        assert seen["CELERY_BROKER_URL"] == env["APP_COMMAND_REDIS_URL"], name
        assert seen["config_cache"] == env["APP_SUPERVISOR_REDIS_URL"], name


def test_postgres_healthcheck_uses_pg_isready_over_tcp_on_the_supervisor_database():
    postgres = services()["postgres"]
    argv = healthcheck_argv(postgres)
    assert argv[0] == "pg_isready" and argv[argv.index("-h") + 1] == "127.0.0.1"
    database = env_of("supervisor")["DB_DATABASE"]
    assert service_env(postgres)["POSTGRES_DB"] == database, "the image creates this database"
    assert argv[argv.index("-d") + 1] == database


def _init_mounts() -> list[tuple[Path, str]]:
    mounts = []
    for volume in services()["postgres"].get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts.append((ROOT / source, target))
    return mounts


def test_postgres_init_script_creates_every_environment_database():
    [(source, target)] = _init_mounts()
    assert target == "/docker-entrypoint-initdb.d"
    assert source.is_dir() and source.relative_to(ROOT).parts[0] == "docker"
    created = set()
    for script in sorted(source.iterdir()):
        assert script.suffix == ".sql", f"{script.name}: only .sql (no exec bit needed)"
        assert script.stat().st_mode & stat.S_IROTH, f"{script.name}: the postgres user reads it"
        created |= set(re.findall(r"CREATE DATABASE\s+(\w+)\s*;", script.read_text()))
    databases = created | {service_env(services()["postgres"])["POSTGRES_DB"]}
    wanted = {env_of(name)["DB_DATABASE"] for name in build_services()}
    assert wanted == databases, "every database is created, and only those the services use"
    for name, seed in SEED_SERVICES.items():
        assert env_of(name)["DB_DATABASE"] == seed["db"]
    worker_dbs = [env_of(n)["DB_DATABASE"] for n in WORKERS]
    assert len(set(worker_dbs)) == len(worker_dbs), "each environment has its own database"


def test_redis_healthcheck_pings():
    assert healthcheck_argv(services()["redis"]) == ["redis-cli", "ping"]


# The one volume two services share: the supervisor's web server and job worker count into
# one METRICS_DIR, so what the job worker counts shows on the web server's /metrics.
SHARED_METRICS = ("supervisor-metrics", {"supervisor", "supervisor_jobs"})


def test_every_volume_is_declared_and_each_service_has_its_own():
    declared = set(compose().get("volumes") or {})
    used: dict[str, str] = {}
    shared_by: set[str] = set()
    for name, service in services().items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                continue
            assert source in declared, f"{name}: volume {source} is not declared"
            if source == SHARED_METRICS[0]:
                shared_by.add(name)
                continue
            assert source not in used, f"{name} and {used.get(source)} share volume {source}"
            used[source] = name
    assert shared_by == SHARED_METRICS[1]
    storage = storage_dir_in_image()
    for name, service in build_services().items():
        assert "STORAGE_DIR" not in env_of(name), "the image's STORAGE_DIR is the mount point"
        mounts = dict(v.split(":")[:2] for v in service["volumes"] if not v.startswith("."))
        metrics = mounts.pop(SHARED_METRICS[0], None)
        assert list(mounts.values()) == [storage], f"{name} keeps its storage in its own volume"
        if name in SHARED_METRICS[1]:
            assert metrics == env_of(name)["METRICS_DIR"], f"{name}: METRICS_DIR is the volume"
        else:
            assert "METRICS_DIR" not in env_of(name), f"{name} counts under its own storage"
    assert set(used) | {SHARED_METRICS[0]} == declared, "no declared volume is left unused"


# --- environment variables -----------------------------------------------------------------


def test_env_name_collection_finds_the_known_settings():
    # Guards the regex: if it stopped matching, every name would look unknown (or none would).
    assert {
        "APP_MODE",
        "DB_DIALECT",
        "DB_HOST",
        "SECRET_KEY",
        "STORAGE_DIR",
        "TZ",
        "ENVIRONMENT_NAME",
        "ENVIRONMENT_LISTEN_PORT",
        "APP_COMMAND_REDIS_URL",
    } <= code_env_names()


def test_every_environment_variable_is_one_something_reads():
    read = code_env_names()
    for name, service in services().items():
        family = str(service.get("image", "")).split(":")[0].split("/")[-1]
        allowed = read | PYTHON_NAMES | IMAGE_NAMES.get(family, set())
        unknown = set(service_env(service)) - allowed
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_dockerfile_env_names_are_read_too():
    names = set()
    for rest in dockerfile_values("ENV"):
        names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", rest))
    assert names, "no ENV found"
    assert not names - (code_env_names() | PYTHON_NAMES)


def test_secret_key_is_required_with_a_clear_message_and_shared():
    for name, service in build_services().items():
        raw = service["environment"]["SECRET_KEY"]
        assert raw.startswith("${SECRET_KEY:?") and len(raw) > len("${SECRET_KEY:?}") + 20
        with pytest.raises(ValueError, match=r"SECRET_KEY .*long random string"):
            service_env(service, host_env={})
        assert settings_seen(name)["SECRET_KEY"] == REQUIRED_FROM_HOST["SECRET_KEY"], name
        assert not [p for p in settings_seen(name)["problems"] if p[0] == "supervisor.E009"]


def test_allowed_hosts_cover_every_name_a_service_is_reached_by():
    # Browsers (localhost), healthchecks (127.0.0.1), other containers (service names of the
    # services that serve HTTP) and the environments' URLs. Django refuses a Host with `_`
    # (RFC 1034) before it reads ALLOWED_HOSTS, so http://worker_a (the seed's proxy URL) is
    # listed for completeness only: a proxy must send another Host (see the compose file).
    reached_as = {"localhost", "127.0.0.1", *(n for n in build_services() if ports_of(n))}
    for name in WORKERS:
        env = env_of(name)
        reached_as |= {
            urlsplit(env[v]).hostname for v in ("ENVIRONMENT_URL", "ENVIRONMENT_PROXY_URL")
        }
    for service in build_services().values():
        for part in healthcheck_argv(service):
            reached_as |= {urlsplit(u).hostname for u in re.findall(r"https?://[^'\" ]+", part)}
    for name in build_services():
        hosts = set(settings_seen(name)["ALLOWED_HOSTS"])
        missing = {h for h in reached_as if h not in hosts and f".{h}" not in hosts} - {"*"}
        assert not missing or "*" in hosts, f"{name}: ALLOWED_HOSTS lacks {sorted(missing)}"


def test_settings_are_what_each_service_means():
    for name in build_services():
        seen, env = settings_seen(name), env_of(name)
        assert seen["APP_MODE"] == env["APP_MODE"]
        for variable in SEED_ADAPTERS[seen["APP_MODE"]]:
            assert seen[variable] == env[variable], f"{name}: {variable}"
        if seen["APP_MODE"] == "supervisor":
            assert seen["ENVIRONMENT_NAME"] == "", "E003: the supervisor is no environment"
        else:
            assert seen["ENVIRONMENT_NAME"] == env["ENVIRONMENT_NAME"]
            assert seen["ENVIRONMENT_PROXY_URL"] == env["ENVIRONMENT_PROXY_URL"]
        assert seen["TIME_ZONE"] == "UTC"
        assert seen["HEARTBEAT_INTERVAL"] == settings_seen("supervisor")["HEARTBEAT_INTERVAL"]
        assert seen["problems"] == [], f"{name}: {seen['problems']}"


# --- system checks with each service's environment -----------------------------------------


def _check_ids(output: str) -> set[str]:
    return set(re.findall(r"\((supervisor\.[EW]\d{3})\)", output))


@pytest.mark.parametrize("name", sorted(build_services()))
def test_service_environment_passes_the_system_checks_as_written(name, tmp_path):
    # `check` opens no connection, so the compose DB_* values (host `postgres`) and the Redis
    # URLs (host `redis`) are read and validated (dialect, port range, URL form) as written.
    result = _manage(process_env(name, tmp_path), "check", "--fail-level", "WARNING")
    expected = EXPECTED_WARNINGS.get(name, set())
    assert _check_ids(result.stdout + result.stderr) == expected, result.stdout + result.stderr
    if expected:
        assert result.returncode != 0  # --fail-level WARNING: the warning is all it says
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no issues" in result.stdout
    assert not (tmp_path / "secret_key").exists(), "SECRET_KEY from compose is used"


@pytest.mark.parametrize("name", sorted(build_services()))
def test_service_environment_passes_the_system_checks_on_sqlite(name, tmp_path):
    env = process_env(name, tmp_path, sqlite=True)
    assert "DB_HOST" not in env and env.get("SECRET_KEY")
    result = _manage(env, "check", "--fail-level", "WARNING")
    expected = EXPECTED_WARNINGS.get(name, set())
    assert _check_ids(result.stdout + result.stderr) == expected, result.stdout + result.stderr
    if not expected:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no issues" in result.stdout


def test_message_secrets_are_required_with_a_clear_message_and_shared():
    for name, service in build_services().items():
        raw = service["environment"]["APP_MESSAGE_SECRETS"]
        assert raw.startswith("${APP_MESSAGE_SECRETS:?"), name
        with pytest.raises(ValueError, match=r"APP_MESSAGE_SECRETS .*long random string"):
            service_env(service, host_env={"SECRET_KEY": REQUIRED_FROM_HOST["SECRET_KEY"]})
        assert env_of(name)["APP_MESSAGE_SECRETS"] == REQUIRED_FROM_HOST["APP_MESSAGE_SECRETS"]
        assert "APP_ENVIRONMENT_KEYS" not in env_of(name)


@pytest.mark.parametrize("name", WORKERS)
def test_a_worker_given_its_own_key_instead_passes_without_the_warning(name, tmp_path):
    """The hardening the compose file describes: the worker's own key, printed by
    `manage.py environment_key` with the supervisor's settings, in place of the secret."""
    printed = _manage(
        process_env("supervisor", tmp_path / "sup", sqlite=True),
        "environment_key",
        env_of(name)["ENVIRONMENT_NAME"],
    )
    assert printed.returncode == 0, printed.stderr
    env = process_env(name, tmp_path / "env", sqlite=True, APP_ENVIRONMENT_KEYS=printed.stdout)
    del env["APP_MESSAGE_SECRETS"]
    result = _manage(env, "check", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("name", "change", "check_id"),
    [
        ("worker_a", {"ENVIRONMENT_NAME": ""}, "supervisor.E003"),
        ("worker_a", {"APP_PROCESS_ADAPTER": "remote"}, "supervisor.E008"),
        ("supervisor", {"ENVIRONMENT_NAME": "env_a"}, "supervisor.E003"),
        ("supervisor", {"APP_COMMAND_REDIS_URL": ""}, "supervisor.E004"),
        ("supervisor", {"APP_MESSAGE_SECRETS": ""}, "supervisor.E014"),
        ("worker_a", {"APP_MESSAGE_SECRETS": ""}, "supervisor.E014"),
    ],
)
def test_the_system_checks_would_stop_a_wrong_service(name, change, check_id, tmp_path):
    # The two tests above prove something only if the checks look at these variables.
    result = _manage(process_env(name, tmp_path, sqlite=True, **change), "check")
    assert result.returncode != 0
    assert check_id in result.stderr


# --- commands and queues -------------------------------------------------------------------


def _named_manage_commands() -> set[str]:
    texts = [ENTRYPOINT.read_text(encoding="utf-8"), DOCKERFILE.read_text(encoding="utf-8")]
    for service in build_services().values():
        texts.append(" ".join(effective_argv(service)))
        texts.append(" ".join(healthcheck_argv(service)))
    return {m for text in texts for m in re.findall(r"manage\.py\s+([a-z_]+)", text)}


def test_every_manage_py_command_named_anywhere_exists():
    from django.core.management import get_commands

    used = _named_manage_commands()
    assert {"check", "migrate", "bootstrap_local", "cluster_superuser", "run_environment"} <= used
    unknown = used - set(get_commands())
    assert not unknown, f"unknown management commands: {sorted(unknown)}"


def _celery_commands() -> dict[str, list[str]]:
    found = {}
    for name in build_services():
        argv = command_of(name)
        if argv[:1] == ["celery"] or argv[:3] == ["python", "-m", "celery"]:
            found[name] = argv
    return found


def _option(argv: list[str], *flags: str) -> str:
    for flag in flags:
        if flag in argv:
            return argv[argv.index(flag) + 1]
    raise AssertionError(f"{argv} lacks {flags}")


def test_celery_queues_are_the_ones_the_code_sends_to():
    from django.conf import settings

    from apps.adapters import transport

    celery = _celery_commands()
    assert set(celery) == {"supervisor_jobs"}, "environments run Celery inside run_environment"
    argv = celery["supervisor_jobs"]
    assert _option(argv, "-A", "--app") == "supervisor_project"
    assert argv[argv.index("-A") + 2] == "worker"
    # Reports, heartbeats and periodic jobs go to settings.SUPERVISOR_QUEUE ...
    assert _option(argv, "-Q", "--queues") == settings.SUPERVISOR_QUEUE
    assert settings_seen("supervisor_jobs")["SUPERVISOR_QUEUE"] == settings.SUPERVISOR_QUEUE
    assert settings.CELERY_TASK_DEFAULT_QUEUE == settings.SUPERVISOR_QUEUE
    # ... commands to env.<ENVIRONMENT_NAME>, which run_environment's worker consumes.
    source = RUN_ENVIRONMENT.read_text(encoding="utf-8")
    assert "transport.env_queue(name)" in source, "run_environment's queue changed"
    assert "name = settings.ENVIRONMENT_NAME" in source
    for name in WORKERS:
        env_name = env_of(name)["ENVIRONMENT_NAME"]
        assert transport.env_queue(env_name) == f"env.{env_name}"


def test_jobs_worker_runs_beat_with_its_schedule_in_its_own_storage():
    argv = _celery_commands()["supervisor_jobs"]
    assert "-B" in argv or "--beat" in argv, "the periodic jobs (offline detection...) need beat"
    schedule = _option(argv, "-s", "--schedule")
    assert Path(schedule).parent == Path(storage_dir_in_image())


def test_jobs_healthcheck_pings_this_node_only():
    argv = _celery_commands()["supervisor_jobs"]
    node = _option(argv, "-n", "--hostname")
    check = healthcheck_argv(services()["supervisor_jobs"])
    assert check[:2] == ["/bin/sh", "-c"]
    words = shlex.split(check[2])
    assert words[:4] == ["celery", "-A", "supervisor_project", "inspect"]
    assert words[4] == "ping"
    # %h is the host name; in a container that is $HOSTNAME, which Docker sets.
    assert _option(words, "-d", "--destination") == node.replace("%h", "$HOSTNAME")
    timeout = float(_option(words, "-t", "--timeout"))
    limit = services()["supervisor_jobs"]["healthcheck"]["timeout"]
    assert timeout < int(limit.rstrip("s")), "the ping answers before Docker gives up"


# --- healthchecks against the real processes -----------------------------------------------


def test_supervisor_healthcheck_fetches_the_login_page():
    from django.urls import resolve

    argv = healthcheck_argv(services()["supervisor"])
    assert argv[:2] == ["python", "-c"], "slim images have no curl"
    url = urlsplit(re.search(r"https?://[^'\"]+", argv[2]).group(0))
    assert url.hostname in settings_seen("supervisor")["ALLOWED_HOSTS"]
    assert url.port in (None, 80), "the server listens on port 80 inside the container"
    assert resolve(url.path).url_name == "login"


def test_environment_healthcheck_asks_for_a_page_that_needs_no_app_and_no_database(client):
    # No django_db mark: a query here would fail the test.
    from apps.gateway.routing import decide

    check = services()["worker_a"]["healthcheck"]
    assert services()["worker_b"]["healthcheck"] == check
    argv = healthcheck_argv(services()["worker_a"])
    assert argv[:2] == ["python", "-c"], "slim images have no curl"
    url = urlsplit(re.search(r"https?://[^'\"]+", argv[2]).group(0))
    for name in WORKERS:
        assert url.hostname in settings_seen(name)["ALLOWED_HOSTS"]
        assert (url.port or 80) == settings_seen(name)["ENVIRONMENT_LISTEN_PORT"]
    assert decide(url.path) is None, "not an app path: it answers while no app runs"
    response = client.get(url.path, HTTP_HOST=url.hostname)
    assert 200 <= response.status_code < 500


@pytest.mark.parametrize(
    ("name", "server"),
    [
        ("supervisor", "uvicorn"),  # the entrypoint's default for APP_MODE=supervisor
        ("worker_a", "uvicorn"),  # what run_environment starts for its web child
    ],
)
def test_http_healthcheck_passes_against_the_real_server_and_fails_without(name, server, tmp_path):
    # The image's server on a free port instead of 80, with the service's environment on
    # SQLite, migrated as the entrypoint (supervisor) or run_environment (worker) would.
    unused = _free_port()
    env = process_env(
        name,
        tmp_path,
        sqlite=True,
        APP_SUPERVISOR_REDIS_URL=f"redis://127.0.0.1:{unused}/0",
        APP_COMMAND_REDIS_URL=f"redis://127.0.0.1:{unused}/0",
    )
    migrated = _manage(env, "migrate", "--noinput", "-v0")
    assert migrated.returncode == 0, migrated.stderr
    port = _free_port()
    argv = healthcheck_argv(services()[name])
    assert "'http://127.0.0.1/" in argv[2], "the check's URL is the one this test moves"
    argv = [sys.executable, argv[1], argv[2].replace("//127.0.0.1/", f"//127.0.0.1:{port}/")]
    serve = [sys.executable, "-m", server, "supervisor_project.asgi:application"]
    serve += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on"]
    log = tmp_path / "server.log"
    with _running(serve, env, log) as proc:
        _wait_healthy(argv, env, proc, log)
    down = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=30)
    assert down.returncode != 0, "the check passes with no server: it proves nothing"


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of this test's own: the jobs worker consumes the `supervisor` queue, which must
    not take messages from anyone else's tests."""
    import shutil

    import redis

    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail(f"redis-server is needed; {REDIS_START_HINT}")
    port = _free_port()
    argv = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(tmp_path)]
    with _running(argv, {"PATH": os.environ.get("PATH", "")}, tmp_path / "redis.log") as proc:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "redis.log").read_text()
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"


def test_jobs_healthcheck_passes_against_the_real_celery_worker(tmp_path, private_redis):
    env = process_env(
        "supervisor_jobs",
        tmp_path,
        sqlite=True,
        APP_SUPERVISOR_REDIS_URL=private_redis,
        APP_COMMAND_REDIS_URL=private_redis,
    )
    migrated = _manage(env, "migrate", "--noinput", "-v0")
    assert migrated.returncode == 0, migrated.stderr
    argv = _celery_commands()["supervisor_jobs"]
    assert argv[0] == "celery"
    argv = [sys.executable, "-m", *argv]
    schedule = argv.index(_option(argv, "-s", "--schedule"))
    argv[schedule] = str(tmp_path / "celerybeat-schedule")
    check = healthcheck_argv(services()["supervisor_jobs"])
    # Docker sets HOSTNAME to the container's host name, which is what Celery's %h expands to.
    here = {**env, "HOSTNAME": socket.gethostname()}
    log = tmp_path / "celery.log"
    with _running(argv, env, log) as proc:
        _wait_healthy(check, here, proc, log)
        elsewhere = {**env, "HOSTNAME": "not-" + socket.gethostname()}
        other = subprocess.run(check, cwd=ROOT, env=elsewhere, capture_output=True, timeout=60)
        assert other.returncode != 0, "another node's name must not pass: -d is what counts"
    assert (tmp_path / "celerybeat-schedule").exists() or any(
        p.name.startswith("celerybeat-schedule") for p in tmp_path.iterdir()
    ), "beat ran with the schedule file the command names"


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_installs_requirements_and_runs_the_entrypoint():
    assert dockerfile_values("FROM")[0] == "python:3.11-slim"
    copies = dockerfile_values("COPY")
    assert any(c.split()[0] == "requirements.txt" for c in copies)
    assert any("pip install" in r and "-r requirements.txt" in r for r in dockerfile_values("RUN"))
    assert dockerfile_argv(dockerfile_values("ENTRYPOINT")[-1]) == ["/app/docker/entrypoint.sh"]
    assert not dockerfile_values("CMD"), "no CMD: the entrypoint picks the mode's server"
    for name in build_services():
        assert effective_argv(services()[name])[0].endswith("docker/entrypoint.sh"), name
    user = dockerfile_values("USER")
    assert user and user[-1] not in ("root", "0"), "runs as a non-root user"
    assert storage_dir_in_image() == "/data/storage"
    assert any("/data/storage" in v for v in dockerfile_values("VOLUME"))


def test_dockerfile_copies_everything_the_project_imports():
    from django.conf import settings

    copied = {Path(c.split()[0]).parts[0] for c in dockerfile_values("COPY")}
    needed = {"manage.py", "docker", settings.ROOT_URLCONF.split(".")[0]}
    needed |= {a.split(".")[0] for a in settings.INSTALLED_APPS if not a.startswith("django.")}
    needed |= {Path(d).relative_to(ROOT).parts[0] for t in settings.TEMPLATES for d in t["DIRS"]}
    needed |= {"workers"}  # Celery tasks (multi-environment)
    missing = needed - copied
    assert not missing, f"the image lacks {sorted(missing)}"
    assert "." not in copied, "COPY . would ship tests, benchmarks and the working copy's files"


# --- entrypoint ----------------------------------------------------------------------------


def test_entrypoint_is_an_executable_sh_script():
    script = repo_path(image_entrypoint())
    assert script == ENTRYPOINT and script.is_file()
    assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    assert script.read_text(encoding="utf-8").startswith("#!/bin/sh"), "slim has no bash"
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _run_entrypoint(tmp_path: Path, env: dict[str, str], args: list[str] | None = None):
    """Run the entrypoint with `python`, `uvicorn` and `celery` replaced by stubs that log
    their PID, argument count and argv. Returns (exit code, calls, the last call's PID and
    argument count, the entrypoint's PID)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stub = (
        "#!/bin/sh\n"
        'echo "$$ $# $(basename "$0") $*" >> "$CALL_LOG"\n'
        'if [ -n "${FAIL_ON:-}" ] && [ "$2" = "$FAIL_ON" ]; then exit 3; fi\n'
    )
    for tool in ("python", "uvicorn", "celery"):
        (bin_dir / tool).write_text(stub, encoding="utf-8")
        (bin_dir / tool).chmod(0o755)
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALL_LOG": str(log), **env}
    proc = subprocess.Popen(
        [str(ENTRYPOINT), *(args or [])],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.communicate(timeout=30)
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    fields = [line.split(" ", 2) for line in lines]
    calls = [f[2] for f in fields]
    last = (fields[-1][0], int(fields[-1][1])) if fields else (None, 0)
    return proc.returncode, calls, last, str(proc.pid)


_PREPARE = {
    "local": [
        "python manage.py check --fail-level ERROR",
        "python manage.py migrate --noinput -v0",
        "python manage.py bootstrap_local",
    ],
    "supervisor": [
        "python manage.py check --fail-level ERROR",
        "python manage.py migrate --noinput -v0",
        "python manage.py cluster_superuser",
    ],
    "worker": [],  # run_environment checks and migrates its own database
}
_DEFAULT = {
    "local": UVICORN_DEFAULT,
    "supervisor": UVICORN_DEFAULT,
    "worker": "python manage.py run_environment",
}


@pytest.mark.parametrize(
    ("env", "mode"),
    [
        ({}, "local"),
        ({"APP_MODE": "local"}, "local"),
        ({"APP_MODE": " Local "}, "local"),
        ({"APP_MODE": "supervisor"}, "supervisor"),
        ({"APP_MODE": "SUPERVISOR"}, "supervisor"),
        ({"APP_MODE": "worker"}, "worker"),
        ({"APP_MODE": " Worker\n"}, "worker"),
    ],
)
def test_entrypoint_prepares_the_mode_then_execs_its_default_server(tmp_path, env, mode):
    code, calls, (last_pid, _), entry_pid = _run_entrypoint(tmp_path, env)
    assert code == 0
    assert calls == [*_PREPARE[mode], _DEFAULT[mode]]
    assert last_pid == entry_pid, "exec: the server replaces the shell and gets SIGTERM"


@pytest.mark.parametrize("name", sorted(build_services()))
def test_entrypoint_runs_each_compose_service_as_the_container_would(tmp_path, name):
    mode = env_of(name)["APP_MODE"]
    command = command_of(name)
    code, calls, (last_pid, argc), entry_pid = _run_entrypoint(
        tmp_path, {"APP_MODE": mode}, command
    )
    assert code == 0
    assert calls == [*_PREPARE[mode], " ".join(command) if command else _DEFAULT[mode]]
    if command:
        assert argc == len(command) - 1, "each argument arrives as it was given"
    assert last_pid == entry_pid, "exec: the service's process replaces the shell"


def test_the_supervisor_serves_what_the_seed_publishes():
    # The supervisor has no command of its own: the entrypoint's default, uvicorn on port 80.
    assert command_of("supervisor") == []
    [(_, container)] = ports_of("supervisor")
    assert f"--port {container}" in UVICORN_DEFAULT and "--host 0.0.0.0" in UVICORN_DEFAULT


@pytest.mark.parametrize(
    ("mode", "failing"),
    [
        ("local", "check"),
        ("local", "migrate"),
        ("local", "bootstrap_local"),
        ("supervisor", "check"),
        ("supervisor", "migrate"),
        ("supervisor", "cluster_superuser"),
    ],
)
def test_entrypoint_stops_at_the_first_failing_step(tmp_path, mode, failing):
    code, calls, _, _ = _run_entrypoint(
        tmp_path, {"APP_MODE": mode, "FAIL_ON": failing}, ["celery", "-A", "x", "worker"]
    )
    assert code != 0
    assert calls[-1].startswith(f"python manage.py {failing}")
    assert not any(call.startswith(("uvicorn", "celery")) for call in calls)


def test_entrypoint_passes_a_command_through_with_its_arguments_intact(tmp_path):
    args = ["python", "manage.py", "apps", "create", "two words", "--title=a b"]
    code, calls, (_, argc), _ = _run_entrypoint(tmp_path, {"APP_MODE": "worker"}, args)
    assert code == 0
    assert calls == [" ".join(args)]
    assert argc == len(args) - 1, "no argument was split or joined on the way"
