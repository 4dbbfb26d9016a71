"""bench/routing: the cost of tenant routing, an environment against a plain Django project.

The same page, Django's admin login page, served two ways on the same ASGI server with the
same flags (uvicorn, as run_environment starts it):
- tenant: app `r1` (SQLite) hosted by an environment, /apps/r1/admin/login/: the gateway,
  per-app database routing, URLconf and cookies, the Channels router and the proxy handler
  in front of Django;
- plain: bench/plain_site, a single-tenant project with the same INSTALLED_APPS subset (admin,
  auth, contenttypes, sessions, messages) and Django's default middleware, /admin/login/.
wrk drives both, interleaved round by round (1 and 32 connections); medians over rounds.

    python -m bench.routing [--quick] [--json PATH]
"""

from __future__ import annotations

import subprocess
from typing import Any

from bench.common import (
    HOST,
    PY,
    ROOT,
    Cluster,
    bench_main,
    process_title,
    row,
    wait_http,
    wrk_rounds,
)
from supervisor_project.processes import ENVIRONMENT_ASGI_FLAGS

ENV = "route_env"


def run(quick: bool) -> dict[str, Any]:
    seconds, rounds = (2, 1) if quick else (5, 3)
    with Cluster("routing") as cluster:
        cluster.setup_django()
        cluster.start_jobs()
        env_port = cluster.start_environment(ENV)
        plain_env = {
            **cluster.common,
            "DJANGO_SETTINGS_MODULE": "bench.plain_site.settings",
            "PLAIN_SITE_DB": str(cluster.tmp / "plain.sqlite3"),
        }
        subprocess.run(
            [PY, "-m", "django", "migrate", "--noinput", "-v0"],
            env=plain_env,
            cwd=ROOT,
            check=True,
        )
        plain_port = cluster.start_asgi(
            "plain", "bench.plain_site.asgi:application", plain_env, *ENVIRONMENT_ASGI_FLAGS
        )
        cluster.wait_environments([ENV])
        wait_http(f"http://{HOST}:{plain_port}/admin/login/")
        application = cluster.create_app("r1", [ENV], db_type="sqlite", title="Routing")
        cluster.start_app(application)
        cluster.wait_running(["r1"])

        def env_uvicorn() -> list[int]:
            return [p for p in cluster.environment_pids(ENV) if "uvicorn" in process_title(p)]

        result = wrk_rounds(
            {
                "tenant": f"http://{HOST}:{env_port}/apps/r1/admin/login/",
                "plain": f"http://{HOST}:{plain_port}/admin/login/",
            },
            connections=(1, 32),
            seconds=seconds,
            rounds=rounds,
            cpu_pids={"tenant": env_uvicorn, "plain": lambda: [cluster.procs["plain"].pid]},
        )
        cluster.check_alive()

    tenant, plain = result["median"]["tenant"], result["median"]["plain"]
    cpu = result["cpu_ms_per_request"]
    ratio = tenant["rps@32"] / plain["rps@32"]
    rows = [
        row(
            "tenant routing: req/s @32 vs plain Django",
            tenant["rps@32"],
            anchor=f"plain {plain['rps@32']:.0f}",
            ratio=ratio,
            target=">= 0.9x",
            met=ratio >= 0.9,
        ),
        row(
            "tenant routing: p50 @1 conn (ms)",
            tenant["p50_ms@1"],
            anchor=f"plain {plain['p50_ms@1']:.2f}",
            ratio=tenant["p50_ms@1"] / plain["p50_ms@1"],
        ),
        row(
            "tenant routing: server CPU per request (ms)",
            cpu["tenant"],
            anchor=f"plain {cpu['plain']:.2f}",
            ratio=cpu["tenant"] / cpu["plain"],
        ),
    ]
    errors = {n: m.get("errors@32", 0) + m.get("errors@1", 0) for n, m in result["median"].items()}
    return {"rows": rows, "raw": {**result, "errors": errors}}


if __name__ == "__main__":
    bench_main("routing", run)
