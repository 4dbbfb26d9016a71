"""bench/proxy: the supervisor's proxy next to a direct request and to nginx.

Starts on free loopback ports: a supervisor (web + job worker, on a scratch PostgreSQL
database), one environment (run_environment) hosting app `bench`, nginx (Debian's, config
generated here) in front of the same environment, and an echo server for the streaming
figure. wrk drives the sub-app's admin login page; rounds are interleaved so the three
targets share the machine's noise. Bounded in time; everything stops by itself.

    python bench/proxy.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: {url} did not answer within {timeout} s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "requests": requests,
        "errors": errors,
    }


class Bench:
    def __init__(self, quick: bool):
        self.quick = quick
        self.tmp = Path(tempfile.mkdtemp(prefix="appsup-bench-"))
        self.procs: list[subprocess.Popen] = []
        self.tag = f"bench{os.getpid()}"
        self.db = f"{self.tag}_supervisor"
        self.ports = {k: free_port() for k in ("web", "env", "nginx", "echo")}
        common = {
            "SECRET_KEY": secrets.token_urlsafe(40),
            "DB_DIALECT": "postgres",
            "DB_HOST": "127.0.0.1",
            "DB_USER": "postgres",
            "APP_DISCOVERY_ADAPTER": "remote",
            "APP_COMMAND_ADAPTER": "redis",
            "APP_SUPERVISOR_REDIS_URL": "redis://127.0.0.1:6379/0",
            "APP_COMMAND_REDIS_URL": "redis://127.0.0.1:6379/0",
            "APP_QUEUE_PREFIX": f"{self.tag}.",
            "APP_DB_PREFIX": f"{self.tag}_",
            "HEARTBEAT_INTERVAL": "2",
            "LOG_LEVEL": "warning",
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
        }
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("APP_", "DB_", "ENVIRONMENT_"))
        }
        self.sup_env = {
            **base,
            **common,
            "APP_MODE": "supervisor",
            "APP_PROCESS_ADAPTER": "remote",
            "DB_DATABASE": self.db,
            "STORAGE_DIR": str(self.tmp / "supervisor"),
        }
        self.env_env = {
            **base,
            **common,
            "APP_MODE": "worker",
            "APP_PROCESS_ADAPTER": "local",
            "DB_DIALECT": "sqlite",
            "ENVIRONMENT_NAME": "bench_env",
            "ENVIRONMENT_URL": f"http://127.0.0.1:{self.ports['env']}",
            "STORAGE_DIR": str(self.tmp / "env"),
        }

    def spawn(self, cmd: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [PY, "manage.py", *args],
            env=self.sup_env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout

    def pg(self, statement: sql.Composable) -> None:
        conn = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
        conn.close()

    def start(self) -> None:
        self.pg(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db)))
        self.manage("migrate", "--noinput", "-v0")
        self.spawn(
            [
                PY,
                "-m",
                "celery",
                "-A",
                "supervisor_project",
                "worker",
                "-Q",
                f"{self.tag}.supervisor",
                "-B",
                "-s",
                str(self.tmp / "beat"),
                "--concurrency",
                "1",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "WARNING",
            ],
            self.sup_env,
            "jobs",
        )
        self.spawn([PY, "manage.py", "run_environment"], self.env_env, "env")
        self.web = self.spawn(
            [
                PY,
                "-m",
                "uvicorn",
                "supervisor_project.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports["web"]),
                "--no-access-log",
                "--lifespan",
                "on",
            ],
            self.sup_env,
            "web",
        )
        self.spawn(
            [
                PY,
                "-m",
                "uvicorn",
                "tests.integration.echo_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports["echo"]),
                "--no-access-log",
            ],
            dict(os.environ),
            "echo",
        )
        wait_http(f"http://127.0.0.1:{self.ports['env']}/apps/none/")
        wait_http(f"http://127.0.0.1:{self.ports['web']}/admin/login/")
        deadline = time.monotonic() + 60
        while "bench_env" not in self.manage("environments", "list"):
            if time.monotonic() > deadline:
                raise SystemExit("bench: the environment did not register")
            time.sleep(0.5)
        self.manage("apps", "create", "bench", "--title", "Bench", "--env", "bench_env")
        self.manage("apps", "start", "bench")
        echo = f"http://127.0.0.1:{self.ports['echo']}"
        self.manage(
            "shell",
            "-c",
            (
                "from apps.supervisor.models import Environment, Deployment;"
                "from apps.supervisor import services;"
                f"Environment.objects.create(name='echo_env', url='{echo}', proxy_url='{echo}');"
                "a = services.application_create(name='echo', title='Echo',"
                " environments=['echo_env'], db_type='sqlite');"
                "Deployment.objects.filter(application=a)"
                ".update(desired='running', status='running')"
            ),
        )
        conf = self.tmp / "nginx.conf"
        conf.write_text(f"""worker_processes 1; pid {self.tmp}/nginx.pid; error_log stderr;
