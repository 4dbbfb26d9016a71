"""/metrics: what the recording API adds, the database gauges, and counters shared between
real processes through the multiprocess directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from apps.observability import metrics
from apps.runtime.models import HostedApp
from apps.supervisor.models import Application, Deployment, Environment

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _public(settings):
    settings.OBSERVABILITY_PUBLIC = True


def scrape(**headers) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one /metrics answer."""
    response = Client(HTTP_HOST="127.0.0.1").get("/metrics", **headers)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- the recording API -----------------------------------------------------------------------


def test_command_finished_counts_and_observes_latency_by_action_and_result():
    before = scrape()
    metrics.command_finished("start", "ok", 1.7)
    metrics.command_finished("start", "ok", 45.0)
    metrics.command_finished("stop", "error", 0.2)
    after = scrape()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("appsupervisor_commands_total", action="start", result="ok") == 2
    assert delta("appsupervisor_commands_total", action="stop", result="error") == 1
    count = "appsupervisor_command_duration_seconds_count"
    assert delta(count, action="start", result="ok") == 2
    bucket = "appsupervisor_command_duration_seconds_bucket"
    assert delta(bucket, action="start", result="ok", le="2.5") == 1
    assert delta(bucket, action="start", result="ok", le="60.0") == 2
    assert delta(bucket, action="stop", result="error", le="0.25") == 1
    total = "appsupervisor_command_duration_seconds_sum"
    assert delta(total, action="start", result="ok") == pytest.approx(46.7)


def test_proxy_request_counts_by_status_and_observes_latency():
    before = scrape()
    for status in (200, 200, 502):
        metrics.proxy_request(status, 0.03)
    after = scrape()
    for status, expected in (("200", 2), ("502", 1)):
        name = "appsupervisor_proxy_requests_total"
        assert value(after, name, status=status) - value(before, name, status=status) == expected
    name = "appsupervisor_proxy_request_duration_seconds_bucket"
    assert value(after, name, le="0.05") - value(before, name, le="0.05") == 3
    assert value(after, name, le="0.025") - value(before, name, le="0.025") == 0


def test_proxy_resent_counts_requests_sent_again():
    name = "appsupervisor_proxy_resent_total"
    before = value(scrape(), name)
    metrics.proxy_resent()
    metrics.proxy_resent()
    assert value(scrape(), name) - before == 2


def test_message_rejected_counts_by_reason_and_bounds_the_labels():
    before = scrape()
    metrics.message_rejected("bad_version")
    metrics.message_rejected("Not A Token: with spaces and a long story " * 3)
    metrics.message_rejected(str(uuid.uuid4()) + "x" * 40)
    after = scrape()
    name = "appsupervisor_messages_rejected_total"
    assert value(after, name, reason="bad_version") - value(before, name, reason="bad_version") == 1
    assert value(after, name, reason="other") - value(before, name, reason="other") == 2


def test_recording_never_raises_on_nonsense():
    metrics.proxy_request("not a status", "slow")  # type: ignore[arg-type]
    metrics.command_finished("start", "ok", "n/a")  # type: ignore[arg-type]


# --- database gauges -------------------------------------------------------------------------


def _environment(name: str, *, age: float, interval: int = 120, **fields) -> Environment:
    return Environment.objects.create(
        name=name,
        heartbeat_interval=interval,
        last_heartbeat_at=timezone.now() - timedelta(seconds=age),
        **fields,
    )


