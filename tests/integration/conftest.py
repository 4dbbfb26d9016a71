"""Fixtures of the integration tests: a real multi-environment cluster per test module.

Processes are started once per module (each start costs seconds); every test gets them alive
and registered. The supervisor database is reset between tests (transactional tests), so
environments re-register on their next beat, as they would after a supervisor restore."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.core.management import call_command
from django.test import override_settings

from apps import adapters
from apps.supervisor.models import Environment
from supervisor_project.celery import app as celery_app
from tests.conftest import RUN_ID
from tests.integration.cluster import GRACE, INTERVAL, Cluster, wait_until

_module_counter = iter(range(1, 10**6))


def _reset_celery(broker_url: str) -> None:
    # Drop references only: kombu keeps pools per URL and hands the same one out again.
    celery_app.conf.broker_url = broker_url
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture(scope="module")
def cluster_processes(request, redis_url, pg_server, django_db_setup, django_db_blocker):
    """Supervisor mode in this process; a job worker and env_a, env_b as subprocesses.
    A test module's CLUSTER_ENV (a dict) is added to every process's environment."""
    redis.Redis.from_url(redis_url).flushdb()
    prefix = f"{RUN_ID}_m{next(_module_counter)}_"
    override = override_settings(
        APP_MODE="supervisor",
        APP_DISCOVERY_ADAPTER="remote",
        APP_PROCESS_ADAPTER="remote",
        APP_COMMAND_ADAPTER="redis",
        ENVIRONMENT_NAME="",
        APP_SUPERVISOR_REDIS_URL=redis_url,
        APP_COMMAND_REDIS_URL=redis_url,
        HEARTBEAT_INTERVAL=INTERVAL,
        HEARTBEAT_GRACE=GRACE,
        APP_DB_PREFIX=prefix,
        APP_QUEUE_PREFIX=f"{RUN_ID}.",
        SUPERVISOR_QUEUE=f"{RUN_ID}.supervisor",
        CACHES={
            **django_settings.CACHES,
            "config": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": redis_url,
                "KEY_PREFIX": f"appsup{RUN_ID}.",
                "TIMEOUT": None,
                "OPTIONS": {"SERIALIZER": "django_redis.serializers.json.JSONSerializer"},
            },
        },
    )
    override.enable()
    old_broker = celery_app.conf.broker_url
    _reset_celery(redis_url)
    adapters.discovery.cache_clear()
    adapters.process.cache_clear()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="appsup-cluster-")), redis_url)
    cluster.server = pg_server
    cluster.prefix = prefix
    cluster.extra_env = dict(getattr(request.module, "CLUSTER_ENV", {}))
    with django_db_blocker.unblock():
        # The previous module's job worker may have stored a last beat after its last test's
        # flush (an Environment row with that cluster's URLs, "online"): start from nothing.
        call_command("flush", interactive=False, verbosity=0)
        cluster.start_jobs()
        for name in ("env_a", "env_b"):
            cluster.start_environment(name)
    try:
        yield cluster
    finally:
        cluster.stop()
        _reset_celery(old_broker)
        override.disable()
        adapters.discovery.cache_clear()
        adapters.process.cache_clear()


@pytest.fixture
def cluster(cluster_processes, settings):
    """The module's cluster, every process alive and both environments registered."""
    settings.APP_DB_PREFIX = cluster_processes.prefix  # app databases: the module's names
    for name, proc in list(cluster_processes.procs.items()):
        if proc.popen.poll() is not None and name in ("jobs", "env_a", "env_b", "web"):
            cluster_processes.restart(name)
    try:

        def registered() -> bool:  # online, and by this cluster's processes
            online = Environment.objects.filter(name__in=("env_a", "env_b"), status="online")
            urls = dict(online.values_list("name", "url"))
            return urls == {n: cluster_processes.url(n) for n in ("env_a", "env_b")}

        wait_until(registered, timeout=60, what="env_a and env_b to register")
        yield cluster_processes
    except BaseException:
        print(cluster_processes.logs())
        raise


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed integration test prints its cluster's process logs (the cause is usually
    there, not in the assertion)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "cluster" in getattr(item, "funcargs", {}):
        report.sections.append(("cluster logs", item.funcargs["cluster"].logs()))
