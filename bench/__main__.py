"""make bench: every benchmark in one run, one table (benchmarks, not tests).

    python -m bench [--quick] [--only NAME,...] [--skip NAME,...] [--set KEY=VALUE ...]

Runs each bench module in its own process, in the order below (each starts and stops the
processes it needs on free loopback ports, on its own scratch databases and queues), then
prints one table (figure, us, anchor, ratio, target, met?) and writes under bench/results/
(not committed): bench.json (every figure, raw numbers included), bench.md (the table, the
notes: EXPLAIN, profiles; the run's conditions), bench.png (latency distributions), one
<name>.json per module, and logs/ (each process's log, each module's output).

Targets are ratios and counts measured in one run on one machine; the machine may be busy
with other work, so the load average before and after each module is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    COLUMNS,
    PY,
    RESULTS,
    ROOT,
    cells,
    format_table,
    loadavg,
    row,
    say,
    setting,
)

BENCHES = {
    "commands": "command round trip: ping vs Redis floor vs bare Celery (issue #7.2)",
    "provisioning": "create -> running; install: migrate vs template (issue #7.3)",
    "admin_scale": "admin with 10,000 apps, 100,000 history rows (issue #7.4)",
    "heartbeats": "5,000 environments beating: supervisor CPU; detector EXPLAIN (issue #7.5)",
    "density": "one environment hosting 200 apps: memory, connections (issue #7.6)",
    "routing": "tenant routing vs a plain Django project (issue #7.7)",
    "proxy": "supervisor proxy vs direct vs nginx (issue #4)",
}
TIMEOUT = 40 * 60


def run_one(name: str, quick: bool, overrides: list[str]) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    path.unlink(missing_ok=True)
    output = RESULTS / "logs" / f"{name}.out"
    output.parent.mkdir(parents=True, exist_ok=True)
    say(f"== bench/{name}: {BENCHES[name]}")
    load = loadavg()
    started = time.monotonic()
    argv = [PY, "-m", f"bench.{name}", "--json", str(path), *(["--quick"] if quick else [])]
    argv += [f"--set={item}" for item in overrides]
    try:
        with open(output, "w") as out:
            code = subprocess.run(argv, cwd=ROOT, stdout=out, timeout=TIMEOUT).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    seconds = round(time.monotonic() - started, 1)
    if code == 0 and path.exists():
        say(f"== bench/{name}: done in {seconds} s")
        return json.loads(path.read_text())
    say(f"== bench/{name}: FAILED ({code}) after {seconds} s; see {output} and logs/{name}/")
    return {
        "bench": name,
        "failed": str(code),
        "seconds": seconds,
        "loadavg_before": load,
        "loadavg_after": loadavg(),
        "rows": [row(f"{name}: FAILED ({code})", "-", anchor=f"see logs/{name}", met=False)],
        "samples": {},
        "notes": [],
    }


def git_state() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    dirty = " + uncommitted changes" if git("status", "--porcelain") else ""
    return f"{git('rev-parse', '--short', 'HEAD')}{dirty}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# App Supervisor benchmarks",
        "",
        f"- run: {report['started_at']}, {'quick' if report['quick'] else 'full'}, "
        f"{report['seconds']:.0f} s, commit {report['git']}",
        f"- settings changed for this run (what-if): {report['overrides'] or 'none'}",
        f"- machine: {report['cpus']} CPUs; load average before {report['loadavg_before']}, "
        f"after {report['loadavg_after']} (shared machine: expect noise)",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    lines += [
        "| " + " | ".join(c.replace("|", "/") for c in cells(r)) + " |" for r in report["rows"]
    ]
    lines += ["", "## Modules", ""]
    for name, result in report["benches"].items():
        status = f"FAILED ({result['failed']})" if result.get("failed") else "ok"
        lines.append(
            f"- `{name}` ({BENCHES[name]}): {status}, {result['seconds']} s, load average "
            f"{result['loadavg_before']} -> {result['loadavg_after']}"
        )
    for name, result in report["benches"].items():
        for note in result.get("notes", []):
            lines += ["", f"## {name}: {note['title']}", "", "```", note["text"], "```"]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    """Latency distributions (empirical CDFs, log scale), one panel per module."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, r["samples"]) for n, r in report["benches"].items() if r.get("samples")]
    if not panels:
        return False
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3.4 * len(panels)), squeeze=False)
    for axis, (name, samples) in zip(axes[:, 0], panels, strict=True):
        for label, values in samples.items():
            if not values:
                continue
            ordered = sorted(values)
            fractions = [i / len(ordered) for i in range(len(ordered) + 1)]
            axis.step(
                [ordered[0], *ordered], fractions, where="post", label=f"{label} (n={len(values)})"
            )
        axis.set_xscale("log")
        axis.set_xlabel("milliseconds (log scale)")
        axis.set_ylabel("fraction <= x")
        axis.set_title(f"bench/{name}: {BENCHES[name]}", fontsize=10)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, shorter")
    parser.add_argument("--only", default="", help="comma-separated modules to run")
    parser.add_argument("--skip", default="", help="comma-separated modules to leave out")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=setting,
        help="a setting for every process the benches start (repeatable), e.g. "
        "DB_CONN_MAX_AGE=60: a what-if run, labelled as such in the results",
    )
    args = parser.parse_args()
    only = [n for n in args.only.split(",") if n]
    skip = [n for n in args.skip.split(",") if n]
    unknown = sorted(set(only + skip) - set(BENCHES))
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    names = [n for n in BENCHES if (not only or n in only) and n not in skip]
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": args.quick,
        "git": git_state(),
        "cpus": os.cpu_count(),
        "loadavg_before": loadavg(),
        "overrides": dict(args.set),
        "benches": {},
    }
    started = time.monotonic()
    for name in names:
        report["benches"][name] = run_one(name, args.quick, [f"{k}={v}" for k, v in args.set])
    report["seconds"] = round(time.monotonic() - started, 1)
    report["loadavg_after"] = loadavg()
    report["rows"] = [r for result in report["benches"].values() for r in result["rows"]]
    (RESULTS / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    (RESULTS / "bench.md").write_text(markdown(report))
    plotted = plot(report, RESULTS / "bench.png")
    print(format_table(report["rows"]))
    for name, result in report["benches"].items():
        for note in result.get("notes", []):
            print(f"\n{name}: {note['title']}\n{note['text']}")
    written = ["bench.json", "bench.md", *(["bench.png"] if plotted else [])]
    if args.set:
        print(f"\nWHAT-IF RUN, settings changed: {dict(args.set)}")
    print(
        f"\n{len(names)} modules in {report['seconds']:.0f} s "
        f"({'quick' if args.quick else 'full'}); load average {report['loadavg_before']} -> "
        f"{report['loadavg_after']}; written: " + ", ".join(f"bench/results/{w}" for w in written)
    )
    return 1 if any(r.get("failed") for r in report["benches"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
