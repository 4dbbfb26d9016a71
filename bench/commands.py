"""bench/commands: the command round trip, supervisor -> environment -> stored report.

A no-op `ping` is published by this process (playing the supervisor's web process) with
services.environment_ping onto the environment's queue `env.<name>`; the environment's Celery
worker answers with a pong report on the supervisor's queue; the supervisor's job worker
stores it in Environment.last_ping_id / last_ping_at. The clock stops when that row is
committed.

How "stored" is observed: a trigger created in the bench's scratch supervisor database sends
NOTIFY on UPDATE OF last_ping_id, and this process LISTENs on a dedicated connection.
PostgreSQL delivers a notification only after the writing transaction commits, so receiving
the one carrying our command id proves the reply is stored, while this process sleeps in
select() instead of polling (polling every 1 ms would add up to 1 ms and load the database
the measurement runs against). The trigger costs the UPDATE a few microseconds.

The return leg is also measured alone (a pong published by this process the way the
environment sends it, until stored), so the rest is the outgoing leg and the environment;
and, in this process without Celery, the job worker's task body on a signed pong
(workers.tasks.supervisor_message: verify the signature, decode, the replay check, the
handler services.environment_message) on a kept database connection and with a new one per
message, and the handler alone: the rest of the return leg is Celery and Redis.

Anchors, measured in the same run, interleaved in chunks with the ping so all three share the
machine's noise: the floor (a raw Redis LPUSH/BRPOP echo between two processes) and a bare
Celery no-op task round trip (result through the Redis backend), its worker started with the
same pool and flags as an environment's. The issue's author measured floor p50 0.29 ms, bare
Celery p50 2.3 ms / p99 5.3 ms.

    python -m bench.commands [--quick] [--json PATH]
"""

from __future__ import annotations

import uuid
from typing import Any

import redis

from bench.common import (
    PY,
    REDIS_URL,
    Cluster,
    Notifier,
    bench_main,
    row,
    say,
    summary,
    timed_ms,
)

ISSUE = {"floor_p50": 0.29, "celery_p50": 2.3, "celery_p99": 5.3}
ENV = "bench_env"