events {{ worker_connections 1024; }}
http {{ access_log off;
  upstream env {{ server 127.0.0.1:{self.ports["env"]}; keepalive 64; }}
  server {{ listen 127.0.0.1:{self.ports["nginx"]};
    location / {{ proxy_pass http://env; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $http_host; }} }} }}
""")
        self.nginx = self.spawn(
            ["nginx", "-c", str(conf), "-p", str(self.tmp), "-g", "daemon off;"],
            dict(os.environ),
            "nginx",
        )
        time.sleep(1.5)  # the supervisor's route cache picks up the new app

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        try:
            self.pg(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.db))
            )
            self.pg(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(f"{self.tag}_bench")
                )
            )
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def nginx_worker(self) -> int:
        children = subprocess.run(
            ["pgrep", "-P", str(self.nginx.pid)], capture_output=True, text=True
        ).stdout.split()
        return int(children[0]) if children else self.nginx.pid

    def run(self) -> dict:
        path = "/apps/bench/admin/login/"
        urls = {
            "direct": f"http://127.0.0.1:{self.ports['env']}{path}",
            "supervisor": f"http://127.0.0.1:{self.ports['web']}{path}",
            "nginx": f"http://127.0.0.1:{self.ports['nginx']}{path}",
        }
        for url in urls.values():
            assert httpx.get(url).status_code == 200, url
            wrk(url, 4, 1)  # warm up
        seconds, rounds = (2, 1) if self.quick else (5, 3)
        results: dict[str, dict[str, list[float]]] = {k: {} for k in urls}
        cpu = {"supervisor": [], "nginx": []}
        for _ in range(rounds):
            for name, url in urls.items():
                for conns in (1, 32):
                    pid = {"supervisor": self.web.pid, "nginx": self.nginx_worker()}.get(name)
                    before = cpu_seconds(pid) if pid else 0
                    figures = wrk(url, conns, seconds)
                    if pid and conns == 32:
                        cpu[name].append((cpu_seconds(pid) - before) * 1000 / figures["requests"])
                    for key, value in figures.items():
                        results[name].setdefault(f"{key}@{conns}", []).append(value)
        median = {n: {k: sorted(v)[len(v) // 2] for k, v in r.items()} for n, r in results.items()}
        stream_url = f"http://127.0.0.1:{self.ports['web']}/apps/echo/stream?mb=256"
        base_rss, peak = rss_mib(self.web.pid), 0.0
        received = 0
        with httpx.stream("GET", stream_url, timeout=120) as response:
            for chunk in response.iter_raw(1 << 20):
                received += len(chunk)
                peak = max(peak, rss_mib(self.web.pid))
        return {
            "median": median,
            "cpu_ms_per_request": {k: sorted(v)[len(v) // 2] for k, v in cpu.items()},
            "stream": {"bytes": received, "rss_before_mib": base_rss, "rss_peak_mib": peak},
        }


def table(result: dict) -> list[dict]:
    m, cpu, stream = result["median"], result["cpu_ms_per_request"], result["stream"]
    sup, direct, nginx = m["supervisor"], m["direct"], m["nginx"]
    rows = [
        (
            "proxy CPU per request (ms)",
            cpu["supervisor"],
            f"nginx {cpu['nginx']:.3f}",
            None,
            "<= 2.0",
            cpu["supervisor"] <= 2.0,
        ),
        (
            "added p50 latency @1 conn (ms)",
            sup["p50_ms@1"] - direct["p50_ms@1"],
            f"direct {direct['p50_ms@1']:.2f}",
            None,
            "<= 3.0",
            sup["p50_ms@1"] - direct["p50_ms@1"] <= 3.0,
        ),
        (
            "req/s @32 vs direct",
            sup["rps@32"],
            f"direct {direct['rps@32']:.0f}",
            sup["rps@32"] / direct["rps@32"],
            ">= 0.9x",
            sup["rps@32"] / direct["rps@32"] >= 0.9,
        ),
        (
            "req/s @32 vs nginx",
            sup["rps@32"],
            f"nginx {nginx['rps@32']:.0f}",
            sup["rps@32"] / nginx["rps@32"],
            ">= 0.9x",
            sup["rps@32"] / nginx["rps@32"] >= 0.9,
        ),
        (
            "p99 @32 (ms)",
            sup["p99_ms@32"],
            f"direct {direct['p99_ms@32']:.1f} / nginx {nginx['p99_ms@32']:.1f}",
            sup["p99_ms@32"] / direct["p99_ms@32"],
            "-",
            None,
        ),
        (
            "RSS growth streaming 256 MiB (MiB)",
            stream["rss_peak_mib"] - stream["rss_before_mib"],
            f"{stream['bytes'] >> 20} MiB received",
            None,
            "< 32",
            stream["rss_peak_mib"] - stream["rss_before_mib"] < 32,
        ),
    ]
    return [
        {
            "figure": f,
            "value": round(v, 3),
            "anchor": a,
            "ratio": None if r is None else round(r, 3),
            "target": t,
            "met": ok,
        }
        for f, v, a, r, t, ok in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "proxy.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("nginx") is None:
        raise SystemExit("bench/proxy needs wrk and nginx: apt-get install wrk nginx-light")
    bench = Bench(args.quick)
    try:
        bench.start()
        result = bench.run()
    finally:
        bench.stop()
    rows = table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "raw": result}, indent=2))
    print(f"{'figure':38} {'value':>10} {'anchor':>26} {'ratio':>7} {'target':>8} met")
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        met = "-" if row["met"] is None else ("yes" if row["met"] else "NO")
        print(
            f"{row['figure']:38} {row['value']:>10.3f} {row['anchor']:>26} {ratio:>7} "
            f"{row['target']:>8} {met}"
        )


if __name__ == "__main__":
    main()
