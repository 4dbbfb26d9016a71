"""What every benchmark shares: ports, processes, a cluster, wrk, statistics, /proc readers,
PostgreSQL helpers and the result format. One piece of code, used by every bench module.

A bench module is run as `python -m bench.<name> [--quick] [--json PATH]` (bench/__main__.py
runs them all and prints one table). Each one runs in its own process, because each
configures Django for itself (as the supervisor's web process, in supervisor mode, on its
own scratch PostgreSQL database).

Everything a run creates is named after a per-run tag `b<pid>`: the supervisor database
`b<pid>_supervisor`, app databases `b<pid>_<app>` (APP_DB_PREFIX), Redis queues and cache keys
`b<pid>.` (APP_QUEUE_PREFIX, on Redis db 0, which the test suite never flushes). `Cluster.stop`
stops the processes it started (by id) and drops and deletes all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import psycopg2
from psycopg2 import sql

from supervisor_project.processes import asgi_server_argv, celery_worker_argv

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
HOST = "127.0.0.1"
PG = {"host": HOST, "port": 5432, "user": "postgres"}
REDIS_URL = f"redis://{HOST}:6379/0"
# Settings given with --set KEY=VALUE: every process of a cluster gets them (what-if runs,
# e.g. --set DB_CONN_MAX_AGE=60); recorded with the results.
OVERRIDES: dict[str, str] = {}


def say(message: str) -> None:
    """Progress on stderr (stdout is the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- waiting ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, every: float = 0.05):
    give_up = time.monotonic() + timeout
    result = check()
    while not result:
        if time.monotonic() > give_up:
            raise RuntimeError(f"bench: gave up after {timeout} s waiting for {what} ({result!r})")
        time.sleep(every)
        result = check()
    return result


def wait_http(url: str, timeout: float = 60) -> None:
    def answers() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code < 500
        except httpx.TransportError:
            return False

    wait_until(answers, timeout=timeout, what=f"{url} to answer", every=0.2)


# --- statistics ------------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def timed_ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


# --- /proc ---------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (now)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def process_title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
    except OSError:
        return "?"


def cpu_seconds(pids: int | Iterable[int]) -> float:
    """User + system CPU time of these processes (a vanished one counts 0)."""
    total = 0
    for pid in [pids] if isinstance(pids, int) else pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str, file: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mib(pids: int | Iterable[int]) -> float:
    return sum(_status_kib(p, "VmRSS:") for p in ([pids] if isinstance(pids, int) else pids)) / 1024


