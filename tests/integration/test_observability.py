"""/healthz, /readyz and /metrics on the real processes, as `curl` sees them: the supervisor's
web server (uvicorn) and an environment's (run_environment's uvicorn child), with the job
worker and both environments' Celery workers running on real Redis and PostgreSQL. And one
start followed through the JSON logs of three processes by its command id."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from django.db import connections
from prometheus_client.parser import text_string_to_metric_families

from apps.supervisor import selectors, services
from apps.supervisor.models import Application, Deployment
from tests.integration.cluster import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "integration-metrics-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def _metrics_token_in_environment():
    """The cluster's processes inherit this process's environment (Cluster.base_env)."""
    previous = os.environ.get("METRICS_TOKEN")
    os.environ["METRICS_TOKEN"] = TOKEN
    yield
    if previous is None:
        os.environ.pop("METRICS_TOKEN", None)
    else:
        os.environ["METRICS_TOKEN"] = previous


@pytest.fixture(scope="module")
def cluster_processes(_metrics_token_in_environment, cluster_processes):
    """The conftest's cluster, started with METRICS_TOKEN set (the argument order matters)."""
    return cluster_processes


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=10)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def readiness_lines(response: httpx.Response) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in response.text.splitlines())


def test_supervisor_web_answers_healthz_readyz_and_metrics(cluster):
    base = cluster.ensure_web()

    health = get(f"{base}/healthz")
    assert (health.status_code, health.text) == (200, "ok\n")

    assert get(f"{base}/readyz").status_code == 403
    assert get(f"{base}/metrics").status_code == 403
    assert get(f"{base}/metrics", Authorization="Bearer wrong").status_code == 403

    get(f"{base}/readyz", **AUTH)  # warm-up: the first call pays for imports and connections
    began = time.monotonic()
    ready = get(f"{base}/readyz", **AUTH)
    elapsed = time.monotonic() - began
    assert ready.status_code == 200, ready.text
    assert readiness_lines(ready) == {"database": "OK", "redis": "OK", "celery": "OK"}
    assert elapsed < 2.5, elapsed
    body = get(f"{base}/readyz", Accept="application/json", **AUTH).json()
    assert body["status"] == "ok" and set(body["checks"]) == {"database", "redis", "celery"}

    response = get(f"{base}/metrics", **AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(response.text)
    assert found[("appsupervisor_environments", (("state", "online"),))] >= 2
    for env in ("env_a", "env_b"):
        assert (("appsupervisor_apps", (("environment", env), ("status", "running")))) in found
    info = [key for key in found if key[0] == "appsupervisor_info"]
    assert info and ("mode", "supervisor") in info[0][1]
    assert found[("appsupervisor_collector_up", (("collector", "supervisor"),))] == 1
    assert found[("process_resident_memory_bytes", ())] > 0


def test_environment_answers_healthz_readyz_and_metrics(cluster):
    base = cluster.url("env_a")

    health = get(f"{base}/healthz")
    assert (health.status_code, health.text) == (200, "ok\n")
    assert get(f"{base}/readyz").status_code == 403
    assert get(f"{base}/metrics").status_code == 403

    get(f"{base}/readyz", **AUTH)  # warm-up, as above
    began = time.monotonic()
    ready = get(f"{base}/readyz", **AUTH)
    elapsed = time.monotonic() - began
    assert ready.status_code == 200, ready.text
    # celery: env_a's own worker (run_environment's child) answered for queue env.env_a.
    assert readiness_lines(ready) == {"database": "OK", "redis": "OK", "celery": "OK"}
    assert elapsed < 2.0, elapsed

    found = samples(get(f"{base}/metrics", **AUTH).text)
    hosted = [labels for name, labels in found if name == "appsupervisor_hosted_apps"]
    assert (("environment", "env_a"), ("status", "running")) in hosted
    assert not any(name == "appsupervisor_apps" for name, _ in found)
    assert found[("appsupervisor_collector_up", (("collector", "environment"),))] == 1
    assert found[("process_resident_memory_bytes", ())] > 0


def test_an_environment_serves_no_admin_and_no_api_of_its_own(cluster):
    # It is managed from the supervisor: its copy of the supervisor's admin would show an
    # empty database that nothing reads (supervisor_project/urls_environment.py).
    base = cluster.url("env_a")
    index = get(f"{base}/")
    assert index.status_code == 200 and "environment env_a" in index.text
    for path in ("/admin/", "/admin/login/", "/api/v1/apps/", "/apps-control/crm/start/"):
        assert get(f"{base}{path}").status_code == 404, path


def _json_lines(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # a line that looks like JSON must be JSON
    return records


def test_one_start_is_followed_by_its_command_id_through_the_processes_logs(cluster):
    server = cluster.server
    services.application_create(
        name="traced",
        title="Traced",
        environments=["env_a"],
        db_type="new_database",
        db_host=server.host,
        db_port=server.port,
        db_user=server.user,
        db_password=server.password,
    )
    application = Application.objects.get(name="traced")
    services.application_start(application=application, actor="test", wait=False)

    def running():
        connections["default"].close()
        app = selectors.application_list_with_status().get(name="traced")
        return selectors.application_statuses(app) == {"env_a": "running"}

    wait_until(running, timeout=90, what="traced to run on env_a")
    command_id = str(Deployment.objects.get(application__name="traced").command_id)

    def lines_of(name: str) -> list[dict]:
        return [
            r
            for r in _json_lines(cluster.procs[name].output())
            if r.get("command_id") == command_id
        ]

    # The environment's Celery worker ran the command under its id ...
    # ("done" is logged after the report is sent: the status may be stored before it.)
    wanted = {"command start traced received", "command start traced done"}
    env_lines = wait_until(
        lambda: (
            [r for r in lines_of("env_a") if r["message"] in wanted]
            if wanted <= {r["message"] for r in lines_of("env_a")}
            else None
        ),
        timeout=15,
        what="env_a's log lines of the start",
    )
    for record in env_lines:
        assert (record["app"], record["env"], record["action"]) == ("traced", "env_a", "start")
        assert record["mode"] == "worker" and record["environment"] == "env_a"
        assert record["level"] == "INFO" and record["logger"] == "workers"
    # ... and the supervisor's job worker stored its reports under the same id.
    # (a heartbeat may store "running" before the job worker logs the report that says so)
    job_lines = wait_until(
        lambda: (
            [r for r in lines_of("jobs") if r["message"].startswith("report from env_a")]
            if "report from env_a: traced running" in {r["message"] for r in lines_of("jobs")}
            else None
        ),
        timeout=15,
        what="the job worker's log line of the running report",
    )
    assert all(r["mode"] == "supervisor" and r["app"] == "traced" for r in job_lines)
    assert len({r["pid"] for r in env_lines} | {r["pid"] for r in job_lines}) >= 2

    # Celery's own lines go through the same JSON format (setup_logging, not its own).
    celery_lines = [
        r for r in _json_lines(cluster.procs["env_a"].output()) if r["logger"].startswith("celery")
    ]
    assert any(
        "workers.tasks.env_command" in r["message"] and "received" in r["message"]
        for r in celery_lines
    ), celery_lines[-5:]
    services.application_delete(application=application, drop_database=True, actor="test")