def test_apps_by_environment_and_derived_status_and_environments_by_state(settings):
    settings.HEARTBEAT_GRACE = 30
    online = _environment("obs_online", age=1)
    stale = _environment("obs_stale", age=200)  # > 120 + 30
    gone = _environment("obs_gone", age=1000)  # > 2 * 120 + 30
    sent, answered = uuid.uuid4(), uuid.uuid4()
    for name, env, fields in [
        ("a1", online, {"status": "running"}),
        (
            "a2",
            online,
            {
                "status": "running",
                "command_id": answered,
                "reported_command_id": answered,
                "command_outcome": "running",
            },
        ),
        # A command out and not answered yet: "commanding".
        ("a3", online, {"status": "stopped", "command_id": sent, "reported_command_id": answered}),
        # In progress is shown as such even while its command is out.
        ("a4", online, {"status": "initializing", "command_id": sent}),
        ("a5", stale, {"status": "error"}),
        ("a6", gone, {"status": "running"}),  # offline environment: "unknown"
    ]:
        app = Application.objects.create(name=name, title=name)
        Deployment.objects.create(application=app, environment=env, **fields)

    samples = scrape()

    def apps(environment, status):
        return value(samples, "appsupervisor_apps", environment=environment, status=status)

    assert apps("obs_online", "running") == 2
    assert apps("obs_online", "commanding") == 1
    assert apps("obs_online", "initializing") == 1
    assert apps("obs_online", "stopped") == 0
    assert ("appsupervisor_apps", (("environment", "obs_online"), ("status", "stopped"))) in samples
    assert apps("obs_stale", "error") == 1
    assert apps("obs_gone", "unknown") == 1 and apps("obs_gone", "running") == 0
    states = {
        state: value(samples, "appsupervisor_environments", state=state)
        for state in ("online", "stale", "offline")
    }
    # Other environments may exist (the in-process `local` one): count at least ours.
    assert states["online"] >= 1 and states["stale"] == 1 and states["offline"] == 1
    assert value(samples, "appsupervisor_collector_up", collector="supervisor") == 1


def test_the_apps_gauge_costs_the_same_queries_for_many_apps(django_assert_max_num_queries):
    env = _environment("obs_many", age=1)
    for index in range(30):
        app = Application.objects.create(name=f"many{index}", title="m")
        Deployment.objects.create(application=app, environment=env, status="running")
    with django_assert_max_num_queries(2):
        scrape()
    assert value(scrape(), "appsupervisor_apps", environment="obs_many", status="running") == 30


def test_an_environment_exposes_its_hosted_apps_and_process_metrics(settings):
    settings.APP_MODE = "worker"
    settings.ENVIRONMENT_NAME = "env_obs"
    HostedApp.objects.create(name="crm", spec={}, status="running")
    HostedApp.objects.create(name="shop", spec={}, status="running")
    HostedApp.objects.create(name="wiki", spec={}, status="error")
    samples = scrape()
    hosted = "appsupervisor_hosted_apps"
    assert value(samples, hosted, environment="env_obs", status="running") == 2
    assert value(samples, hosted, environment="env_obs", status="error") == 1
    assert (hosted, (("environment", "env_obs"), ("status", "stopped"))) in samples
    assert not any(name == "appsupervisor_apps" for name, _ in samples)
    assert (
        value(samples, "appsupervisor_info", mode="worker", version="0.1.0", environment="env_obs")
        == 1
    )
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "appsupervisor_collector_up", collector="environment") == 1


