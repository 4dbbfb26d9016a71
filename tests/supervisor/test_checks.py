"""Start-up configuration checks, as an operator meets them: `manage.py check` in a shell.

Each case runs a real subprocess with a clean copy of the environment (no configuration
variable of the outer shell leaks in), STORAGE_DIR under tmp_path, DB_DIALECT=sqlite and no
DB_HOST, then the variables under test. A bad value must stop start-up with its stable id and
one line that names the variable; it must never fall back silently to a default.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Variables the settings read; removed from the copied environment so the outer shell (for
# instance the PostgreSQL run's DB_* variables) cannot change what a case tests.
_CONFIG_PREFIXES = ("APP_", "ENVIRONMENT_", "DB_", "HEARTBEAT_")
_CONFIG_NAMES = frozenset(
    {
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "DEBUG",
        "ENV_FILE",
        "LOG_LEVEL",
        "SECRET_KEY",
        "STORAGE_DIR",
        "TENANT_APPS",
    }
)

# Valid values that let a non-local mode get as far as the variable under test.
_REDIS = {
    "APP_SUPERVISOR_REDIS_URL": "redis://127.0.0.1:6379/0",
    "APP_COMMAND_REDIS_URL": "redis://127.0.0.1:6379/1",
}
_WORKER = {
    "APP_MODE": "worker",
    "SECRET_KEY": "a-test-secret-key-that-is-long-enough",
    "ENVIRONMENT_URL": "http://worker.example.com",
    **_REDIS,
}
_SUPERVISOR = {"APP_MODE": "supervisor", "SECRET_KEY": "a-test-secret-key-that-is-long-enough"}
# Message signing (supervisor.E014 / W002): the supervisor's master secret, an environment's
# own key (64 hex digits, as `manage.py environment_key env_a` prints one).
_MESSAGE_SECRET = "a-test-message-secret-that-is-long-enough-0123"
_ENV_A_KEY = "9f" * 32
_VALID_SUPERVISOR = {**_SUPERVISOR, **_REDIS, "APP_MESSAGE_SECRETS": _MESSAGE_SECRET}
_VALID_WORKER = {**_WORKER, "ENVIRONMENT_NAME": "env_a", "APP_ENVIRONMENT_KEYS": _ENV_A_KEY}


def clean_env(tmp_path: Path, overrides: dict[str, str]) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _CONFIG_NAMES and not key.startswith(_CONFIG_PREFIXES)
    }
    env.update(
        DJANGO_SETTINGS_MODULE="supervisor_project.settings",
        DB_DIALECT="sqlite",
        STORAGE_DIR=str(tmp_path / "storage"),
    )
    env.update({key: value.format(tmp=tmp_path) for key, value in overrides.items()})
    return env


def run_python(tmp_path: Path, overrides: dict[str, str], *args: str):
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=clean_env(tmp_path, overrides),
        capture_output=True,
        text=True,
        timeout=60,
    )


def lines_with(stderr: str, check_id: str) -> list[str]:
    return [line for line in stderr.splitlines() if f"({check_id})" in line]


def error_ids(stderr: str) -> set[str]:
    return {
        line.split("(", 1)[1].split(")", 1)[0]
        for line in stderr.splitlines()
        if line.startswith("?: (supervisor.E")
    }


# (overrides, files to write under tmp_path, check id, fragments its one line must contain)
ERROR_CASES = [
    pytest.param(
        {"APP_MODE": "bogus"},
        {},
        "supervisor.E001",
        ["APP_MODE='bogus'", "local, supervisor, worker", "no fallback"],
        id="E001-unknown-mode",
    ),
    pytest.param(
        {"APP_DISCOVERY_ADAPTER": "bogus"},
        {},
        "supervisor.E002",
        ["APP_DISCOVERY_ADAPTER='bogus'", "local, remote", "no fallback"],
        id="E002-unknown-discovery-adapter",
    ),
    pytest.param(
        {"APP_PROCESS_ADAPTER": "bogus"},
        {},
        "supervisor.E002",
        ["APP_PROCESS_ADAPTER='bogus'", "local, remote", "no fallback"],
        id="E002-unknown-process-adapter",
    ),
    pytest.param(
        {"APP_COMMAND_ADAPTER": "bogus"},
        {},
        "supervisor.E002",
        ["APP_COMMAND_ADAPTER='bogus'", "local, redis", "no fallback"],
        id="E002-unknown-command-adapter",
    ),
    pytest.param(
        {"APP_COMMAND_ADPATER": "local", "APP_COMMAND_ADAPTER": "redis"},
        {},
        "supervisor.E002",
        ["APP_COMMAND_ADAPTER='redis'", "APP_COMMAND_ADPATER='local'", "disagree"],
        id="E002-misspelled-and-correct-disagree",
    ),
    pytest.param(
        dict(_WORKER),
        {},
        "supervisor.E003",
        ["APP_MODE=worker", "ENVIRONMENT_NAME"],
        id="E003-worker-without-environment-name",
    ),
    pytest.param(
        {**_WORKER, "ENVIRONMENT_NAME": "Berlin-1"},
        {},
        "supervisor.E003",
        ["ENVIRONMENT_NAME='Berlin-1'", "lower-case"],
        id="E003-worker-with-bad-environment-name",
    ),
    pytest.param(
        {**_SUPERVISOR, "APP_COMMAND_REDIS_URL": _REDIS["APP_COMMAND_REDIS_URL"]},
        {},
        "supervisor.E004",
        ["APP_SUPERVISOR_REDIS_URL must be set", "APP_MODE=supervisor"],
        id="E004-supervisor-without-supervisor-redis-url",
    ),
    pytest.param(
        {**_SUPERVISOR, "APP_SUPERVISOR_REDIS_URL": _REDIS["APP_SUPERVISOR_REDIS_URL"]},
        {},
        "supervisor.E004",
        ["APP_COMMAND_REDIS_URL must be set", "APP_MODE=supervisor"],
        id="E004-supervisor-without-command-redis-url",
    ),
    pytest.param(
        {**_SUPERVISOR, **_REDIS, "APP_COMMAND_REDIS_URL": "http://127.0.0.1:6379/1"},
        {},
        "supervisor.E004",
        ["APP_COMMAND_REDIS_URL", "redis://"],
        id="E004-redis-url-with-http-scheme",
    ),
    pytest.param(
        {"ENVIRONMENT_URL": "ftp://x"},
        {},
        "supervisor.E005",
        ["ENVIRONMENT_URL='ftp://x'", "http:// or https://"],
        id="E005-ftp-url",
    ),
    pytest.param(
        {"ENVIRONMENT_URL": "http://my host.example.com"},
        {},
        "supervisor.E005",
        ["ENVIRONMENT_URL='http://my host.example.com'", "white space"],
        id="E005-url-with-space",
    ),
    pytest.param(
        {"ENVIRONMENT_URL": "https://user:secret@env.example.com"},
        {},
        "supervisor.E005",
        ["ENVIRONMENT_URL=", "credentials"],
        id="E005-url-with-credentials",
    ),
    pytest.param(
        {"HEARTBEAT_INTERVAL": "abc"},
        {},
        "supervisor.E006",
        ["HEARTBEAT_INTERVAL='abc'", "whole number"],
        id="E006-heartbeat-not-a-number",
    ),
    pytest.param(
        {"HEARTBEAT_INTERVAL": "0"},
        {},
        "supervisor.E006",
        ["HEARTBEAT_INTERVAL=0", "outside 1..86400"],
        id="E006-heartbeat-zero",
    ),
    pytest.param(
        {"APP_LOCK_TTL": "1"},
        {},
        "supervisor.E006",
        ["APP_LOCK_TTL=1.0", "outside 3.0..600"],
        id="E006-lock-ttl-too-short-to-extend",
    ),
    pytest.param(
        {"PROXY_KEEPALIVE_SECONDS": "0"},
        {},
        "supervisor.E006",
        ["PROXY_KEEPALIVE_SECONDS=0.0", "outside 0.1..4.5"],
        id="E006-proxy-keepalive-zero",
    ),
    pytest.param(
        {"PROXY_KEEPALIVE_SECONDS": "5"},
        {},
        "supervisor.E006",
        ["PROXY_KEEPALIVE_SECONDS=5.0", "outside 0.1..4.5"],
        id="E006-proxy-keepalive-not-below-the-environments",
    ),
    pytest.param(
        {"DEBUG": "maybe"},
        {},
        "supervisor.E006",
        ["DEBUG='maybe'", "boolean"],
        id="E006-debug-not-a-boolean",
    ),
    pytest.param(
        {"DB_DIALECT": "oracle"},
        {},
        "supervisor.E007",
        ["DB_DIALECT='oracle'", "postgres", "sqlite", "no fallback"],
        id="E007-unknown-db-dialect",
    ),
    pytest.param(
        {"APP_MODE": "local", "APP_PROCESS_ADAPTER": "remote"},
        {},
        "supervisor.E008",
        ["APP_PROCESS_ADAPTER=remote", "APP_MODE=local", "use local"],
        id="E008-local-mode-with-remote-process-adapter",
    ),
    pytest.param(
        {"APP_MODE": "supervisor", **_REDIS},
        {},
        "supervisor.E009",
        ["SECRET_KEY must be set", "APP_MODE=supervisor"],
        id="E009-supervisor-without-secret-key",
    ),
    pytest.param(
        {"ENV_FILE": "{tmp}/missing.env"},
        {},
        "supervisor.E011",
        ["ENV_FILE=", "missing.env", "cannot be read"],
        id="E011-env-file-missing",
    ),
    pytest.param(
        {"ENV_FILE": "{tmp}/app.env"},
        {"app.env": "# read before anything else\nexport APP_MODE='bogus'\n"},
        "supervisor.E001",
        ["APP_MODE='bogus'", "no fallback"],
        id="E001-from-env-file",
    ),
    pytest.param(
        {"APP_DB_PREFIX": "Bad-Prefix"},
        {},
        "supervisor.E012",
        ["APP_DB_PREFIX='Bad-Prefix'", "lower-case"],
        id="E012-bad-db-prefix",
    ),
    pytest.param(
        {**_VALID_SUPERVISOR, "APP_MESSAGE_SECRETS": ""},
        {},
        "supervisor.E014",
        ["APP_MODE=supervisor needs APP_MESSAGE_SECRETS", "at least 32 characters"],
        id="E014-supervisor-without-message-secrets",
    ),
    pytest.param(
        {**_VALID_SUPERVISOR, "APP_MESSAGE_SECRETS": f"{_MESSAGE_SECRET},too-short-secret"},
        {},
        "supervisor.E014",
        ["APP_MESSAGE_SECRETS: secret 2 of 2", "16 characters long", "at least 32"],
        id="E014-short-message-secret",
    ),
    pytest.param(
        {**_VALID_SUPERVISOR, "APP_MESSAGE_SECRETS": f"{_MESSAGE_SECRET},{_MESSAGE_SECRET}"},
        {},
        "supervisor.E014",
        ["APP_MESSAGE_SECRETS", "same secret twice"],
        id="E014-duplicate-message-secret",
    ),
    pytest.param(
        {**_VALID_SUPERVISOR, "APP_ENVIRONMENT_KEYS": _ENV_A_KEY},
        {},
        "supervisor.E014",
        ["APP_ENVIRONMENT_KEYS is for environments", "unset it"],
        id="E014-supervisor-with-environment-keys",
    ),
    pytest.param(
        {**_VALID_WORKER, "APP_ENVIRONMENT_KEYS": ""},
        {},
        "supervisor.E014",
        ["APP_MODE=worker needs APP_ENVIRONMENT_KEYS", "manage.py environment_key"],
        id="E014-worker-without-keys",
    ),
    pytest.param(
        {**_VALID_WORKER, "APP_MESSAGE_SECRETS": _MESSAGE_SECRET},
        {},
        "supervisor.E014",
        ["APP_ENVIRONMENT_KEYS or APP_MESSAGE_SECRETS, not both"],
        id="E014-worker-with-keys-and-secrets",
    ),
    pytest.param(
        {**_VALID_WORKER, "APP_ENVIRONMENT_KEYS": f"{_ENV_A_KEY},abc"},
        {},
        "supervisor.E014",
        ["APP_ENVIRONMENT_KEYS: key 2 of 2", "64 hex digits", "environment_key"],
        id="E014-worker-with-a-key-that-is-not-hex",
    ),
    pytest.param(
        {**_VALID_SUPERVISOR, "APP_MESSAGE_MAX_AGE": "5"},
        {},
        "supervisor.E006",
        ["APP_MESSAGE_MAX_AGE=5", "outside 10.."],
        id="E006-message-max-age-too-short",
    ),
]


@pytest.mark.parametrize(("overrides", "files", "check_id", "fragments"), ERROR_CASES)
def test_bad_setting_stops_check_with_its_stable_id_on_one_line(
    tmp_path, overrides, files, check_id, fragments
):
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")

    result = run_python(tmp_path, overrides, "manage.py", "check")

    assert result.returncode != 0, result.stderr
    found = lines_with(result.stderr, check_id)
    assert found, f"no {check_id} line in:\n{result.stderr}"
    # One line carries the id and the whole explanation: the variable and what is wrong.
    assert any(all(fragment in line for fragment in fragments) for line in found), found


def test_default_environment_passes_check(tmp_path):
    result = run_python(tmp_path, {}, "manage.py", "check")

    assert result.returncode == 0, result.stderr
    assert "supervisor." not in result.stderr
    assert "no issues" in result.stdout


def test_misspelled_command_adapter_alone_is_a_warning_naming_the_right_variable(tmp_path):
    result = run_python(
        tmp_path, {"APP_MODE": "local", "APP_COMMAND_ADPATER": "local"}, "manage.py", "check"
    )

    assert result.returncode == 0, result.stderr
    warnings = lines_with(result.stderr, "supervisor.W001")
    assert len(warnings) == 1, result.stderr
    assert "APP_COMMAND_ADPATER" in warnings[0] and "APP_COMMAND_ADAPTER" in warnings[0]
    assert error_ids(result.stderr) == set()


def test_unknown_mode_reports_only_the_mode_error(tmp_path):
    result = run_python(tmp_path, {"APP_MODE": "bogus"}, "manage.py", "check")

    assert result.returncode != 0
    assert error_ids(result.stderr) == {"supervisor.E001"}, result.stderr


def test_importing_the_asgi_app_with_a_bad_mode_exits_with_the_check_line(tmp_path):
    """uvicorn never runs `check`: asgi.py must refuse to load on its own."""
    result = run_python(tmp_path, {"APP_MODE": "bogus"}, "-c", "import supervisor_project.asgi")

    assert result.returncode != 0
    e001 = [line for line in result.stderr.splitlines() if line.startswith("supervisor.E001: ")]
    assert len(e001) == 1, result.stderr
    assert "APP_MODE='bogus'" in e001[0] and "no fallback" in e001[0]


@pytest.mark.parametrize("overrides", [_VALID_SUPERVISOR, _VALID_WORKER], ids=["sup", "env"])
def test_signing_settings_of_each_mode_pass_check(tmp_path, overrides):
    result = run_python(tmp_path, overrides, "manage.py", "check")

    assert result.returncode == 0, result.stderr
    assert "supervisor." not in result.stderr
    assert "no issues" in result.stdout


def test_an_environment_given_the_master_secrets_is_warned_it_could_sign_as_any(tmp_path):
    overrides = {**_WORKER, "ENVIRONMENT_NAME": "env_a", "APP_MESSAGE_SECRETS": _MESSAGE_SECRET}
    result = run_python(tmp_path, overrides, "manage.py", "check")

    assert result.returncode == 0, result.stderr  # allowed (development), loudly
    warnings = lines_with(result.stderr, "supervisor.W002")
    assert len(warnings) == 1, result.stderr
    assert "sign messages as any environment" in warnings[0]
    assert "APP_ENVIRONMENT_KEYS" in warnings[0]
    assert error_ids(result.stderr) == set()


def test_a_bad_secret_is_never_printed(tmp_path):
    short = "a-short-but-secret-value"
    overrides = {**_VALID_SUPERVISOR, "APP_MESSAGE_SECRETS": short}
    result = run_python(tmp_path, overrides, "manage.py", "check")

    assert result.returncode != 0
    assert lines_with(result.stderr, "supervisor.E014")
    assert short not in result.stderr + result.stdout


def test_local_mode_needs_no_message_secrets(tmp_path):
    result = run_python(tmp_path, {"APP_MODE": "local"}, "manage.py", "check")

    assert result.returncode == 0, result.stderr
    assert "supervisor.E014" not in result.stderr


def test_environment_key_prints_what_an_environment_then_passes_check_with(tmp_path):
    from workers.signing import environment_key

    printed = run_python(tmp_path, _VALID_SUPERVISOR, "manage.py", "environment_key", "env_a")
    assert printed.returncode == 0, printed.stderr
    keys = printed.stdout.strip()
    assert keys == environment_key(_MESSAGE_SECRET, "env_a").hex()
    worker = {**_VALID_WORKER, "APP_ENVIRONMENT_KEYS": keys}
    result = run_python(tmp_path, worker, "manage.py", "check")
    assert result.returncode == 0, result.stderr
    assert "supervisor." not in result.stderr
