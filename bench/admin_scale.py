"""bench/admin_scale: the supervisor's admin with 10,000 apps on 3 environments.

A dedicated PostgreSQL database (created and dropped here) is filled with bulk_create: 3
online environments, apps each deployed on all three (statuses spread over running, stopped,
error), and 10 history rows (StatusChange) per app: 10,000 apps -> 30,000 deployments and
100,000 history rows. Django's test Client, logged in as a superuser, renders in this
process: the app changelist, a filtered changelist (status and environment filters) and
the Environments list. Each page is timed over several renders after two warm-ups, and its
queries are counted with CaptureQueriesContext, first at 100 apps, then at 10,000 (the same
database, topped up), so the two counts stand side by side.

    python -m bench.admin_scale [--quick] [--json PATH]
"""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from typing import Any

from bench.common import Cluster, bench_main, row, say, summary, timed_ms

PAGES = {
    "app changelist": "/admin/supervisor/application/",
    "filtered changelist": "/admin/supervisor/application/?status=running&environment=env_b",
    "environments list": "/admin/supervisor/environment/",
}
HISTORY_PER_APP = 10
STATUSES = ["running", "running", "running", "stopped", "error"]


def populate(start: int, stop: int) -> None:
    """Apps start..stop-1, each on every environment, with their history."""
    from django.utils import timezone

    from apps.supervisor.models import Application, Deployment, Environment, StatusChange

    now = timezone.now()
    rng = random.Random(start)
    environments = list(Environment.objects.order_by("name"))
    applications = Application.objects.bulk_create(
        [Application(name=f"a{i:05d}", title=f"App {i}", options={}) for i in range(start, stop)],
        batch_size=2000,
    )
    deployments = []
    for application in applications:
        for position, environment in enumerate(environments):
            command = uuid.uuid4()
            deployments.append(
                Deployment(
                    application=application,
                    environment=environment,
                    position=position,
                    desired="running",
                    status=rng.choice(STATUSES),
                    command_id=command,
                    reported_command_id=command,
                    command_outcome="running",
                    command_action="start",
                    command_sent_at=now,
                    status_at=now,
                )
            )
    Deployment.objects.bulk_create(deployments, batch_size=5000)
    history = [
        StatusChange(
            deployment=rng.choice(deployments),
            old_status="stopped",
            new_status=rng.choice(STATUSES),
            reason="bench",
            at=now - timedelta(seconds=rng.randrange(86400 * 30)),
            actor="bench",
        )
        for _ in range((stop - start) * HISTORY_PER_APP)
    ]
    StatusChange.objects.bulk_create(history, batch_size=10000)


def measure(client, renders: int) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    figures = {}
    for page, url in PAGES.items():

        def get(url=url):
            response = client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"bench: {url} answered {response.status_code}")

        get()
        get()
        with CaptureQueriesContext(connection) as queries:
            get()
        count = len(queries.captured_queries)  # before the next request resets the log
        figures[page] = {"ms": [timed_ms(get) for _ in range(renders)], "queries": count}
    return figures


def run(quick: bool) -> dict[str, Any]:
    sizes = (100, 1000) if quick else (100, 10_000)
    renders = 5 if quick else 15
    with Cluster("admin_scale") as cluster:
        cluster.setup_django()
        from django.contrib.auth import get_user_model
        from django.db import connection
        from django.test import Client
        from django.utils import timezone

        from apps.supervisor.models import Environment

        Environment.objects.bulk_create(
            [
                Environment(
                    name=name,
                    url=f"http://127.0.0.1:{9000 + i}",
                    status="online",
                    heartbeat_interval=120,
                    started_at=timezone.now(),
                    last_heartbeat_at=timezone.now(),
                )
                for i, name in enumerate(("env_a", "env_b", "env_c"))
            ]
        )
        user = get_user_model().objects.create_superuser("bench", "bench@example.test", None)
        client = Client()
        client.force_login(user)
        results, done = {}, 0
        for size in sizes:
            populate(done, size)
            done = size
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
            say(f"admin: {size} apps stored, rendering")
            results[size] = measure(client, renders)

    small, large = sizes
    rows, samples = [], {}
    for page in PAGES:
        a, b = results[small][page], results[large][page]
        ms_small, ms_large = summary(a["ms"]), summary(b["ms"])
        rows.append(
            row(
                f"admin: {page} @{large:,} apps p50 (ms)",
                ms_large["p50"],
                anchor=f"@{small}: {ms_small['p50']:.0f} (max {ms_large['max']:.0f})",
                ratio=ms_large["p50"] / ms_small["p50"],
                target="<= 300",
                met=ms_large["p50"] <= 300,
            )
        )
        rows.append(
            row(
                f"admin: {page} queries @{large:,} apps",
                str(b["queries"]),
                anchor=f"@{small}: {a['queries']}",
                target="same count",
                met=a["queries"] == b["queries"],
            )
        )
        samples[f"{page} @{small}"] = a["ms"]
        samples[f"{page} @{large}"] = b["ms"]
    raw = {
        str(size): {
            page: {"queries": f["queries"], **summary(f["ms"])} for page, f in figures.items()
        }
        for size, figures in results.items()
    }
    raw["history_rows"] = sizes[1] * HISTORY_PER_APP
    return {"rows": rows, "raw": raw, "samples": samples}


if __name__ == "__main__":
    bench_main("admin_scale", run)
