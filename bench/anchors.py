"""The anchors of the command round trip (bench/commands.py), run as their own processes.

- the floor: `python -m bench.anchors INBOX OUTBOX` echoes every item BRPOPped from INBOX
  with an LPUSH to OUTBOX (a raw Redis round trip between two processes);
- a bare Celery no-op task with a Redis result backend, served by
  `celery -A bench.anchors worker` with the same pool and flags as an environment's worker.

Imports neither Django nor the project: the anchors measure Redis and Celery alone.
"""

from __future__ import annotations

import os
import sys

import redis
from celery import Celery

REDIS_URL = os.environ.get("APP_COMMAND_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench_anchors", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=300,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.anchors.noop")
def noop() -> None:
    return None


def echo(inbox: str, outbox: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    while True:
        item = client.brpop([inbox], timeout=1)  # short: under the client's socket timeout
        if item is not None:
            client.lpush(outbox, item[1])


if __name__ == "__main__":
    echo(sys.argv[1], sys.argv[2])
