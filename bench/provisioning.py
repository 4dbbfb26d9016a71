"""bench/provisioning: from `create` to `running`, and the install step alone.

1. create -> running through the full multi-environment path, for new apps on PostgreSQL
   (new_database on the supervisor's server), each on two environments: this process
   (the supervisor's web process) calls services.application_create and application_start;
   the start queue sends `start` to env_a's queue; env_a provisions and installs the database
   (the runtime's default way: a copy of the migrated template, then the superuser) and
   reports `running` to the supervisor's job worker; only then `start` goes to env_b, which
   finds the database installed. The clock stops when the second `running` is
   committed (seen through a NOTIFY trigger on the deployment's status, see
   bench/commands.py); the first environment's `running` is reported too. One warm-up app
   (it builds the migrated template database, see 2.) is not counted.

2. The install step alone, in this process (the runtime's own runtime.start of a new
   app: provision, install, serve; no Celery), both ways, interleaved: migrate-from-scratch
   (APP_DB_TEMPLATES off) against the template path (on: a copy of the migrated template
   database, CREATE DATABASE ... TEMPLATE, then the app's own superuser). Both ways find an
   initial password hashed ahead, as an environment's worker keeps them
   (runtime.InitialPassword); a third series, the template path with no password ready,
   shows what the PBKDF2 hash (Django's default) costs when paid inside the install. The
   first template install also builds the template (once per migration state): it is
   reported apart, with the raw SQL copy alone.

    python -m bench.provisioning [--quick] [--json PATH]
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    Cluster,
    Notifier,
    bench_main,
    create_database,
    median,
    pg_run,
    row,
    say,
    summary,
    timed_ms,
)

ENVS = ["env_a", "env_b"]


def create_to_running(cluster: Cluster, count: int) -> dict[str, list[float]]:
    from apps.supervisor.models import Environment

    env_ids = {str(e.pk) for e in Environment.objects.filter(name__in=ENVS)}
    notifier = Notifier(
        cluster.db,
        table="supervisor_deployment",
        columns=["status"],
        payload="NEW.application_id || ':' || NEW.environment_id || ':' || NEW.status",
        channel=f"{cluster.tag}_deployment",
    )
    first_ms, all_ms = [], []
    for index in range(count + 1):  # the first one warms up
        cluster.check_alive()
        start = time.perf_counter()
        application = cluster.create_app(f"p{index:03d}", ENVS, db_type="new_database")
        cluster.start_app(application)
        waiting, first = set(env_ids), None
        while waiting:
            payload = notifier.wait(lambda p, a=application.pk: p.startswith(f"{a}:"), 120)
            _, env_id, status = payload.split(":")
            if status == "error":
                raise RuntimeError(
                    f"bench: {application.name} failed: {cluster.statuses(application.name)}"
                )
            if status == "running":
                waiting.discard(env_id)
                first = first or time.perf_counter()
        total_ms = (time.perf_counter() - start) * 1000
        if index:
            first_ms.append((first - start) * 1000)
            all_ms.append(total_ms)
        say(f"create -> running {index}/{count}: {total_ms:.0f} ms")
    notifier.close()
    return {"first": first_ms, "all": all_ms}


def install_alone(cluster: Cluster, count: int) -> dict[str, Any]:
    from django.conf import settings
    from django.contrib.auth.hashers import make_password

    from apps.runtime import runtime
    from apps.runtime.spec import AppSpec, DbSpec
    from apps.supervisor import selectors

    server = selectors.default_db_server()

    def install(name: str, *, template: bool) -> None:
        """The runtime's start of a new app (provision, install, serve), either way."""
        settings.APP_DB_TEMPLATES = template
        db = DbSpec(type="new_database", name=f"{cluster.tag}_{name}", server=server)
        spec = AppSpec(name=name, title=name, db=db)
        runtime.start(spec, lambda status, detail: None)
        runtime.stop(name)

    def passwords(ready: bool) -> None:
        """As an environment's worker: READY initial passwords hashed ahead (ready), or none
        (cold: the hash is paid inside the install, as before that optimisation)."""
        if ready:
            runtime.InitialPassword.prepare()
            for _, hashed in list(runtime.InitialPassword._ready):
                hashed.result()
        else:
            with runtime.InitialPassword._lock:
                runtime.InitialPassword._ready.clear()

    install("warm", template=False)  # imports, connections
    build_ms = timed_ms(lambda: install("first", template=True))  # builds the template too
    migrate_ms, template_ms, cold_ms = [], [], []
    for i in range(count):  # interleaved: all share the machine's noise
        passwords(ready=True)
        migrate_ms.append(timed_ms(lambda i=i: install(f"m{i}", template=False)))
        passwords(ready=True)
        template_ms.append(timed_ms(lambda i=i: install(f"t{i}", template=True)))
        passwords(ready=False)
        cold_ms.append(timed_ms(lambda i=i: install(f"h{i}", template=True)))
    say(
        f"install: migrate {median(migrate_ms):.0f} ms, template {median(template_ms):.0f} ms,"
        f" template with the hash inside {median(cold_ms):.0f} ms"
    )
    (template,) = pg_run(
        "SELECT datname FROM pg_database WHERE datname LIKE %s",
        [f"{cluster.tag}\\_\\_template\\_%"],
    )[0]
    clone_ms = [
        timed_ms(lambda i=i: create_database(f"{cluster.tag}_c{i}", template=template))
        for i in range(count)
    ]
    return {
        "migrate": migrate_ms,
        "template": template_ms,
        "template_cold": cold_ms,
        "first_template_install": build_ms,
        "raw_clone": clone_ms,
        "password_hash": [timed_ms(lambda: make_password("bench")) for _ in range(3)],
    }