def pss_mib(pids: int | Iterable[int]) -> float:
    """Proportional set size: shared pages (forked children) counted once in the sum."""
    pids = [pids] if isinstance(pids, int) else pids
    return sum(_status_kib(p, "Pss:", "smaps_rollup") for p in pids) / 1024


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- wrk -----------------------------------------------------------------------------------
def wrk(
    url: str,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if timeout:  # wrk's own default (2 s) counts a slow answer as a failed request
        argv.append(f"--timeout={timeout:g}s")
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    # "Socket errors: connect 0, read 0, write 0, timeout 0" and "Non-2xx or 3xx responses: N"
    kinds = {k: int(n) for k, n in re.findall(r"\b(connect|read|write|timeout) (\d+)", out)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    kinds["non-2xx/3xx"] = int(non_2xx.group(1)) if non_2xx else 0
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "errors": sum(kinds.values()),
        "error_kinds": {k: n for k, n in kinds.items() if n},
    }


def wrk_rounds(
    urls: dict[str, str],
    *,
    connections: tuple[int, ...],
    seconds: float,
    rounds: int,
    cpu_pids: dict[str, Callable[[], list[int]]] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """wrk against every url, interleaved round by round so they share the machine's noise.
    `timeout`: wrk's per-request limit (its default, 2 s, closes and reopens the connection).

    Returns the median over rounds of every figure (`rps@32`, `p50_ms@1`...) per url and,
    for the urls in cpu_pids, the CPU milliseconds per request of those processes at the
    highest connection count.
    """
    for url in urls.values():
        response = httpx.get(url, timeout=10)
        if response.status_code != 200:
            raise RuntimeError(f"bench: {url} answered {response.status_code}")
        wrk(url, 4, 1)  # warm up
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in urls}
    cpu: dict[str, list[float]] = {name: [] for name in cpu_pids or {}}
    for index in range(rounds):
        say(f"wrk round {index + 1}/{rounds}")
        for name, url in urls.items():
            for conns in connections:
                pids = (cpu_pids or {}).get(name, lambda: [])()
                before = cpu_seconds(pids)
                result = wrk(url, conns, seconds, timeout=timeout)
                if pids and conns == max(connections):
                    cpu[name].append((cpu_seconds(pids) - before) * 1000 / result["requests"])
                for key, value in result.items():
                    if isinstance(value, int | float):  # not error_kinds: "errors" counts them
                        figures[name].setdefault(f"{key}@{conns}", []).append(value)
    return {
        "median": {n: {k: median(v) for k, v in f.items()} for n, f in figures.items()},
        "cpu_ms_per_request": {n: median(v) for n, v in cpu.items() if v},
        "rounds": figures,
    }


# --- PostgreSQL ------------------------------------------------------------------------------
def pg_connect(dbname: str = "postgres"):
    conn = psycopg2.connect(dbname=dbname, connect_timeout=5, **PG)
    conn.autocommit = True
    return conn


def pg_run(statement: sql.Composable | str, params=None, dbname: str = "postgres") -> list:
    conn = pg_connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def create_database(name: str, template: str | None = None) -> None:
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    pg_run(statement)


def drop_databases(prefix: str) -> list[str]:
    names = [
        row[0]
        for row in pg_run(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            [prefix.replace("_", r"\_") + "%"],
        )
    ]
    for name in names:
        pg_run(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return names


def connections_to(prefix: str) -> int:
    """Connections open right now to the databases whose names start with prefix."""
    return pg_run(
        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s",
        [prefix.replace("_", r"\_") + "%"],
    )[0][0]


class Notifier:
    """Learn that a row change was committed, without polling: a trigger created here (in the
    bench's scratch database only) sends NOTIFY on UPDATE OF `columns`; PostgreSQL delivers a
    notification only when the writing transaction commits, so receiving it proves the row
    is stored. The listening connection sleeps in select() until then."""

    def __init__(self, dbname: str, *, table: str, columns: list[str], payload: str, channel: str):
        self.channel = channel
        self.conn = pg_connect(dbname)
        function = sql.Identifier(f"{channel}_notify")
        with self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_notify({c}, {p}); RETURN NEW; END $$"
                ).format(f=function, c=sql.Literal(channel), p=sql.SQL(payload))
            )
            cur.execute(
                sql.SQL(
                    "CREATE TRIGGER {t} AFTER UPDATE OF {cols} ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION {f}()"
                ).format(
                    t=sql.Identifier(f"{channel}_trigger"),
                    cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
                    table=sql.Identifier(table),
                    f=function,
                )
            )
            cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def wait(self, accept: Callable[[str], bool], timeout: float = 30) -> str:
        """Block until a notification whose payload `accept`s arrives; return its payload."""
        deadline = time.monotonic() + timeout
        while True:
            self.conn.poll()
            while self.conn.notifies:
                payload = self.conn.notifies.pop(0).payload
                if accept(payload):
                    return payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"bench: no {self.channel} notification within {timeout} s")
            select.select([self.conn], [], [], left)

    def close(self) -> None:
        self.conn.close()


