"""bench/proxy: the supervisor's proxy next to a direct request and to nginx (issue #4).

Starts on free loopback ports (bench/common.py's Cluster): a supervisor (web + job worker, on
a scratch PostgreSQL database), one environment (run_environment) hosting app `bench`, nginx
(Debian's, config generated here) in front of the same environment, and an echo server for
the streaming figure. wrk drives the sub-app's admin login page; rounds are interleaved so
the three targets share the machine's noise. Bounded in time; everything stops by itself.

There the environment (Django rendering a page, about 7 ms of CPU) is the bottleneck, so the
proxy's own ceiling is measured too: 200 connections to the echo server (a bare ASGI app,
some 20,000 req/s on its own) directly, through nginx and through the supervisor.

    python -m bench.proxy [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

import httpx

from bench.common import HOST, Cluster, bench_main, free_port, row, rss_mib, wrk_rounds

ENV = "bench_env"
CEILING_CONNECTIONS = 200


def start(cluster: Cluster) -> dict[str, int]:
    cluster.setup_django()
    cluster.start_jobs()
    ports = {"env": cluster.start_environment(ENV), "web": cluster.start_web()}
    ports["echo"] = cluster.start_asgi(
        "echo", "tests.integration.echo_app:app", dict(os.environ), "--no-access-log"
    )
    cluster.wait_environments([ENV])
    cluster.start_app(cluster.create_app("bench", [ENV]))
    cluster.wait_running(["bench"])

    from apps.supervisor.models import Deployment, Environment

    echo = f"http://{HOST}:{ports['echo']}"
    Environment.objects.create(name="echo_env", url=echo, proxy_url=echo)
    application = cluster.create_app("echo", ["echo_env"], title="Echo", db_type="sqlite")
    Deployment.objects.filter(application=application).update(desired="running", status="running")

    ports["nginx"] = cluster.ports["nginx"] = free_port()
    ports["nginx_echo"] = cluster.ports["nginx_echo"] = free_port()
    conf = cluster.tmp / "nginx.conf"
    conf.write_text(f"""worker_processes 1; pid {cluster.tmp}/nginx.pid; error_log stderr;