def run(quick: bool) -> dict[str, Any]:
    apps, installs = (4, 2) if quick else (20, 5)
    with Cluster("provisioning") as cluster:
        cluster.setup_django()
        cluster.start_jobs()
        for env in ENVS:
            cluster.start_environment(env)
        cluster.wait_environments(ENVS)
        trips = create_to_running(cluster, apps)
        install = install_alone(cluster, installs)

    first, full = summary(trips["first"]), summary(trips["all"])
    migrate, template = summary(install["migrate"]), summary(install["template"])
    clone, cold = summary(install["raw_clone"]), summary(install["template_cold"])
    hash_ms = median(install["password_hash"])
    speedup = migrate["p50"] / template["p50"]
    rows = [
        row(
            f"create -> running, 2 envs, p50 (ms, n={full['n']})",
            full["p50"],
            anchor=f"1st env {first['p50']:.0f}",
            target="<= 1000",
            met=full["p50"] <= 1000,
        ),
        row(
            f"install: template copy p50 (ms, n={template['n']})",
            template["p50"],
            anchor=f"migrate {migrate['p50']:.0f}",
            ratio=speedup,
            target=">= 2x faster",
            met=speedup >= 2,
        ),
        row(
            "  superuser password hash, made ahead in both (ms)",
            hash_ms,
            anchor="PBKDF2 (Django default)",
            ratio=hash_ms / template["p50"],
        ),
        row(
            "  template copy with the hash inside p50 (ms)",
            cold["p50"],
            anchor="no password ready",
            ratio=migrate["p50"] / cold["p50"],
        ),
        row(
            "  raw CREATE DATABASE TEMPLATE p50 (ms)",
            clone["p50"],
            anchor=f"1st copy+build {install['first_template_install']:.0f}",
            ratio=clone["p50"] / template["p50"],
        ),
    ]
    samples = {
        "create->running (2 envs)": trips["all"],
        "create->running (1st env)": trips["first"],
        "install: migrate from scratch": install["migrate"],
        "install: template copy": install["template"],
        "install: template copy, hash inside": install["template_cold"],
        "raw CREATE DATABASE TEMPLATE": install["raw_clone"],
    }
    raw = {
        "create_to_running_all": full,
        "create_to_running_first": first,
        "migrate": migrate,
        "template": template,
        "template_cold": cold,
        "raw_clone": clone,
        "first_template_install_ms": install["first_template_install"],
        "password_hash_ms": install["password_hash"],
    }
    return {"rows": rows, "raw": raw, "samples": samples}


if __name__ == "__main__":
    bench_main("provisioning", run)
