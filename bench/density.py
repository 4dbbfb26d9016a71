"""bench/density: one environment hosting 200 running apps. Measured, not optimised.

Apps are PostgreSQL apps (new_database on the supervisor's server, CONN_MAX_AGE 0 as the
runtime configures them), so the connections they hold can be counted in pg_stat_activity.

Set-up shortcut (it is not what is measured): installing 200 databases from scratch would
take minutes (see bench/provisioning.py), so one template database is installed here with
the runtime's own install_or_upgrade, given a logged-in superuser session, and cloned 200
times (CREATE DATABASE ... TEMPLATE). Each clone gets a distinct number of notes (app i has
i + 1). Then the 200 apps are created and started through the supervisor as usual: the
environment's start finds each database installed and serves it.

Measured: the environment's memory (its whole process tree, run_environment + Celery worker
+ uvicorn: RSS summed, which counts pages shared by forked processes more than once, and PSS,
which does not) before any app and after requests to all 200; connections to the apps'
databases in pg_stat_activity, sampled during a concurrent sweep of all apps (16 at a time)
and after it; and that every app answers from its own database: its admin login page (200,
with its own title) and its live notes page, logged in with the session cookie, showing
that app's own note count.

    python -m bench.density [--quick] [--json PATH]
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench.common import (
    HOST,
    Cluster,
    bench_main,
    connections_to,
    create_database,
    pg_run,
    process_title,
    pss_mib,
    row,
    rss_mib,
    say,
    wait_until,
)

ENV = "dense"
COUNT_RE = re.compile(r'<div id="count">(\d+)</div>')


def make_template(cluster: Cluster) -> tuple[str, str]:
    """Install a template app database; returns its name and a superuser session key."""
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import connections

    from apps.runtime import provision, runtime
    from apps.runtime.routing import using_app
    from apps.runtime.spec import AppSpec, DbSpec
    from apps.supervisor import selectors

    name = f"{cluster.tag}_dtpl"
    spec = AppSpec(
        name="dtpl",
        title="template",
        db=DbSpec(type="new_database", name=name, server=selectors.default_db_server()),
    )
    provision.provision(spec)
    runtime.install_or_upgrade(spec, lambda status, detail: None)
    alias = runtime.register_alias(spec)
    with using_app(alias):
        user = get_user_model()._default_manager.db_manager(alias).get(is_superuser=True)
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
    connections[alias].close()
    return name, session.session_key


def check_app(base: str, index: int, session_key: str) -> str | None:
    """None when app `index` answers correctly from its own database, else what is wrong."""
    name = f"d{index:03d}"
    with httpx.Client(timeout=30) as client:
        login = client.get(f"{base}/apps/{name}/admin/login/")
        if login.status_code != 200 or f"Density {index}<" not in login.text:
            return f"{name}: login page {login.status_code}"
        live = client.get(
            f"{base}/apps/{name}/live/", headers={"Cookie": f"sessionid_{name}={session_key}"}
        )
    found = COUNT_RE.search(live.text)
    if live.status_code != 200 or not found or int(found.group(1)) != index + 1:
        return f"{name}: live page {live.status_code}, count {found and found.group(1)}"
    return None


def memory(cluster: Cluster) -> dict[str, Any]:
    pids = cluster.environment_pids(ENV)
    return {
        "rss_mib": rss_mib(pids),
        "pss_mib": pss_mib(pids),
        "by_process_rss_mib": {f"{process_title(p)} {p}": round(rss_mib(p), 1) for p in pids},
    }


def run(quick: bool) -> dict[str, Any]:
    count = 20 if quick else 200
    with Cluster("density") as cluster:
        cluster.setup_django()
        cluster.start_jobs()
        port = cluster.start_environment(ENV)
        cluster.wait_environments([ENV])
        base = f"http://{HOST}:{port}"
        # run_environment, uvicorn, the Celery worker and its pool process all up
        wait_until(lambda: len(cluster.environment_pids(ENV)) >= 4, timeout=60, what="pool")
        time.sleep(1)
        before = memory(cluster)
        template, session_key = make_template(cluster)
        say(f"density: cloning {count} app databases")
        names = [f"d{i:03d}" for i in range(count)]
        for index, name in enumerate(names):
            database = f"{cluster.tag}_{name}"
            create_database(database, template=template)
            pg_run(
                "INSERT INTO notes_note (title, body, pinned, created_at, updated_at) "
                "SELECT 'note ' || g, '', false, now(), now() FROM generate_series(1, %s) g",
                [index + 1],
                dbname=database,
            )
        say(f"density: creating and starting {count} apps")
        started = time.monotonic()
        for index, name in enumerate(names):
            application = cluster.create_app(
                name, [ENV], db_type="new_database", title=f"Density {index}"
            )
            cluster.start_app(application)
        cluster.wait_running(names, timeout=1200)
        start_all_s = time.monotonic() - started
        say(f"density: {count} running after {start_all_s:.0f} s; sequential sweep")
        prefix = f"{cluster.tag}_d"
        sweep_started = time.monotonic()
        problems = [p for i in range(count) if (p := check_app(base, i, session_key))]
        sweep_s = time.monotonic() - sweep_started
        say("density: concurrent sweep")
        peak, done = [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], connections_to(prefix))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(16) as pool:
            problems += [
                p for p in pool.map(lambda i: check_app(base, i, session_key), range(count)) if p
            ]
        done.set()
        sampler.join()
        time.sleep(1)
        after_connections = connections_to(prefix)
        after = memory(cluster)
        cluster.check_alive()

    correct = count - len({p.split(":")[0] for p in problems})
    rows = [
        row(
            f"density: env RSS with {count} apps (MiB)",
            after["rss_mib"],
            anchor=f"0 apps {before['rss_mib']:.0f}; PSS {after['pss_mib']:.0f}",
            target="<= 400",
            met=after["rss_mib"] <= 400,
        ),
        row(
            "density: RSS per app (MiB)",
            (after["rss_mib"] - before["rss_mib"]) / count,
            anchor=f"PSS {(after['pss_mib'] - before['pss_mib']) / count:.2f}",
        ),
        row(
            "density: app DB connections after requests",
            str(after_connections),
            anchor=f"peak {peak[0]} during sweep",
            target=f"bounded (peak <= 16 << {count})",
            met=after_connections <= 1 and peak[0] <= 16,
        ),
        row(
            "density: apps answering from their own DB",
            str(correct),
            anchor=f"sweep {sweep_s / count * 1000:.0f} ms/app",
            target=f"= {count}",
            met=correct == count,
        ),
    ]
    raw = {
        "apps": count,
        "db": "PostgreSQL (new_database), CONN_MAX_AGE 0",
        "before": before,
        "after": after,
        "connections_after": after_connections,
        "connections_peak": peak[0],
        "start_all_s": start_all_s,
        "sequential_sweep_s": sweep_s,
        "problems": problems[:20],
    }
    return {"rows": rows, "raw": raw}


if __name__ == "__main__":
    bench_main("density", run)
