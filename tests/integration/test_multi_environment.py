"""Multi-environment mode with real processes: a supervisor job worker and environments
(`manage.py run_environment`) on real PostgreSQL and Redis, heartbeats every second."""

from __future__ import annotations

import re
import threading
import time
import uuid

import httpx
import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.utils import timezone

from apps.adapters import transport
from apps.runtime.routing import using_app
from apps.supervisor import selectors, services
from apps.supervisor.models import Application, Environment, StatusChange
from tests.integration.cluster import GRACE, INTERVAL, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def create(cluster, name: str, envs: list[str], **fields) -> Application:
    server = cluster.server
    return services.application_create(
        name=name,
        title=name.title(),
        environments=envs,
        db_type="new_database",
        db_host=server.host,
        db_port=server.port,
        db_user=server.user,
        db_password=server.password,
        **fields,
    )


def http_status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None  # not listening (yet)


def statuses(name: str) -> dict[str, str]:
    connections["default"].close()
    return selectors.application_statuses(selectors.application_list_with_status().get(name=name))


def wait_status(name: str, expected: dict[str, str], timeout: float = 60) -> None:
    seen: dict[str, dict[str, str]] = {}

    def reached() -> bool:
        seen["last"] = statuses(name)
        return seen["last"] == expected

    try:
        wait_until(reached, timeout=timeout, what=f"{name} to be {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses were {seen.get('last')}") from None


def history(name: str) -> list[StatusChange]:
    return list(
        StatusChange.objects.filter(deployment__application__name=name)
        .select_related("deployment__environment")
        .order_by("at", "id")
    )


def login(base: str, app: str, username: str, password: str) -> int:
    with httpx.Client() as client:
        page = client.get(f"{base}/apps/{app}/admin/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return client.post(
            f"{base}/apps/{app}/admin/login/?next=/apps/{app}/admin/",
            data={"csrfmiddlewaretoken": token, "username": username, "password": password},
        ).status_code


def test_environments_register_with_url_proxy_url_and_version(cluster):
    env_a = Environment.objects.get(name="env_a")
    assert env_a.url == cluster.url("env_a") and env_a.proxy_url == cluster.url("env_a")
    assert env_a.version == "0.1.0" and env_a.heartbeat_interval == INTERVAL
    assert selectors.environment_state(env_a) == "online"


def test_start_on_two_environments_runs_one_after_the_other(cluster):
    create(cluster, "crm", ["env_a", "env_b"])
    application = Application.objects.get(name="crm")
    services.application_start(application=application, actor="test", wait=False)
    wait_status("crm", {"env_a": "running", "env_b": "running"})

    # Steps reported before "running" may be stored after it (two job processes, heartbeats).
    def every_step():
        rows = history("crm")
        began = {r.deployment.environment.name for r in rows if r.new_status == "preparing"}
        installed = any(r.reason.startswith("installing") for r in rows)
        return rows if installed and began == {"env_a", "env_b"} else None

    rows = wait_until(every_step, timeout=15, what="every start step of crm in the history")
    a_running = next(
        r.at for r in rows if r.deployment.environment.name == "env_a" and r.new_status == "running"
    )
    b_began = min(r.at for r in rows if r.deployment.environment.name == "env_b")
    assert a_running <= b_began, [(r.deployment.environment.name, r.new_status) for r in rows]
    installs = [r for r in rows if r.reason.startswith("installing")]
    assert [r.deployment.environment.name for r in installs] == ["env_a"]
    # The password travels with env_a's "running" report, which a heartbeat may have beaten.
    username, password = wait_until(
        lambda: services.application_take_pending_password(application),
        timeout=15,
        what="crm's generated password",
    )
    for env in ("env_a", "env_b"):  # one database, one superuser, served by both
        assert login(cluster.url(env), "crm", username, password) == 302

    services.application_stop(application=application, actor="test")
    wait_status("crm", {"env_a": "stopped", "env_b": "stopped"})
    # The environment trusts its route for APP_ROUTE_CACHE_SECONDS (1 s).
    wait_until(
        lambda: http_status(f"{cluster.url('env_b')}/apps/crm/admin/login/") == 503,
        timeout=5,
        what="env_b to answer 503 for stopped crm",
    )
    services.application_restart(application=application, actor="test", wait=False)
    wait_status("crm", {"env_a": "running", "env_b": "running"})
    services.application_delete(application=application, drop_database=False, actor="test")
    wait_until(
        lambda: http_status(f"{cluster.url('env_a')}/apps/crm/admin/") == 404,
        timeout=30,
        what="env_a to forget crm",
    )


