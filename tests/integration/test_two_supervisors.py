"""Two supervisor processes of each kind (issue 6): two ASGI servers and two job workers,
both with beat, on one database and one Redis. No double offline marking, no double start
or install, and the proxy answers on both."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from django.db import connections
from django.utils import timezone

from apps.supervisor import services
from apps.supervisor.models import Application, Environment, EnvironmentEvent
from tests.integration.cluster import wait_until
from tests.integration.test_multi_environment import create, history, wait_status

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def doubled(cluster):
    if "jobs2" not in cluster.procs or cluster.procs["jobs2"].popen.poll() is not None:
        cluster.start_jobs("jobs2")
    webs = [cluster.ensure_web()]
    if "web2" not in cluster.procs:
        cluster.start_web("web2")
    webs.append(f"http://127.0.0.1:{cluster.ports['web2']}")
    return webs


def test_two_supervisors_share_the_work_without_doing_it_twice(cluster, doubled):
    application = create(cluster, "twice", ["env_a", "env_b"])
    # The same click twice at once (two operators on two web processes): threads here, each
    # with its own database connection, like two processes.
    barrier, outcomes = threading.Barrier(2), []

    def click(i: int) -> None:
        barrier.wait()
        try:
            outcomes.append(
                services.application_start(application=application, actor=f"op{i}", wait=False)
            )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=click, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(o.started) for o in outcomes) == 2  # each environment claimed once
    wait_status("twice", {"env_a": "running", "env_b": "running"}, timeout=90)
    # Steps reported before "running" may be stored after it (four job processes).
    wait_until(
        lambda: (
            sum(c.new_status == "preparing" for c in history("twice")) >= 2
            and any(c.reason.startswith("installing") for c in history("twice"))
        ),
        timeout=15,
        what="every start step in the history",
    )
    installs = [c for c in history("twice") if c.reason.startswith("installing")]
    assert len(installs) == 1, [(c.deployment.environment.name, c.reason) for c in installs]
    starts = [c for c in history("twice") if c.new_status == "preparing"]
    assert len(starts) == 2  # one per environment, not one per supervisor

    time.sleep(1.2)  # each web process trusts its route cache for a second
    for web in doubled:
        reply = httpx.get(f"{web}/apps/twice/admin/login/?_environment=env_a", timeout=10)
        assert reply.status_code in (200, 302), (web, reply.status_code)
        page = httpx.get(
            f"{web}/apps/twice/admin/login/",
            cookies={"appsup_environment": "env_b"},
            timeout=10,
        )
        assert page.status_code == 200 and "Log in" in page.text, web

    # Two beats run the offline detector twice as often: env_b is marked offline once.
    cluster.procs["env_b"].kill()
    killed_at = timezone.now()
    wait_until(
        lambda: Environment.objects.get(name="env_b").status == "offline",
        timeout=30,
        what="env_b offline",
    )
    time.sleep(3)  # both detectors have run several times since
    offline = EnvironmentEvent.objects.filter(
        environment_name="env_b", kind="offline", at__gte=killed_at
    )
    assert offline.count() == 1
    cluster.procs["env_b"].start()
    wait_status("twice", {"env_a": "running", "env_b": "running"}, timeout=60)
    assert Application.objects.filter(name="twice").count() == 1
