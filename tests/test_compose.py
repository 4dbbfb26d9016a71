"""docker-compose.yml, Dockerfile and docker/entrypoint.sh, read against the code.

No Docker engine runs here, so these tests keep the container files honest by reading them:
services, variable names the code really reads, commands Django really knows, health checks,
and the supervisor service's environment run through `manage.py check`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

# Where the project reads its environment variables.
ENV_READERS = [
    ROOT / "supervisor_project" / "settings.py",
    ROOT / "supervisor_project" / "envconfig.py",
]
_READ_RE = re.compile(
    r"""(?:\benv_(?:str|int|bool|float|choice|list)\("""
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
SEED_SUPERVISOR_PORTS = ["14000:80"]
# Values a test supplies for the compose file's required ${VAR:?...} variables.
REQUIRED_FROM_HOST = {"SECRET_KEY": "compose-test-secret-key-" + "x" * 40}


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


def interpolate(value: str, host_env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""

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
    host_env = REQUIRED_FROM_HOST if host_env is None else host_env
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    resolved = {}
    for name, value in raw.items():
        assert value is not None, f"{name} is passed through from the host; give it a value"
        resolved[name] = interpolate(str(value), host_env)
    return resolved


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


def as_argv(value: str | list) -> list[str]:
    if isinstance(value, list):
        return [str(part) for part in value]
    value = value.strip()
    if value.startswith("["):
        return json.loads(value)
    return ["/bin/sh", "-c", value]


def effective_command(service: dict) -> list[str]:
    """What a build service's container runs: its own entrypoint/command, else the image's."""
    if "entrypoint" in service or "command" in service:
        return as_argv(service.get("entrypoint") or []) + as_argv(service.get("command") or [])
    entrypoint = dockerfile_values("ENTRYPOINT")
    cmd = dockerfile_values("CMD")
    return (as_argv(entrypoint[-1]) if entrypoint else []) + (as_argv(cmd[-1]) if cmd else [])


def repo_path(container_path: str) -> Path:
    """Map a path inside the image (WORKDIR /app) to the repository."""
    workdir = dockerfile_values("WORKDIR")[-1]
    path = Path(container_path)
    if path.is_absolute():
        path = path.relative_to(workdir)
    return ROOT / path


# --- services ------------------------------------------------------------------------------


def test_the_services_that_work_today_and_no_others():
    assert set(services()) == {"postgres", "redis", "supervisor"}
    assert services()["postgres"]["image"] == "postgres:15"
    assert services()["redis"]["image"].startswith("redis:7")
    assert services()["supervisor"]["build"] == "."


def test_every_hosted_service_runs_local_mode_the_only_one_this_build_accepts():
    # APP_MODE=supervisor|worker is refused by supervisor.E010 today: such a container exits.
    for name, service in build_services().items():
        assert service_env(service).get("APP_MODE", "local") == "local", name


def test_every_service_has_a_healthcheck_and_restarts():
    for name, service in services().items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert service.get("restart") == "always", name


def test_supervisor_waits_for_a_healthy_postgres():
    depends = services()["supervisor"]["depends_on"]
    assert isinstance(depends, dict), "the long form is needed to wait for health"
    assert depends["postgres"]["condition"] == "service_healthy"


def test_postgres_healthcheck_uses_pg_isready_on_the_supervisor_database():
    postgres = services()["postgres"]
    test = " ".join(as_argv(postgres["healthcheck"]["test"][1:]))
    assert "pg_isready" in test
    database = service_env(services()["supervisor"])["DB_DATABASE"]
    assert service_env(postgres)["POSTGRES_DB"] == database, "the image creates this database"
    assert f"-d {database}" in test


def test_redis_healthcheck_pings():
    assert as_argv(services()["redis"]["healthcheck"]["test"]) == ["CMD", "redis-cli", "ping"]


def test_supervisor_ports_match_the_seed():
    assert [str(p) for p in services()["supervisor"]["ports"]] == SEED_SUPERVISOR_PORTS
    assert "80" in [port.split()[0] for port in dockerfile_values("EXPOSE")]


def test_supervisor_points_at_the_postgres_service_like_the_seed():
    env = service_env(services()["supervisor"])
    assert env["DB_DIALECT"] == "postgres"
    assert env["DB_HOST"] == "postgres" and env["DB_HOST"] in services()
    assert env["DB_PORT"] == "5432"
    assert env["DB_DATABASE"] == "nocobase_supervisor"
    assert env["DB_PASSWORD"] == service_env(services()["postgres"])["POSTGRES_PASSWORD"]


def test_every_named_volume_is_declared_and_supervisor_keeps_its_storage():
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"
    targets = [v.split(":")[1] for v in services()["supervisor"]["volumes"]]
    assert "/data/storage" in targets


# --- environment variables -----------------------------------------------------------------


def test_env_name_collection_finds_the_known_settings():
    # Guards the regex: if it stopped matching, every name would look unknown (or none would).
    assert {"APP_MODE", "DB_DIALECT", "DB_HOST", "SECRET_KEY", "STORAGE_DIR", "TZ"} <= (
        code_env_names()
    )


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


def test_secret_key_is_required_with_a_clear_message():
    raw = services()["supervisor"]["environment"]["SECRET_KEY"]
    assert raw.startswith("${SECRET_KEY:?") and len(raw) > len("${SECRET_KEY:?}") + 20
    with pytest.raises(ValueError, match=r"SECRET_KEY .*long random string"):
        service_env(services()["supervisor"], host_env={})


def test_allowed_hosts_cover_localhost_and_the_healthcheck_host():
    from urllib.parse import urlsplit

    from django.urls import resolve

    env = service_env(services()["supervisor"])
    hosts = [h.strip() for h in env["ALLOWED_HOSTS"].split(",")]
    assert {"localhost", "127.0.0.1"} <= set(hosts)
    test = as_argv(services()["supervisor"]["healthcheck"]["test"])
    assert test[:3] == ["CMD", "python", "-c"], "slim images have no curl"
    url = re.search(r"https?://[^'\"]+", test[3]).group(0)
    parts = urlsplit(url)
    assert parts.hostname in hosts
    assert parts.port in (None, 80), "the server listens on port 80 inside the container"
    assert resolve(parts.path).url_name == "login"


def _check_env(service: dict, storage: Path, **overrides: str) -> dict[str, str]:
    """A clean process environment: the service's variables and nothing from this test run."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    env.update(service_env(service))
    env.update(STORAGE_DIR=str(storage), **overrides)
    return env


def _manage_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", sorted(build_services()))
def test_service_environment_passes_the_system_checks_on_sqlite(name, tmp_path):
    env = _check_env(build_services()[name], tmp_path)
    for key in [k for k in env if k.startswith("DB_")]:
        del env[key]
    env["DB_DIALECT"] = "sqlite"
    assert env.get("SECRET_KEY"), "the compose file sets SECRET_KEY"
    result = _manage_check(env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("name", sorted(build_services()))
def test_service_environment_passes_the_system_checks_as_written(name, tmp_path):
    # `check` opens no connection, so the compose DB_* values (host `postgres`) are read and
    # validated (dialect, port range) without a server named postgres.
    result = _manage_check(_check_env(build_services()[name], tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "secret_key").exists(), "SECRET_KEY from compose is used"


# --- Dockerfile and entrypoint -------------------------------------------------------------


def test_dockerfile_installs_requirements_and_runs_the_entrypoint():
    assert dockerfile_values("FROM")[0] == "python:3.11-slim"
    copies = dockerfile_values("COPY")
    assert any(c.split()[0] == "requirements.txt" for c in copies)
    assert any("pip install" in r and "-r requirements.txt" in r for r in dockerfile_values("RUN"))
    for service in build_services().values():
        argv = effective_command(service)
        assert argv and argv[-1].endswith("docker/entrypoint.sh"), argv
    user = dockerfile_values("USER")
    assert user and user[-1] not in ("root", "0"), "runs as a non-root user"
    env = " ".join(dockerfile_values("ENV"))
    assert "STORAGE_DIR=/data/storage" in env
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
    assert "." not in copied, "no .dockerignore: COPY . would ship .venv/ and storage/"


def test_build_services_run_files_that_exist_and_commands_django_knows():
    from django.core.management import get_commands

    for name, service in build_services().items():
        argv = effective_command(service)
        script = repo_path(argv[-1])
        assert script.is_file(), f"{name}: {argv[-1]} is not in the repository"
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
        assert script.read_text(encoding="utf-8").startswith("#!/bin/sh"), "slim has no bash"
    text = ENTRYPOINT.read_text(encoding="utf-8")
    used = re.findall(r"manage\.py\s+([a-z_]+)", text)
    assert {"check", "migrate", "bootstrap_local"} <= set(used)
    unknown = set(used) - set(get_commands())
    assert not unknown, f"entrypoint runs unknown management commands: {sorted(unknown)}"


def test_entrypoint_is_valid_sh():
    result = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _run_entrypoint(tmp_path: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run the entrypoint with `python` and `uvicorn` replaced by stubs that log their argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    stub = (
        "#!/bin/sh\n"
        'echo "$(basename "$0") $*" >> "$CALL_LOG"\n'
        'if [ -n "${FAIL_ON:-}" ] && [ "$2" = "$FAIL_ON" ]; then exit 3; fi\n'
    )
    for tool in ("python", "uvicorn"):
        (bin_dir / tool).write_text(stub, encoding="utf-8")
        (bin_dir / tool).chmod(0o755)
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALL_LOG": str(log), **env}
    result = subprocess.run(
        [str(ENTRYPOINT)], env=full_env, capture_output=True, text=True, timeout=30
    )
    calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return result.returncode, calls


_SERVE = (
    "uvicorn supervisor_project.asgi:application --host 0.0.0.0 --port 80 --lifespan on "
    "--no-server-header"
)


@pytest.mark.parametrize(
    ("env", "bootstraps"),
    [
        ({}, True),
        ({"APP_MODE": "local"}, True),
        ({"APP_MODE": " Local "}, True),
        ({"APP_MODE": "supervisor"}, False),
        ({"APP_MODE": "worker"}, False),
    ],
)
def test_entrypoint_runs_make_runs_sequence(tmp_path, env, bootstraps):
    code, calls = _run_entrypoint(tmp_path, env)
    assert code == 0
    expected = [
        "python manage.py check --fail-level ERROR",
        "python manage.py migrate --noinput -v0",
        *(["python manage.py bootstrap_local"] if bootstraps else []),
        _SERVE,
    ]
    assert calls == expected


@pytest.mark.parametrize("failing", ["check", "migrate", "bootstrap_local"])
def test_entrypoint_stops_at_the_first_failing_step(tmp_path, failing):
    code, calls = _run_entrypoint(tmp_path, {"FAIL_ON": failing})
    assert code != 0
    assert calls[-1].startswith(f"python manage.py {failing}")
    assert not any(call.startswith("uvicorn") for call in calls)