def test_a_start_on_one_environment_and_a_failure_stops_the_queue(cluster):
    create(cluster, "solo", ["env_b"])
    services.application_start(application=Application.objects.get(name="solo"), actor="t")
    wait_status("solo", {"env_b": "running"})
    broken = services.application_create(
        name="broken",
        title="Broken",
        environments=["env_a", "env_b"],
        db_type="new_database",
        db_host="127.0.0.1",
        db_port=1,
    )
    services.application_start(application=broken, actor="test")
    wait_status("broken", {"env_a": "error", "env_b": "error"})
    errors = dict(broken.deployments.values_list("environment__name", "error"))
    assert "cannot connect to PostgreSQL 127.0.0.1:1" in errors["env_a"]
    assert errors["env_b"] == "not started: env_a failed before it"


def test_killed_environment_goes_stale_then_offline_and_comes_back(cluster):
    create(cluster, "kcrm", ["env_a", "env_b"])
    services.application_start(application=Application.objects.get(name="kcrm"), actor="test")
    wait_status("kcrm", {"env_a": "running", "env_b": "running"})
    cluster.procs["env_b"].kill()
    killed, killed_at = time.monotonic(), timezone.now()
    # No flapping: a missed beat is not yet stale (grace), judged by the supervisor's clock
    # (as of the kill: a slow machine may take a while to get here).
    assert selectors.environment_state(Environment.objects.get(name="env_b"), killed_at) == "online"
    wait_until(
        lambda: selectors.environment_state(Environment.objects.get(name="env_b")) == "stale",
        timeout=10,
        what="env_b stale",
    )
    stale_after = time.monotonic() - killed
    wait_status("kcrm", {"env_a": "running", "env_b": "unknown"}, timeout=15)
    offline_after = time.monotonic() - killed
    wait_until(
        lambda: Environment.objects.get(name="env_b").status == "offline",
        timeout=15,
        what="the detector to store env_b offline",
    )
    # Documented thresholds: stale after interval + grace, offline after 2 x interval + grace
    # (the detector runs every second here); the margin covers process and poll latency.
    assert stale_after <= INTERVAL + GRACE + 2.5
    assert offline_after <= 2 * INTERVAL + GRACE + 3
    assert httpx.get(f"{cluster.url('env_a')}/apps/kcrm/admin/login/").status_code == 200

    cluster.restart("env_b")  # same storage: what it hosts comes back with it
    wait_status("kcrm", {"env_a": "running", "env_b": "running"}, timeout=60)
    wait_until(
        lambda: http_status(f"{cluster.url('env_b')}/apps/kcrm/admin/login/") == 200,
        timeout=30,
        what="env_b serving crm again",
    )


def test_clean_shutdown_marks_the_environment_offline_at_once(cluster):
    cluster.procs["env_b"].stop()
    wait_until(
        lambda: Environment.objects.get(name="env_b").status == "offline",
        timeout=5,
        what="env_b offline after its goodbye",
    )


def test_redis_flush_during_operation_recovers_without_a_manual_step(cluster, redis_url):
    create(cluster, "fcrm", ["env_a"])
    services.application_start(application=Application.objects.get(name="fcrm"), actor="test")
    wait_status("fcrm", {"env_a": "running"})
    # Config cache, queues and kombu bindings gone (the periodic refresh may already be
    # writing the cache again: that is the recovery, so it is not asserted away here).
    redis.Redis.from_url(redis_url).flushdb()
    # Commands still reach environments, reports and heartbeats still reach the supervisor.
    create(cluster, "sales", ["env_a", "env_b"])
    services.application_start(application=Application.objects.get(name="sales"), actor="t")
    wait_status("sales", {"env_a": "running", "env_b": "running"})
    # The periodic refresh rebuilds the config cache from the database.
    wait_until(lambda: transport.config_read("fcrm"), timeout=15, what="config cache rebuilt")
    services.application_stop(application=Application.objects.get(name="fcrm"), actor="test")
    wait_status("fcrm", {"env_a": "stopped"})
    assert Environment.objects.get(name="env_a").status == "online"