def run(quick: bool) -> dict[str, Any]:
    total, chunks, warm = (200, 4, 20) if quick else (1000, 10, 50)
    with Cluster("commands") as cluster:
        cluster.setup_django()
        cluster.start_jobs()
        cluster.start_environment(ENV)
        inbox, outbox = f"{cluster.tag}.echo.in", f"{cluster.tag}.echo.out"
        cluster.spawn("echo", [PY, "-m", "bench.anchors", inbox, outbox], cluster.common)
        anchor_queue = f"{cluster.tag}.anchor"
        cluster.celery_worker("anchor", "bench.anchors", anchor_queue, extra=["--pool", "prefork"])
        cluster.wait_environments([ENV])

        from django.db import connection

        from apps.supervisor import services
        from bench import anchors
        from workers import messages, signing
        from workers.tasks import send_to_supervisor, supervisor_message

        client = redis.Redis.from_url(REDIS_URL)
        notifier = Notifier(
            cluster.db,
            table="supervisor_environment",
            columns=["last_ping_id"],
            payload="NEW.last_ping_id::text",
            channel=f"{cluster.tag}_ping",
        )

        def floor() -> None:
            client.lpush(inbox, b"x")
            if client.brpop([outbox], timeout=2) is None:
                raise RuntimeError("bench: the Redis echo did not answer")

        def celery() -> None:
            anchors.noop.apply_async(queue=anchor_queue).get(timeout=10)

        def ping() -> None:
            want = str(services.environment_ping(name=ENV))
            notifier.wait(lambda payload: payload == want, timeout=10)

        def pong() -> None:  # the return leg alone: a pong as the environment sends it
            want = str(uuid.uuid4())
            send_to_supervisor({"kind": "pong", "env": ENV, "command_id": want, "at": 1})
            notifier.wait(lambda payload: payload == want, timeout=10)

        def pong_message() -> dict[str, Any]:
            return {"v": 1, "type": "report", "kind": "pong", "env": ENV, "at": 1} | {
                "command_id": str(uuid.uuid4())
            }

        def handler() -> None:  # the supervisor's handling of a decoded pong
            services.environment_message(messages.decode(pong_message()))

        def task(new_connection: bool) -> None:  # the job worker's task body, no Celery
            supervisor_message(signing.sign(pong_message()))  # verify, decode, replay, handle
            if new_connection:
                connection.close()

        # This process keeps its connection across tasks (CONN_MAX_AGE None), so the task
        # body figure is its own work; "new conn" pays a connection per message.
        connection.close()
        connection.settings_dict["CONN_MAX_AGE"] = None
        probes = {
            "floor": floor,
            "bare Celery": celery,
            "ping": ping,
            "pong leg": pong,
            "pong handler": handler,
            "pong task body": lambda: task(False),
            "pong task body, new conn": lambda: task(True),
        }
        samples: dict[str, list[float]] = {name: [] for name in probes}
        for fn in probes.values():  # warm up (imports, connections, pool processes)
            for _ in range(warm):
                fn()
        for chunk in range(chunks):
            say(f"round trips: chunk {chunk + 1}/{chunks}")
            cluster.check_alive()
            for name, fn in probes.items():
                for _ in range(total // chunks):
                    samples[name].append(timed_ms(fn))
        notifier.close()

    stats = {name: summary(values) for name, values in samples.items()}
    p, c, f = stats["ping"], stats["bare Celery"], stats["floor"]
    # The targets are absolute times on the issue's machine, where bare Celery took 2.3 /
    # 5.3 ms. Scaled by the bare Celery anchor of this run they read "ping p50 <= 3.48x
    # bare Celery p50" and "p99 <= 4.72x bare Celery p99"; a figure meets its target when it
    # meets either form (on a machine as fast as the issue's both are the same).
    p50_scaled, p99_scaled = 8 / ISSUE["celery_p50"], 25 / ISSUE["celery_p99"]
    rows = [
        row(
            f"command round trip: ping p50 (ms, n={p['n']})",
            p["p50"],
            anchor=f"Celery {c['p50']:.2f} / floor {f['p50']:.2f}",
            ratio=p["p50"] / c["p50"],
            target=f"<= 8, or <= {p50_scaled:.2f}x Celery",
            met=p["p50"] <= 8 or p["p50"] / c["p50"] <= p50_scaled,
        ),
        row(
            "command round trip: ping p99 (ms)",
            p["p99"],
            anchor=f"Celery {c['p99']:.2f} / floor {f['p99']:.2f}",
            ratio=p["p99"] / c["p99"],
            target=f"<= 25, or <= {p99_scaled:.2f}x Celery",
            met=p["p99"] <= 25 or p["p99"] / c["p99"] <= p99_scaled,
        ),
        row(
            "  of which env -> stored (pong leg) p50 (ms)",
            stats["pong leg"]["p50"],
            anchor=f"out + env {p['p50'] - stats['pong leg']['p50']:.2f}",
            ratio=stats["pong leg"]["p50"] / p["p50"],
        ),
        row(
            "  supervisor task body alone p50 (ms)",
            stats["pong task body"]["p50"],
            anchor=f"handler {stats['pong handler']['p50']:.2f}; "
            f"new conn {stats['pong task body, new conn']['p50']:.2f}",
            ratio=stats["pong task body"]["p50"] / p["p50"],
        ),
        row(
            "anchor: Redis LPUSH/BRPOP echo p50 (ms)",
            f["p50"],
            anchor=f"issue {ISSUE['floor_p50']}",
            ratio=f["p50"] / ISSUE["floor_p50"],
        ),
        row(
            "anchor: bare Celery no-op p50 (ms)",
            c["p50"],
            anchor=f"issue {ISSUE['celery_p50']}",
            ratio=c["p50"] / ISSUE["celery_p50"],
        ),
        row(
            "anchor: bare Celery no-op p99 (ms)",
            c["p99"],
            anchor=f"issue {ISSUE['celery_p99']}",
            ratio=c["p99"] / ISSUE["celery_p99"],
        ),
    ]
    return {"rows": rows, "raw": stats, "samples": samples}


if __name__ == "__main__":
    bench_main("commands", run)
