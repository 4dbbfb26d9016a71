"""bench/heartbeats: 5,000 environments beating every 120 s, and the supervisor's CPU.

The supervisor's Celery job worker (with beat, concurrency 2, as compose and `make cluster`
run it) folds the heartbeats environments leave in Redis every HEARTBEAT_FOLD_SECONDS; this
process is the load generator. It leaves heartbeats the way an environment does: the message
run_environment's EnvironmentRunner builds (validated with workers.messages), signed with the
environment's key and left with transport.beat_put (one HSET). The simulated environments
host no apps (so no reconciliation work per app: the figure is the floor of a real beat's
cost).

Time is compressed honestly, measuring the worker's whole process tree (main, pool children,
beat) through /proc:
- idle: nothing published (beat's periodic jobs only);
- registration: all 5,000 register at once (the first beat of each);
- steady: the real average rate, 5,000 / 120 s = 41.7 beats/s, evenly spaced, for 60 s;
  CPU % of one core = CPU seconds / wall seconds;
- burst: all 5,000 beat again at once; the CPU seconds it took, spread over the 120 s the
  burst stands for, is its share of a core (a 120 s interval whose beats all come at once).

Then the offline detector's query: the SQL services.environments_detect_offline runs
(captured), EXPLAINed (ANALYZE) on the 5,000 rows; the plan is printed. And, to see where
a beat's CPU goes, the fold's own work in this process on a kept connection: decoding
(signature and content, workers.tasks.beats_decode) and storing batches of the steady
rate's size (services.environment_beats, with a profile); the rest of the worker's CPU is
Celery (one fold task per period), beat and Redis.

    python -m bench.heartbeats [--quick] [--json PATH]
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import (
    Cluster,
    bench_main,
    cpu_seconds,
    process_title,
    process_tree,
    row,
    say,
    wait_until,
)

INTERVAL = 120


class Load:
    def __init__(self, cluster: Cluster, count: int):
        import supervisor_project
        from workers import messages

        self.cluster = cluster
        self.started_at = time.time()
        self.names = [f"sim{i:05d}" for i in range(count)]
        self.version = supervisor_project.__version__
        messages.decode({"v": messages.VERSION, "type": "heartbeat", **self.fields("sim00000")})

    def fields(self, name: str) -> dict[str, Any]:
        """What EnvironmentRunner.heartbeat sends (an environment hosting no app)."""
        return {
            "env": name,
            "url": "http://127.0.0.1:9",
            "proxy_url": "",
            "version": self.version,
            "started_at": self.started_at,
            "interval": INTERVAL,
            "apps": {},
        }

    def beat(self, name: str) -> None:
        from apps.adapters import transport

        transport.beat_put({"v": 1, "type": "heartbeat", **self.fields(name)})

    def jobs_cpu(self) -> float:
        return cpu_seconds(process_tree(self.cluster.procs["jobs"].pid))

    def jobs_cpu_by_process(self) -> dict[str, float]:
        """CPU seconds of each process of the worker: main, pool children, beat."""
        main = self.cluster.procs["jobs"].pid
        return {
            f"{'main' if pid == main else process_title(pid)} {pid}": cpu_seconds(pid)
            for pid in process_tree(main)
        }

    def processed_since(self, since: datetime) -> int:
        from django.db import close_old_connections

        from apps.supervisor.models import Environment

        close_old_connections()
        return Environment.objects.filter(last_heartbeat_at__gte=since).count()

    def phase(self, names: list[str], rate: float | None) -> dict[str, float]:
        """Publish one beat for each name (at `rate` per second, or all at once), wait until
        all are stored; the worker's CPU seconds and the wall time it took."""
        since = datetime.now(UTC)
        by_process = self.jobs_cpu_by_process()
        cpu0, t0 = self.jobs_cpu(), time.monotonic()
        for index, name in enumerate(names):
            if rate:
                delay = t0 + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.beat(name)
        published = time.monotonic() - t0
        wait_until(
            lambda: self.processed_since(since) >= len(names),
            timeout=600,
            what=f"{len(names)} heartbeats to be stored",
            every=0.25,
        )
        wall = time.monotonic() - t0
        cpu = self.jobs_cpu() - cpu0
        self.cluster.check_alive()
        after = self.jobs_cpu_by_process()
        split = {k: round(v - by_process.get(k, 0), 2) for k, v in after.items()}
        return {
            "beats": len(names),
            "published_s": published,
            "wall_s": wall,
            "cpu_s": cpu,
            "cpu_s_by_process": split,
        }


def explain_detector(cluster: Cluster) -> str:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.supervisor import services

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE supervisor_environment")
    with CaptureQueriesContext(connection) as queries:
        services.environments_detect_offline()
    select = next(q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT"))
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + select)
        plan = "\n".join(line for (line,) in cursor.fetchall())
    return f"{select}\n\n{plan}"