events {{ worker_connections 1024; }}
http {{ access_log off;
  upstream env {{ server {HOST}:{ports["env"]}; keepalive 64; }}
  upstream echo {{ server {HOST}:{ports["echo"]}; keepalive 256; }}
  server {{ listen {HOST}:{ports["nginx"]};
    location / {{ proxy_pass http://env; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $http_host; }} }}
  server {{ listen {HOST}:{ports["nginx_echo"]};
    location / {{ proxy_pass http://echo; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $http_host; }} }} }}
""")
    cluster.spawn(
        "nginx",
        ["nginx", "-c", str(conf), "-p", str(cluster.tmp), "-g", "daemon off;"],
        dict(os.environ),
    )
    time.sleep(1.5)  # the supervisor's route cache picks up the new apps
    return ports


def nginx_worker(cluster: Cluster) -> list[int]:
    nginx = cluster.procs["nginx"].pid
    children = subprocess.run(
        ["pgrep", "-P", str(nginx)], capture_output=True, text=True
    ).stdout.split()
    return [int(children[0]) if children else nginx]


def measure(cluster: Cluster, ports: dict[str, int], quick: bool) -> dict[str, Any]:
    path = "/apps/bench/admin/login/"
    # Rounds of one target vary by +-15% here: four rounds of 8 s keep the medians within a few %.
    seconds, rounds = (2, 1) if quick else (8, 4)
    web = cluster.procs["web"].pid
    result = wrk_rounds(
        {
            "direct": f"http://{HOST}:{ports['env']}{path}",
            "supervisor": f"http://{HOST}:{ports['web']}{path}",
            "nginx": f"http://{HOST}:{ports['nginx']}{path}",
        },
        connections=(1, 32),
        seconds=seconds,
        rounds=rounds,
        cpu_pids={"supervisor": lambda: [web], "nginx": lambda: nginx_worker(cluster)},
    )
    echo = "/apps/echo/echo"  # the echo server answers any path; the proxy keeps it
    ceiling = wrk_rounds(
        {
            "direct": f"http://{HOST}:{ports['echo']}{echo}",
            "supervisor": f"http://{HOST}:{ports['web']}{echo}",
            "nginx": f"http://{HOST}:{ports['nginx_echo']}{echo}",
        },
        connections=(CEILING_CONNECTIONS,),
        seconds=seconds,
        rounds=rounds,
        timeout=10,
    )
    stream_url = f"http://{HOST}:{ports['web']}/apps/echo/stream?mb=256"
    base_rss, peak, received = rss_mib(web), 0.0, 0
    with httpx.stream("GET", stream_url, timeout=120) as response:
        for chunk in response.iter_raw(1 << 20):
            received += len(chunk)
            peak = max(peak, rss_mib(web))
    cluster.check_alive()
    return {
        **result,
        "ceiling": ceiling,
        "stream": {"bytes": received, "rss_before_mib": base_rss, "rss_peak_mib": peak},
    }


def table(result: dict) -> list[dict]:
    m, cpu, stream = result["median"], result["cpu_ms_per_request"], result["stream"]
    sup, direct, nginx = m["supervisor"], m["direct"], m["nginx"]
    added = sup["p50_ms@1"] - direct["p50_ms@1"]
    top, c = result["ceiling"]["median"], CEILING_CONNECTIONS
    growth = stream["rss_peak_mib"] - stream["rss_before_mib"]
    return [
        row(
            "proxy: CPU per request (ms)",
            cpu["supervisor"],
            anchor=f"nginx {cpu['nginx']:.3f}",
            target="<= 2.0",
            met=cpu["supervisor"] <= 2.0,
        ),
        row(
            "proxy: added p50 latency @1 conn (ms)",
            added,
            anchor=f"direct {direct['p50_ms@1']:.2f}",
            target="<= 3.0",
            met=added <= 3.0,
        ),
        row(
            "proxy: req/s @32 vs direct",
            sup["rps@32"],
            anchor=f"direct {direct['rps@32']:.0f}",
            ratio=sup["rps@32"] / direct["rps@32"],
            target=">= 0.9x",
            met=sup["rps@32"] / direct["rps@32"] >= 0.9,
        ),
        row(
            "proxy: req/s @32 vs nginx",
            sup["rps@32"],
            anchor=f"nginx {nginx['rps@32']:.0f}",
            ratio=sup["rps@32"] / nginx["rps@32"],
            target=">= 0.9x",
            met=sup["rps@32"] / nginx["rps@32"] >= 0.9,
        ),
        row(
            "proxy: p99 @32 (ms)",
            sup["p99_ms@32"],
            anchor=f"direct {direct['p99_ms@32']:.1f} / nginx {nginx['p99_ms@32']:.1f}",
            ratio=sup["p99_ms@32"] / direct["p99_ms@32"],
        ),
        row(
            f"proxy ceiling: req/s @{c} to a bare upstream",
            top["supervisor"][f"rps@{c}"],
            anchor=f"direct {top['direct'][f'rps@{c}']:.0f} / nginx {top['nginx'][f'rps@{c}']:.0f}",
            ratio=top["supervisor"][f"rps@{c}"] / top["nginx"][f"rps@{c}"],
        ),
        row(
            f"proxy ceiling: p99 @{c} (ms)",
            top["supervisor"][f"p99_ms@{c}"],
            anchor=f"direct {top['direct'][f'p99_ms@{c}']:.1f} / "
            f"nginx {top['nginx'][f'p99_ms@{c}']:.1f}",
            ratio=top["supervisor"][f"p99_ms@{c}"] / top["nginx"][f"p99_ms@{c}"],
        ),
        row(
            "proxy: RSS growth streaming 256 MiB (MiB)",
            growth,
            anchor=f"{stream['bytes'] >> 20} MiB received",
            target="< 32",
            met=growth < 32,
        ),
    ]


def run(quick: bool) -> dict[str, Any]:
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        raise SystemExit("bench/proxy needs wrk and nginx: apt-get install wrk nginx-light")
    with Cluster("proxy") as cluster:
        ports = start(cluster)
        result = measure(cluster, ports, quick)
    return {"rows": table(result), "raw": result}


if __name__ == "__main__":
    bench_main("proxy", run)