def test_ten_concurrent_starts_run_exactly_one_install(cluster):
    application = create(cluster, "racy", ["env_a", "env_b"])
    barrier = threading.Barrier(10)
    outcomes = []

    def start():
        barrier.wait()
        try:
            outcomes.append(
                services.application_start(application=application, actor="t", wait=False)
            )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=start) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_status("racy", {"env_a": "running", "env_b": "running"})
    assert sum(1 for o in outcomes if o.started) >= 1
    installs = [r for r in history("racy") if r.reason.startswith("installing")]
    assert len(installs) == 1
    spec = selectors.application_spec(application)
    from apps.runtime import runtime

    runtime.register_alias(spec)
    with using_app(spec.alias):
        users = get_user_model()._default_manager.db_manager(spec.alias)
        assert users.filter(is_superuser=True).count() == 1
    connections[spec.alias].close()


def test_malformed_and_redelivered_messages_change_nothing_and_consumers_go_on(cluster):
    create(cluster, "mcrm", ["env_a"])
    application = Application.objects.get(name="mcrm")
    services.application_start(application=application, actor="test")
    wait_status("mcrm", {"env_a": "running"})
    # By time, not by count: a start's late step may still be put in its (earlier) place.
    running_at = max(r.at for r in history("mcrm") if r.new_status == "running")
    command_id = str(application.deployments.get().command_id)
    for bad in (
        {"v": 9},
        "garbage",
        {
            "v": 1,
            "type": "command",
            "env": "env_b",
            "app": "mcrm",
            "action": "stop",
            "id": str(uuid.uuid4()),
            "sent_at": 1.0,
        },
    ):
        transport.publish("workers.tasks.env_command", bad, to=transport.env_queue("env_a"))
        transport.publish("workers.tasks.supervisor_message", bad, to=settings.SUPERVISOR_QUEUE)
    # The same start again (as a redelivery after a lost ack would be): nothing happens.
    transport.publish(
        "workers.tasks.env_command",
        {
            "v": 1,
            "type": "command",
            "id": command_id,
            "app": "mcrm",
            "env": "env_a",
            "action": "start",
            "drop_database": False,
            "sent_at": time.time(),
        },
        to=transport.env_queue("env_a"),
    )
    services.application_stop(application=application, actor="test")  # consumers still work
    wait_status("mcrm", {"env_a": "stopped"})
    assert [r.new_status for r in history("mcrm") if r.at > running_at] == ["stopped"]
    assert "rejected command" in cluster.procs["env_a"].output()
    assert "rejected message" in cluster.procs["jobs"].output()


def test_run_environment_refuses_incomplete_settings(cluster):
    import subprocess
    import sys

    from tests.integration.cluster import ROOT

    env = cluster.base_env()
    env.update(APP_MODE="worker", ENVIRONMENT_NAME="env_x", STORAGE_DIR=str(cluster.tmp / "x"))
    env.pop("APP_COMMAND_REDIS_URL")
    result = subprocess.run(
        [sys.executable, "manage.py", "run_environment"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "supervisor.E004" in result.stderr or "supervisor.E005" in result.stderr


def test_first_visit_on_an_environment_asks_the_supervisor_to_start_the_app(cluster):
    create(cluster, "lazy", ["env_a"])  # start mode: on first visit
    url = f"{cluster.url('env_a')}/apps/lazy/admin/login/"
    # The environment learns of the app from the `create` command, then routes a first visit.
    first = wait_until(
        lambda: http_status(url) == 503 and httpx.get(url), timeout=15, what="env_a to know lazy"
    )
    assert first.headers.get("refresh") == "2"
    wait_until(lambda: http_status(url) == 200, timeout=60, what="lazy served after a visit")
    # The environment serves as soon as it runs the app; its report reaches us just after.
    wait_status("lazy", {"env_a": "running"}, timeout=15)
    assert any(r.actor == "first visit on env_a" for r in history("lazy"))