def handler_alone(load: Load, count: int, batch: int) -> dict[str, Any]:
    """The fold's work per beat in this process, on a kept connection: decoding (signature,
    content) and storing batches of `batch` beats (the steady rate's batch per fold), the
    latter also profiled; the rest of the worker's CPU is Celery, beat and Redis."""
    import json

    from apps.supervisor import services
    from workers import signing
    from workers.tasks import beats_decode

    names = load.names[:count]
    wire = {
        n: json.dumps(signing.sign({"v": 1, "type": "heartbeat", **load.fields(n)})) for n in names
    }
    start = time.process_time()
    beats = beats_decode(wire)
    decode_ms = (time.process_time() - start) * 1000 / len(names)
    batches = [beats[i : i + batch] for i in range(0, len(beats), batch)]

    def store() -> float:
        start = time.process_time()
        for group in batches:
            services.environment_beats(group)
        return (time.process_time() - start) * 1000 / len(beats)

    store()  # warm up
    store_ms = store()
    profile = cProfile.Profile(time.process_time)
    profile.enable()
    store()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(18)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    return {
        "decode_ms": decode_ms,
        "store_ms": store_ms,
        "batch": batch,
        "profile": "\n".join(lines[-20:]),
    }


def run(quick: bool) -> dict[str, Any]:
    count, steady_s, idle_s = (1000, 15, 5) if quick else (5000, 60, 15)
    with Cluster("heartbeats") as cluster:
        cluster.setup_django()
        cluster.start_jobs()
        load = Load(cluster, count)
        load.phase(["warmup0"], None)  # the worker is up and consuming
        say(f"heartbeats: idle {idle_s} s")
        cpu0 = load.jobs_cpu()
        time.sleep(idle_s)
        idle = {"wall_s": idle_s, "cpu_s": load.jobs_cpu() - cpu0}
        say(f"heartbeats: {count} register at once")
        registration = load.phase(load.names, None)
        rate = count / INTERVAL
        steady_names = (load.names * 2)[: int(rate * steady_s)]
        say(f"heartbeats: steady {rate:.1f}/s for {steady_s} s")
        steady = load.phase(steady_names, rate)
        say(f"heartbeats: burst of {count}")
        burst = load.phase(load.names, None)
        plan = explain_detector(cluster)
        alone = handler_alone(load, min(count, 500), max(1, round(count / INTERVAL)))

    idle_pct = idle["cpu_s"] / idle["wall_s"] * 100
    steady_pct = steady["cpu_s"] / max(steady["wall_s"], steady_s) * 100
    burst_pct = burst["cpu_s"] / INTERVAL * 100
    per_beat = (steady["cpu_s"] - idle_pct / 100 * steady["wall_s"]) * 1000 / steady["beats"]
    uses_index = any(
        "Index Cond" in line and "next_deadline_at" in line for line in plan.splitlines()
    )
    rows = [
        row(
            f"heartbeats: steady {rate:.0f}/s, jobs CPU (% core)",
            steady_pct,
            anchor=f"idle {idle_pct:.1f}%",
            target="< 5",
            met=steady_pct < 5,
        ),
        row(
            f"heartbeats: burst of {count}, CPU % of 120 s",
            burst_pct,
            anchor=f"{burst['cpu_s']:.1f} s CPU, {burst['wall_s']:.1f} s wall",
            target="< 5",
            met=burst_pct < 5,
        ),
        row(
            "heartbeat: jobs CPU per beat (ms)",
            per_beat,
            anchor=f"fold alone: decode {alone['decode_ms']:.2f} + store {alone['store_ms']:.2f}"
            f" (batches of {alone['batch']})",
            ratio=per_beat / (alone["decode_ms"] + alone["store_ms"]),
        ),
        row(
            f"heartbeats: {count} registering at once (s)",
            registration["wall_s"],
            anchor=f"{registration['cpu_s']:.1f} s CPU",
        ),
        row(
            "offline detector query uses an index",
            "yes" if uses_index else "no",
            anchor="EXPLAIN below",
            target="index on deadline",
            met=uses_index,
        ),
    ]
    raw = {
        "environments": count,
        "idle": idle,
        "registration": registration,
        "steady": {**steady, "rate_per_s": rate},
        "burst": burst,
        "handler_alone": {k: v for k, v in alone.items() if k != "profile"},
    }
    notes = [
        {"title": "offline detector: query and EXPLAIN (ANALYZE, BUFFERS)", "text": plan},
        {
            "title": "heartbeat fold profile (services.environment_beats in this process, "
            "kept connection, CPU time, cumulative)",
            "text": alone["profile"],
        },
    ]
    return {"rows": rows, "raw": raw, "notes": notes}


if __name__ == "__main__":
    bench_main("heartbeats", run)