# --- processes and the cluster ---------------------------------------------------------------
def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL of its process group (it was started in a new session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class Cluster:
    """A supervisor (this process plays its web process, in supervisor mode, on a scratch
    PostgreSQL database; the Celery jobs worker with beat runs as a subprocess), optional
    environments (`manage.py run_environment`, SQLite for what they host), and any other
    process a bench needs, all on free loopback ports, all stopped by stop()."""

    def __init__(self, bench: str, *, heartbeat_interval: int = 120, **extra_env: str):
        self.bench = bench
        self.tag = f"b{os.getpid()}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"appsup-bench-{bench}-"))
        self.db = f"{self.tag}_supervisor"
        self.secret_key = secrets.token_urlsafe(40)
        # Queue messages are signed: the supervisor holds the master secret, each
        # environment only its own derived key (as in production).
        self.message_secret = secrets.token_urlsafe(48)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.django_ready = False
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("APP_", "DB_", "ENVIRONMENT_", "HEARTBEAT_", "DJANGO_"))
        }
        self.common = {
            **base,
            "SECRET_KEY": self.secret_key,
            "DB_HOST": PG["host"],
            "DB_PORT": str(PG["port"]),
            "DB_USER": PG["user"],
            "APP_DISCOVERY_ADAPTER": "remote",
            "APP_COMMAND_ADAPTER": "redis",
            "APP_SUPERVISOR_REDIS_URL": REDIS_URL,
            "APP_COMMAND_REDIS_URL": REDIS_URL,
            "APP_QUEUE_PREFIX": f"{self.tag}.",
            "APP_DB_PREFIX": f"{self.tag}_",
            "HEARTBEAT_INTERVAL": str(heartbeat_interval),
            "LOG_LEVEL": "warning",
            "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
            **OVERRIDES,
        }
        self.supervisor_env = {
            **self.common,
            "APP_MODE": "supervisor",
            "APP_MESSAGE_SECRETS": self.message_secret,
            "APP_PROCESS_ADAPTER": "remote",
            "DB_DIALECT": "postgres",
            "DB_DATABASE": self.db,
            "STORAGE_DIR": str(self.tmp / "supervisor"),
        }

    @property
    def queue(self) -> str:
        return f"{self.tag}.supervisor"

    # --- this process as the supervisor ----------------------------------------------------
    def setup_django(self, *, database: str | None = None) -> None:
        """Create the scratch database, configure Django here as the supervisor, migrate."""
        if database:
            self.db = self.supervisor_env["DB_DATABASE"] = database
        create_database(self.db)
        os.environ.update(self.supervisor_env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "supervisor_project.settings"
        import django
        from django.core.management import call_command

        django.setup()
        self.django_ready = True
        call_command("migrate", interactive=False, verbosity=0)

    # --- subprocesses ------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start_jobs(self, concurrency: int = 2) -> subprocess.Popen:
        """The supervisor's job worker, as compose and `make cluster` run it (with beat)."""
        argv = celery_worker_argv(
            self.queue,
            f"{self.tag}-jobs@%h",
            concurrency=concurrency,
            beat_schedule=str(self.tmp / "celerybeat-schedule"),
            loglevel="WARNING",
        )
        return self.spawn("jobs", argv, self.supervisor_env)

    def start_web(self) -> int:
        """The supervisor's web process (uvicorn): admin and proxy."""
        port = self.ports["web"] = free_port()
        self.spawn(
            "web",
            asgi_server_argv(HOST, port, "--lifespan", "on", "--no-access-log"),
            self.supervisor_env,
        )
        wait_http(f"http://{HOST}:{port}/admin/login/")
        return port

    def start_asgi(self, name: str, app: str, env: dict[str, str], *flags: str) -> int:
        port = self.ports[name] = free_port()
        self.spawn(name, asgi_server_argv(HOST, port, *flags, app=app), env)
        return port

    def start_environment(self, name: str) -> int:
        from workers.signing import environment_keys_value

        port = self.ports[name] = free_port()
        env = {
            **self.common,
            "APP_ENVIRONMENT_KEYS": environment_keys_value([self.message_secret], name),
            "APP_MODE": "worker",
            "APP_PROCESS_ADAPTER": "local",
            "DB_DIALECT": "sqlite",
            "ENVIRONMENT_NAME": name,
            "ENVIRONMENT_URL": f"http://{HOST}:{port}",
            "STORAGE_DIR": str(self.tmp / name),
        }
        self.spawn(name, [PY, "manage.py", "run_environment"], env)
        return port

    def celery_worker(
        self, name: str, app: str, queue: str, *, concurrency: int = 1, extra=()
    ) -> subprocess.Popen:
        """A Celery worker of another Celery app (an anchor), with the project's flags."""
        argv = celery_worker_argv(queue, f"{self.tag}-{name}@%h", concurrency=concurrency, app=app)
        return self.spawn(name, [*argv, *extra], self.common)

    def wait_environments(self, names: list[str], timeout: float = 90) -> None:
        from django.db import close_old_connections

        from apps.supervisor.models import Environment

        def online() -> bool:
            close_old_connections()
            found = Environment.objects.filter(name__in=names, status="online").count()
            return found == len(names)

        for name in names:
            wait_http(f"http://{HOST}:{self.ports[name]}/apps/none/", timeout)
        wait_until(online, timeout=timeout, what=f"{names} to register", every=0.2)

    def environment_pids(self, name: str) -> list[int]:
        return process_tree(self.procs[name].pid)

    def check_alive(self) -> None:
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"bench: {', '.join(dead)} exited; logs in {self.logs_dir()}")

    # --- apps --------------------------------------------------------------------------------
    def create_app(self, name: str, environments: list[str], **fields: Any):
        from apps.supervisor import services

        return services.application_create(
            name=name, title=fields.pop("title", name.title()), environments=environments, **fields
        )

    def start_app(self, application) -> None:
        from apps.supervisor import services

        outcome = services.application_start(application=application, actor="bench", wait=True)
        if outcome.failed:
            raise RuntimeError(f"bench: start of {application.name} failed: {outcome.failed}")

    def statuses(self, name: str) -> dict[str, str]:
        from django.db import close_old_connections

        from apps.supervisor import selectors

        close_old_connections()
        application = selectors.application_list_with_status().get(name=name)
        return selectors.application_statuses(application)

    def wait_running(self, names: list[str], timeout: float = 300) -> None:
        from django.db import close_old_connections

        from apps.supervisor.models import Deployment

        def done() -> bool:
            close_old_connections()
            rows = Deployment.objects.filter(application__name__in=names)
            errors = list(rows.filter(status="error").values_list("application__name", "error"))
            if errors:
                raise RuntimeError(f"bench: apps failed to start: {errors[:3]}")
            return not rows.exclude(status="running").exists()

        wait_until(done, timeout=timeout, what=f"{len(names)} apps to run", every=0.1)

    # --- end -----------------------------------------------------------------------------------
    def logs_dir(self) -> Path:
        return RESULTS / "logs" / self.bench

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            stop_process(proc)
        if self.django_ready:
            from django.db import connections

            connections.close_all()
        try:
            drop_databases(f"{self.tag}_")
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"*{self.tag}.*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        finally:
            logs = self.logs_dir()
            shutil.rmtree(logs, ignore_errors=True)
            logs.mkdir(parents=True, exist_ok=True)
            for log in self.tmp.glob("*.log"):
                shutil.copy(log, logs / log.name)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- results ---------------------------------------------------------------------------------