# --- several processes, one /metrics ---------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, sys, django
    django.setup()
    from apps.observability import metrics
    metrics.command_finished("start", "ok", 3.0)
    metrics.command_finished("start", "ok", 3.0)
    metrics.message_rejected("from_child")
    print(metrics.store().ident, flush=True)
    if sys.argv[1:] == ["wait"]:
        sys.stdin.readline()  # stays alive until the test writes a line
    """
)


def _child_env() -> dict[str, str]:
    directory = metrics.store().directory  # first: it exports PROMETHEUS_MULTIPROC_DIR
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "APP_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="supervisor_project.settings",
        DB_DIALECT="sqlite",
        METRICS_DIR=str(directory),
        PYTHONPATH=str(ROOT),
    )
    return env


def _files_of(ident: str) -> list[str]:
    return sorted(p.name for p in metrics.store().directory.glob(f"*_{ident}.db"))


def test_counters_of_another_process_show_on_this_ones_metrics_and_survive_its_exit():
    def rejected(samples):
        return value(samples, "appsupervisor_messages_rejected_total", reason="from_child")

    def started(samples):
        return value(samples, "appsupervisor_commands_total", action="start", result="ok")

    before = scrape()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "wait"],
        cwd=ROOT,
        env=_child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ident = child.stdout.readline().strip()
        assert ident.endswith(f"-{child.pid}"), ident
        during = scrape()
        assert started(during) - started(before) == 2
        assert rejected(during) - rejected(before) == 1
        # A process starting while the child lives compacts nothing of it.
        with metrics.store().locked():
            assert ident not in metrics.store().compact_locked()
        assert _files_of(ident) == [f"counter_{ident}.db", f"histogram_{ident}.db"]
    finally:
        child.communicate("go\n", timeout=30)
    assert child.returncode == 0

    # Its files stay until a process starts and folds them into the archive: no reset.
    assert started(scrape()) - started(before) == 2
    with metrics.store().locked():
        assert ident in metrics.store().compact_locked()
    assert _files_of(ident) == []
    assert not (metrics.store().directory / f"owner_{ident}.lock").exists()
    assert (metrics.store().directory / "counter_archive.db").exists()
    after = scrape()
    assert started(after) - started(before) == 2
    assert rejected(after) - rejected(before) == 1
    bucket = "appsupervisor_command_duration_seconds_bucket"
    labels = {"action": "start", "result": "ok", "le": "5.0"}
    assert value(after, bucket, **labels) - value(before, bucket, **labels) == 2


def test_a_new_process_compacts_what_a_dead_one_left():
    before = scrape()
    first = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=ROOT, env=_child_env(), capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    dead = first.stdout.strip()
    assert _files_of(dead), "the dead process's files wait for the next start"
    second = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=ROOT, env=_child_env(), capture_output=True, text=True
    )
    assert second.returncode == 0, second.stderr
    assert _files_of(dead) == [], "the second process's start archived the first's files"
    name = "appsupervisor_messages_rejected_total"
    assert (
        value(scrape(), name, reason="from_child") - value(before, name, reason="from_child") == 2
    )


_FORKING = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from prometheus_client import CollectorRegistry, Counter, values
    from prometheus_client.multiprocess import MultiProcessCollector
    from apps.observability.multiprocess import Store

    store = Store(sys.argv[1])
    store.start()
    values.ValueClass = values.MultiProcessValue(store.identifier)
    hits = Counter("hits", "h", registry=None)
    hits.inc()
    parent = store.ident
    pid = os.fork()
    if pid == 0:
        hits.inc(10)
        print(store.ident, flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    hits.inc(100)
    with store.locked():
        compacted = store.compact_locked()
    files = sorted(p.name for p in Path(sys.argv[1]).glob("*.db"))
    total = sum(
        s.value for m in store.collector().collect() for s in m.samples if s.name == "hits_total"
    )
    print(parent, compacted, files, total, flush=True)
    """
)


def test_a_forked_child_writes_its_own_files_and_its_counts_are_kept(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _FORKING, str(tmp_path / "m")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    child, summary = result.stdout.strip().splitlines()
    parent = summary.split(" ")[0]
    assert child != parent and child.endswith(tuple("0123456789"))
    files = sorted([f"counter_{parent}.db", "counter_archive.db"])
    assert summary == f"{parent} ['{child}'] {files} 111.0", summary


_UNUSABLE = textwrap.dedent(
    """
    import django
    django.setup()
    from prometheus_client import generate_latest
    from apps.observability import metrics
    import os
    metrics.command_finished("stop", "ok", 0.1)
    print(os.getpid(), metrics.store())
    print(generate_latest(metrics.scrape_registry()).decode())
    """
)


def test_an_unusable_metrics_dir_is_logged_and_counting_goes_on_in_process(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**_child_env(), "METRICS_DIR": str(blocker / "metrics"), "STORAGE_DIR": str(tmp_path)}
    # What this process's store exported: a child inherits it (as cluster processes do).
    inherited = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    result = subprocess.run(
        [sys.executable, "-c", _UNUSABLE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "metrics directory" in result.stderr and "unusable" in result.stderr
    out = result.stdout.splitlines()
    pid, store = out[0].split()
    assert store == "None"
    assert 'appsupervisor_commands_total{action="stop",result="ok"} 1.0' in out
    assert not list(inherited.glob(f"*_{pid}.db")), "nothing written under a bare pid"
