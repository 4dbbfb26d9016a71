"""Structured logs: bind() puts the command's id on every line, in JSON or readable text.

The formats are checked in real subprocesses configured by settings.LOGGING, as each server
process is (dictConfig in this process would replace pytest's own log capture)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from apps.observability.logconfig import (
    HousekeepingFilter,
    TextFormatter,
    json_formatter,
    logging_config,
)
from apps.observability.logcontext import ContextFilter, bind, bound, program_name

ROOT = Path(__file__).resolve().parents[2]
CID = "6f1c1d2e-0000-4000-8000-000000000001"


# --- bind ----------------------------------------------------------------------------------


def test_bind_adds_fields_for_the_block_only_and_nests():
    assert bound() == {}
    with bind(command_id=CID, app="crm", env=None, action=""):
        assert bound() == {"command_id": CID, "app": "crm"}
        with bind(env="env_a", app="shop"):
            assert bound() == {"command_id": CID, "app": "shop", "env": "env_a"}
        assert bound() == {"command_id": CID, "app": "crm"}
    assert bound() == {}


def test_bind_is_restored_when_the_block_raises():
    with pytest.raises(RuntimeError), bind(command_id=CID):
        raise RuntimeError("boom")
    assert bound() == {}


def test_bound_fields_follow_into_sync_to_async_and_async_to_sync_threads():
    seen = {}

    def in_thread():
        seen["thread"] = bound()

    async def in_loop():
        seen["loop"] = bound()
        await sync_to_async(in_thread, thread_sensitive=False)()

    with bind(command_id=CID, env="env_a"):
        async_to_sync(in_loop)()
    assert seen == {"loop": {"command_id": CID, "env": "env_a"}, "thread": seen["loop"]}


def test_two_threads_never_see_each_others_fields():
    results, barrier = {}, threading.Barrier(2)

    def work(name):
        with bind(command_id=name):
            barrier.wait(5)
            results[name] = bound()["command_id"]

    threads = [threading.Thread(target=work, args=(n,)) for n in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert results == {"one": "one", "two": "two"}


def test_the_filter_adds_bound_fields_and_identity_and_explicit_extra_wins():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter(mode="worker", environment="env_a"))
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("tests.observability.filter")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    records = []
    handler.emit = lambda record, emit=handler.emit: (records.append(record), emit(record))
    try:
        with bind(command_id=CID, app="crm", env="env_a", action="start"):
            logger.info("installing")
            logger.info("explicit", extra={"app": "other"})
        logger.info("after")
    finally:
        logger.removeHandler(handler)
    first, second, third = stream.getvalue().splitlines()
    assert first.endswith(
        f"INFO tests.observability.filter [command_id={CID} app=crm env=env_a action=start]: "
        "installing"
    )
    assert "app=other env=env_a action=start]: explicit" in second
    assert third.endswith("INFO tests.observability.filter: after")
    assert records[0].mode == "worker" and records[0].environment == "env_a"
    assert records[0].program == program_name()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/x/lib/python3.11/site-packages/celery/__main__.py", "-A", "p"], "celery"),
        (["/x/site-packages/uvicorn/__main__.py", "app"], "uvicorn"),
        (["manage.py", "run_environment"], "manage.py run_environment"),
        (["/app/manage.py"], "manage.py"),
        (["/usr/bin/gunicorn"], "gunicorn"),
        (["-c"], "python"),
        ([], "python"),
    ],
)
def test_program_name(argv, expected):
    assert program_name(argv) == expected


def test_json_mode_takes_over_uvicorns_loggers_and_text_mode_leaves_them():
    as_json = logging_config(log_format="json", level="info", mode="supervisor")
    assert as_json["loggers"]["uvicorn.access"] == {
        "handlers": ["console"],
        "level": "INFO",
        "propagate": False,
    }
    assert as_json["handlers"]["console"]["formatter"] == "json"
    as_text = logging_config(log_format="text", level="warning", mode="local")
    assert "uvicorn.access" not in as_text["loggers"]
    assert as_text["root"]["level"] == "WARNING"


def test_json_leaves_out_uvicorns_colour_copy_of_the_message():
    from pythonjsonlogger.json import JsonFormatter

    options = {k: v for k, v in json_formatter().items() if k != "()"}
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started %d", (7,), None)
    record.color_message = "Started \x1b[36m%d\x1b[0m"
    record.client = "127.0.0.1"
    line = json.loads(JsonFormatter(**options).format(record))
    assert line["message"] == "Started 7" and line["client"] == "127.0.0.1"
    assert "color_message" not in line


def _celery_lines(quiet_tasks: list[str]) -> list[str]:
    """What a handler with the housekeeping filter writes for Celery's own log calls (the same
    format strings and arguments as celery/beat.py, worker/strategy.py and app/trace.py)."""
    from celery.app import trace

    config = logging_config(log_format="text", level="info", mode="supervisor")
    assert config["handlers"]["console"]["filters"][0] == "housekeeping"
    handler = logging.StreamHandler(out := io.StringIO())
    handler.addFilter(HousekeepingFilter(quiet_tasks))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    beat, strategy, traced = loggers = [
        logging.getLogger(f"celery.{name}") for name in ("beat", "worker.strategy", "app.trace")
    ]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        for entry, task in (("fold", "workers.tasks.fold_heartbeats"), ("c", "workers.tasks.x")):
            context = {"id": "c1", "name": task, "runtime": 0.001, "return_value": None}
            failed = {**context, "description": "raised unexpected", "exc": "X"}
            beat.info("Scheduler: Sending due task %s (%s)", entry, task)
            strategy.info(trace.LOG_RECEIVED, context, extra={"data": context})
            traced.info(trace.LOG_SUCCESS, context, extra={"data": context})
            traced.error(trace.LOG_FAILURE, failed, extra={"data": failed})
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return out.getvalue().splitlines()


def test_routine_celery_lines_about_housekeeping_tasks_are_left_out_and_failures_kept():
    from django.conf import settings

    quiet = ["workers.tasks.fold_heartbeats"]
    lines = _celery_lines(quiet)
    fold = [line for line in lines if "fold" in line]
    assert len(fold) == 1 and fold[0].startswith("ERROR celery.app.trace: Task workers.tasks.")
    command = [line for line in lines if "workers.tasks.x" in line]
    assert [line.split(":")[0] for line in command] == [
        "INFO celery.beat",
        "INFO celery.worker.strategy",
        "INFO celery.app.trace",
        "ERROR celery.app.trace",
    ]
    assert len(_celery_lines([])) == 8  # LOG_HOUSEKEEPING=true: every line
    # settings: every periodic task is quiet by default
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert set(settings.LOGGING["filters"]["housekeeping"]["tasks"]) == tasks
    assert "workers.tasks.fold_heartbeats" in tasks


# --- the formats, as a process configured by settings writes them --------------------------

_SCRIPT = textwrap.dedent(
    f"""
    import logging, django
    django.setup()
    from apps.observability.logcontext import bind
    log = logging.getLogger("workers")
    with bind(command_id="{CID}", app="crm", env="env_a", action="start"):
        log.info("starting %s", "crm")
    log.warning("outside")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("boom")
    """
)


def run_logging(**env: str) -> list[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DB_", "APP_", "ENVIRONMENT_", "LOG_"))
    }
    clean.update(
        DJANGO_SETTINGS_MODULE="supervisor_project.settings",
        DB_DIALECT="sqlite",
        PYTHONPATH=str(ROOT),
        **env,
    )
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_json_lines_carry_the_bound_command_id_and_the_process(tmp_path):
    lines = run_logging(LOG_FORMAT="json", STORAGE_DIR=str(tmp_path))
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    first, second, third = records
    assert first["message"] == "starting crm"
    assert first["level"] == "INFO" and first["logger"] == "workers"
    assert (first["command_id"], first["app"], first["env"], first["action"]) == (
        CID,
        "crm",
        "env_a",
        "start",
    )
    assert first["mode"] == "local" and first["process_name"] == "MainProcess"
    assert isinstance(first["pid"], int) and first["program"] == "python"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", first["timestamp"])
    assert second["message"] == "outside" and second["level"] == "WARNING"
    assert "command_id" not in second and "app" not in second
    assert third["message"] == "boom" and "ZeroDivisionError" in third["exc_info"]


def test_text_lines_are_readable_with_the_context_in_brackets(tmp_path):
    lines = run_logging(LOG_FORMAT="text", STORAGE_DIR=str(tmp_path))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO workers "
        rf"\[command_id={CID} app=crm env=env_a action=start\]: starting crm",
        lines[0],
    ), lines[0]
    assert lines[1].endswith(" WARNING workers: outside")
    assert lines[2].endswith(" ERROR workers: boom") and "ZeroDivisionError" in "\n".join(lines)


def test_local_mode_logs_text_and_the_other_modes_json_by_default(tmp_path):
    assert not run_logging(STORAGE_DIR=str(tmp_path))[0].startswith("{")
    lines = run_logging(
        APP_MODE="supervisor",
        SECRET_KEY="x" * 50,
        APP_SUPERVISOR_REDIS_URL="redis://127.0.0.1:6379/0",
        APP_COMMAND_REDIS_URL="redis://127.0.0.1:6379/0",
        STORAGE_DIR=str(tmp_path),
    )
    first = json.loads(lines[0])
    assert first["mode"] == "supervisor" and first["command_id"] == CID