def row(
    figure: str,
    us: float | str | None,
    *,
    anchor: str = "",
    ratio: float | None = None,
    target: str = "-",
    met: bool | None = None,
) -> dict[str, Any]:
    """One line of the table: our figure, what it is compared with, the target, met or not."""
    if isinstance(us, float):
        us = round(us, 3)
    return {
        "figure": figure,
        "us": us,
        "anchor": anchor,
        "ratio": None if ratio is None else round(ratio, 3),
        "target": target,
        "met": met,
    }


COLUMNS = ("figure", "us", "anchor", "ratio", "target", "met?")


def cells(r: dict[str, Any]) -> list[str]:
    us = r["us"]
    us = f"{us:.3f}" if isinstance(us, float) else str(us)
    ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
    met = "-" if r["met"] is None else ("yes" if r["met"] else "NO")
    return [r["figure"], us, r["anchor"], ratio, r["target"], met]


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [list(COLUMNS)] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    out = []
    for index, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(w) if i in (0, 2, 4) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def bench_main(name: str, run: Callable[[bool], dict[str, Any]]) -> None:
    """Command line of one bench module: run it, write its JSON, print its rows."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, shorter")
    parser.add_argument("--json", type=Path, default=RESULTS / f"{name}.json")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=setting,
        help="a setting for every process of the cluster (repeatable)",
    )
    args = parser.parse_args()
    OVERRIDES.update(dict(args.set))
    started = time.monotonic()
    load_before = loadavg()
    result = run(args.quick)
    result.setdefault("samples", {})
    result.setdefault("notes", [])
    result.update(
        bench=name,
        quick=args.quick,
        overrides=OVERRIDES,
        seconds=round(time.monotonic() - started, 1),
        loadavg_before=load_before,
        loadavg_after=loadavg(),
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(format_table(result["rows"]))
    for note in result["notes"]:
        print(f"\n{note['title']}:\n{note['text']}")
