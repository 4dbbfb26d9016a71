"""App Supervisor settings: one module, driven by environment variables.

Names follow the seed (APP_MODE, APP_*_ADAPTER, ENVIRONMENT_*, DB_*, HEARTBEAT_INTERVAL).
Bad values do not raise here: they are collected in envconfig.PROBLEMS and reported by the
system checks in apps/supervisor/checks.py, which stop start-up with one line each.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from apps.observability.logconfig import logging_config
from supervisor_project.envconfig import (
    PROBLEMS,
    env_bool,
    env_choice,
    env_float,
    env_hex_keys,
    env_int,
    env_list,
    env_secrets,
    env_str,
    http_url_problem,
    read_env_file,
    token_problem,
)
from supervisor_project.processes import ASGI_KEEPALIVE_SECONDS

BASE_DIR = Path(__file__).resolve().parent.parent

if env_str("ENV_FILE"):
    read_env_file(env_str("ENV_FILE"))

STORAGE_DIR = Path(env_str("STORAGE_DIR") or BASE_DIR / "storage").resolve()

# --- Mode and adapters -------------------------------------------------------------------
MODES = ("local", "supervisor", "worker")
APP_MODE = env_choice("APP_MODE", MODES, "local", "supervisor.E001")

# What each mode uses when an adapter is not named explicitly.
_ADAPTER_DEFAULTS = {
    "local": {"discovery": "local", "process": "local", "command": "local"},
    "supervisor": {"discovery": "remote", "process": "remote", "command": "redis"},
    "worker": {"discovery": "remote", "process": "local", "command": "redis"},
}.get(APP_MODE, {"discovery": "local", "process": "local", "command": "local"})

APP_DISCOVERY_ADAPTER = env_choice(
    "APP_DISCOVERY_ADAPTER", ("local", "remote"), _ADAPTER_DEFAULTS["discovery"], "supervisor.E002"
)
APP_PROCESS_ADAPTER = env_choice(
    "APP_PROCESS_ADAPTER", ("local", "remote"), _ADAPTER_DEFAULTS["process"], "supervisor.E002"
)

# The seed's page misspells the variable as APP_COMMAND_ADPATER; accept it, loudly.
_command_correct = env_str("APP_COMMAND_ADAPTER")
_command_misspelled = env_str("APP_COMMAND_ADPATER")
if _command_misspelled:
    if _command_correct and _command_correct.lower() != _command_misspelled.lower():
        PROBLEMS.error(
            "supervisor.E002",
            f"APP_COMMAND_ADAPTER={_command_correct!r} and the misspelled APP_COMMAND_ADPATER="
            f"{_command_misspelled!r} disagree; set only APP_COMMAND_ADAPTER.",
        )
    else:
        PROBLEMS.warn(
            "supervisor.W001",
            "APP_COMMAND_ADPATER is misspelled; it is accepted, but rename it to "
            "APP_COMMAND_ADAPTER.",
        )
        os.environ.setdefault("APP_COMMAND_ADAPTER", _command_misspelled)
APP_COMMAND_ADAPTER = env_choice(
    "APP_COMMAND_ADAPTER", ("local", "redis"), _ADAPTER_DEFAULTS["command"], "supervisor.E002"
)

APP_SUPERVISOR_REDIS_URL = env_str("APP_SUPERVISOR_REDIS_URL")
APP_COMMAND_REDIS_URL = env_str("APP_COMMAND_REDIS_URL")
# A namespace for queues, cache keys and locks, so several clusters can share one Redis.
APP_QUEUE_PREFIX = env_str("APP_QUEUE_PREFIX")
if APP_QUEUE_PREFIX and not re.fullmatch(r"[a-z0-9_]{1,32}\.", APP_QUEUE_PREFIX):
    PROBLEMS.error(
        "supervisor.E012",
        f"APP_QUEUE_PREFIX={APP_QUEUE_PREFIX!r} must be 1-32 "
        "lower-case letters, digits or _ followed by a dot (e.g. 'team1.').",
    )

ENVIRONMENT_NAME = env_str("ENVIRONMENT_NAME", "local" if APP_MODE == "local" else "")
ENVIRONMENT_URL = env_str("ENVIRONMENT_URL")
ENVIRONMENT_PROXY_URL = env_str("ENVIRONMENT_PROXY_URL") or ENVIRONMENT_URL
for _name, _value in (
    ("ENVIRONMENT_URL", ENVIRONMENT_URL),
    ("ENVIRONMENT_PROXY_URL", env_str("ENVIRONMENT_PROXY_URL")),
):
    if _value and (problem := http_url_problem(_value)):
        PROBLEMS.error("supervisor.E005", f"{_name}={_value!r} {problem}.")

HEARTBEAT_INTERVAL = env_int("HEARTBEAT_INTERVAL", 120, minimum=1, maximum=86400)
# How late a beat may be before the environment counts as stale (seconds, receiver's clock).
HEARTBEAT_GRACE = env_int("HEARTBEAT_GRACE", 30, minimum=0, maximum=86400)
# How often the supervisor's job worker stores the heartbeats environments left in Redis
# (seconds; a beat's time of arrival is the fold's, so at most this late).
HEARTBEAT_FOLD_SECONDS = env_float(
    "HEARTBEAT_FOLD_SECONDS", min(1.0, HEARTBEAT_INTERVAL / 4), minimum=0.05, maximum=60.0
)

# --- Core Django -------------------------------------------------------------------------
DEBUG = env_bool("DEBUG", False)


def _local_secret_key() -> str:
    """Local mode keeps a generated key under storage/ so sessions survive restarts."""
    path = STORAGE_DIR / "secret_key"
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        STORAGE_DIR.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(key)
        return key


SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if APP_MODE not in ("supervisor", "worker"):
        SECRET_KEY = _local_secret_key()  # local, or an unknown mode that E001 reports
    else:
        PROBLEMS.error("supervisor.E009", f"SECRET_KEY must be set when APP_MODE={APP_MODE}.")
        SECRET_KEY = "unset-" + secrets.token_urlsafe(32)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Apps every sub-application database gets, besides TENANT_APPS.
TENANT_SHARED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.admin",
    "django.contrib.sessions",
]
# The modules a sub-application is made of (as in django-tenants). Their tables live only in
# each app's own database, never in the supervisor's.
TENANT_APPS = env_list("TENANT_APPS", ["apps.notes"])

INSTALLED_APPS = [
    *TENANT_SHARED_APPS,
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "apps.supervisor",
    "apps.runtime",
    "apps.gateway",
    "apps.observability",
    "apps.api",
    *TENANT_APPS,
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before everything that reads cookies, sessions or the path: it picks the sub-app.
    "apps.gateway.middleware.AppGatewayMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# An environment serves its apps and probes only: no admin, no API (urls_environment.py).
ROOT_URLCONF = (
    "supervisor_project.urls_environment" if APP_MODE == "worker" else "supervisor_project.urls"
)
TENANT_URLCONF = "apps.runtime.tenant_urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "supervisor_project.asgi.application"

# --- Databases ---------------------------------------------------------------------------
DB_DIALECT = env_choice(
    "DB_DIALECT", ("sqlite", "postgres", "postgresql"), "sqlite", "supervisor.E007"
)
if DB_DIALECT == "postgresql":
    DB_DIALECT = "postgres"

if DB_DIALECT == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": env_str("DB_HOST", "127.0.0.1"),
            "PORT": str(env_int("DB_PORT", 5432, minimum=1, maximum=65535)),
            "NAME": env_str("DB_DATABASE", "supervisor"),
            "USER": env_str("DB_USER", "postgres"),
            "PASSWORD": env_str("DB_PASSWORD"),
            "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 0, maximum=3600),
            "CONN_HEALTH_CHECKS": True,
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # An environment has its own small database (what it hosts), never the supervisor's.
            "NAME": env_str("DB_DATABASE")
            or str(
                STORAGE_DIR
                / ("environment.sqlite3" if APP_MODE == "worker" else "supervisor.sqlite3")
            ),
            # WAL + a busy timeout: the server and a CLI in a second shell share the file.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

# Celery workers (sync, one task at a time per process) keep their connection between tasks:
# a new PostgreSQL connection per report or heartbeat was most of their cost. ASGI servers
# keep DB_CONN_MAX_AGE (Django advises against persistent connections under ASGI).
DB_WORKER_CONN_MAX_AGE = env_int("DB_WORKER_CONN_MAX_AGE", 300, maximum=3600)

DATABASE_ROUTERS = ["apps.runtime.routing.AppDatabaseRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Sub-application databases.
APP_DB_PREFIX = env_str("APP_DB_PREFIX", "app_")
# A new PostgreSQL app database is a copy of a migrated template (one per migration state,
# named <APP_DB_PREFIX>_template_<digest>) instead of a migrate from scratch.
APP_DB_TEMPLATES = env_bool("APP_DB_TEMPLATES", True)
# The PostgreSQL database that holds the schemas of `new_schema` apps (created on demand).
APP_SCHEMA_DATABASE = env_str("APP_SCHEMA_DATABASE", "supervisor_apps")
APP_SQLITE_DIR = STORAGE_DIR / "apps"
# Seconds a process trusts what it knows of an app's route before it asks again.
APP_ROUTE_CACHE_SECONDS = env_float("APP_ROUTE_CACHE_SECONDS", 1.0, maximum=60)
# How long a request to an "on first visit" app waits for its start before a 503 "starting".
APP_LAZY_START_WAIT = env_float("APP_LAZY_START_WAIT", 3.0, maximum=60)
# The Redis lock on one app's install: its holder extends it every third of this; a holder
# that died (SIGKILL, power) blocks the app's next start for at most this long.
APP_LOCK_TTL = env_float("APP_LOCK_TTL", 10.0, minimum=3.0, maximum=600)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Messages kept in the session: a cookie store would need renaming per sub-app.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TZ", "UTC") or "UTC"
USE_I18N = True
USE_TZ = True

# Absolute: Django caches STATIC_URL on first use, so it cannot follow each app's prefix.
# Every sub-app runs this codebase, so /static/ serves the same files for all of them.
STATIC_URL = "/static/"
STATIC_ROOT = STORAGE_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns about a missing root
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if APP_SUPERVISOR_REDIS_URL:
    # The config cache (apps and environments), written by the supervisor after commit and
    # read by environments. Loss of it loses nothing: the supervisor rebuilds it.
    CACHES["config"] = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": APP_SUPERVISOR_REDIS_URL,
        "KEY_PREFIX": f"appsup{APP_QUEUE_PREFIX}",
        "TIMEOUT": None,
        "OPTIONS": {
            "SOCKET_CONNECT_TIMEOUT": 3,
            "SOCKET_TIMEOUT": 5,
            "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
        },
    }
# How often the supervisor rewrites the whole config cache from its database (seconds).
APP_CONFIG_REFRESH_INTERVAL = env_int("APP_CONFIG_REFRESH_INTERVAL", 60, minimum=1)
# Reconciliation retries a failed start (status `error`) only after this many seconds.
APP_START_RETRY_AFTER = env_int("APP_START_RETRY_AFTER", 300, minimum=0)
# Offline environments not seen for this long may be purged (seconds; 0 = never).
ENVIRONMENT_PURGE_AFTER = env_int("ENVIRONMENT_PURGE_AFTER", 7 * 86400)
# Listen address of an environment's ASGI server (default: ENVIRONMENT_URL's port, loopback).
ENVIRONMENT_LISTEN_HOST = env_str("ENVIRONMENT_LISTEN_HOST", "127.0.0.1")
ENVIRONMENT_LISTEN_PORT = env_int("ENVIRONMENT_LISTEN_PORT", 0, maximum=65535)

# --- Proxy (supervisor -> environments) --------------------------------------------------
PROXY_CONNECT_TIMEOUT = env_float("PROXY_CONNECT_TIMEOUT", 5.0, minimum=0.1, maximum=300)
PROXY_READ_TIMEOUT = env_float("PROXY_READ_TIMEOUT", 60.0, minimum=0.1, maximum=3600)
PROXY_MAX_CONNECTIONS = env_int("PROXY_MAX_CONNECTIONS", 200, minimum=1, maximum=10000)
# How long an idle connection to an environment is kept for reuse. Held below the
# environments' own keep-alive timeout (processes.ASGI_KEEPALIVE_SECONDS), so that the proxy
# does not send a request on a connection the environment is closing at that moment.
PROXY_KEEPALIVE_SECONDS = env_float(
    "PROXY_KEEPALIVE_SECONDS", 4.0, minimum=0.1, maximum=ASGI_KEEPALIVE_SECONDS - 0.5
)
# Keep an incoming X-Forwarded-For chain only behind a trusted proxy (else it is spoofable).
PROXY_TRUST_FORWARDED = env_bool("PROXY_TRUST_FORWARDED", False)

# Live status (apps.supervisor.live) crosses processes in supervisor mode: the job worker
# stores a report, every web process's browsers hear of it. In-process otherwise (an
# environment's websockets are its own apps' consumers).
if APP_MODE == "supervisor" and APP_SUPERVISOR_REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [APP_SUPERVISOR_REDIS_URL],
                "prefix": f"{APP_QUEUE_PREFIX}asgi",
                "capacity": 500,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery (multi-environment transport; unused in local mode) --------------------------
# Queues: `supervisor` (reports, periodic jobs) and `env.<name>` per environment. Heartbeats
# wait in a Redis hash for the fold job (apps.adapters.transport: heartbeats).
SUPERVISOR_QUEUE = f"{APP_QUEUE_PREFIX}supervisor"
CELERY_BROKER_URL = APP_COMMAND_REDIS_URL or "memory://"
CELERY_TASK_DEFAULT_QUEUE = SUPERVISOR_QUEUE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# A command a worker took and never acknowledged (it died) is delivered again after this.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("APP_COMMAND_VISIBILITY_TIMEOUT", 420, minimum=10),
    "socket_connect_timeout": 3,
    "socket_timeout": 10,
    "retry_on_timeout": True,
    "health_check_interval": 10,
}
CELERY_BEAT_SCHEDULE = {
    "detect-offline-environments": {
        "task": "workers.tasks.detect_offline",
        "schedule": max(1.0, min(HEARTBEAT_INTERVAL / 4, 30.0)),
    },
    "refresh-config-cache": {
        "task": "workers.tasks.refresh_config_cache",
        "schedule": float(APP_CONFIG_REFRESH_INTERVAL),
    },
    "expire-commands": {"task": "workers.tasks.expire_commands", "schedule": 5.0},
    "resume-start-queues": {"task": "workers.tasks.resume_start_queues", "schedule": 5.0},
    "fold-heartbeats": {
        "task": "workers.tasks.fold_heartbeats",
        "schedule": HEARTBEAT_FOLD_SECONDS,
        # A fold that waited longer than a few periods is superseded by the next one.
        "options": {"expires": max(5.0, 5 * HEARTBEAT_FOLD_SECONDS)},
    },
}
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("APP_COMMAND_SOFT_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("APP_COMMAND_TIME_LIMIT", 360, minimum=1)
CELERY_TASK_IGNORE_RESULT = True

# --- Message signing (workers/signing.py; checks supervisor.E014, W002) -------------------
# Master secrets, comma-separated, each >= 32 characters: the first signs, all verify.
# The supervisor needs them; an environment holds APP_ENVIRONMENT_KEYS instead (its own
# derived keys, printed by `manage.py environment_key <name>` on the supervisor).
APP_MESSAGE_SECRETS = env_secrets("APP_MESSAGE_SECRETS", "supervisor.E014")
APP_ENVIRONMENT_KEYS = env_hex_keys("APP_ENVIRONMENT_KEYS", "supervisor.E014")
# A signed message older than this (seconds, by its sender's clock) is refused as stale; the
# ids of processed messages are kept as long. Default: when the supervisor expires a command.
APP_MESSAGE_MAX_AGE = env_int(
    "APP_MESSAGE_MAX_AGE",
    CELERY_TASK_TIME_LIMIT + HEARTBEAT_GRACE,
    minimum=10,
    maximum=7 * 86400,
)

# --- Health, metrics and logs (apps/observability) -------------------------------------
# /readyz and /metrics answer only staff users and `Authorization: Bearer <METRICS_TOKEN>`
# unless this is true; /healthz is always public.
OBSERVABILITY_PUBLIC = env_bool("OBSERVABILITY_PUBLIC", False)
METRICS_TOKEN = env_str("METRICS_TOKEN")
if METRICS_TOKEN and (_problem := token_problem(METRICS_TOKEN)):
    PROBLEMS.error("supervisor.E013", f"METRICS_TOKEN {_problem}.")
# Counters shared by the processes of one role (prometheus_client multiprocess files); the
# supervisor's web and job worker must see the same directory.
METRICS_DIR = Path(env_str("METRICS_DIR") or STORAGE_DIR / "metrics" / APP_MODE).resolve()
# Each /readyz check's own time limit (seconds; at least 1: a Celery broadcast over Redis
# waits a whole second); the checks run concurrently.
READYZ_TIMEOUT = env_float("READYZ_TIMEOUT", 1.0, minimum=1.0, maximum=10)

# json: one JSON object per line (production); text: readable lines (`make run`).
LOG_FORMAT = env_choice(
    "LOG_FORMAT", ("json", "text"), "text" if APP_MODE == "local" else "json", "supervisor.E006"
)
LOG_LEVEL = env_choice(
    "LOG_LEVEL", ("debug", "info", "warning", "error"), "info", "supervisor.E006"
).upper()
# Celery's routine lines (sent, received, succeeded) about the periodic tasks above are left
# out unless this is true; their warnings and errors always show.
LOG_HOUSEKEEPING = env_bool("LOG_HOUSEKEEPING", False)
LOGGING = logging_config(
    log_format=LOG_FORMAT,
    level=LOG_LEVEL,
    mode=APP_MODE,
    environment=ENVIRONMENT_NAME if APP_MODE == "worker" else "",
    quiet_tasks=[] if LOG_HOUSEKEEPING else [e["task"] for e in CELERY_BEAT_SCHEDULE.values()],
)
