"""The observability settings are checked like every other: a bad value stops start-up with
one line and a stable id (`manage.py check` in a real subprocess, clean environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_OURS = ("OBSERVABILITY_PUBLIC", "METRICS_TOKEN", "METRICS_DIR", "READYZ_TIMEOUT", "LOG_FORMAT")


def check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DB_", "APP_", "ENVIRONMENT_", "HEARTBEAT_", "LOG_"))
        and k not in _OURS
    }
    clean.update(
        DJANGO_SETTINGS_MODULE="supervisor_project.settings",
        DB_DIALECT="sqlite",
        STORAGE_DIR=str(tmp_path / "storage"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_good_values_pass(tmp_path):
    result = check(
        tmp_path,
        METRICS_TOKEN="k" * 32,
        OBSERVABILITY_PUBLIC="false",
        LOG_FORMAT="json",
        READYZ_TIMEOUT="2.5",
        METRICS_DIR=str(tmp_path / "metrics"),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "metrics").is_dir()


@pytest.mark.parametrize(
    ("variable", "raw", "check_id", "words"),
    [
        ("METRICS_TOKEN", "short", "supervisor.E013", "at least 32 characters"),
        ("METRICS_TOKEN", "k" * 31 + " x", "supervisor.E013", "without spaces"),
        ("METRICS_TOKEN", "k" * 32 + "é", "supervisor.E013", "printable ASCII"),
        ("OBSERVABILITY_PUBLIC", "maybe", "supervisor.E006", "not a boolean"),
        ("LOG_FORMAT", "xml", "supervisor.E006", "not one of json, text"),
        ("READYZ_TIMEOUT", "30", "supervisor.E006", "outside"),
        ("READYZ_TIMEOUT", "0.5", "supervisor.E006", "outside 1.0..10"),
    ],
)
def test_a_bad_value_stops_start_up_with_its_id(tmp_path, variable, raw, check_id, words):
    result = check(tmp_path, **{variable: raw})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if f"({check_id})" in line]
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and words in lines[0]


def test_a_metrics_dir_that_cannot_be_a_directory_stops_start_up(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = check(tmp_path, METRICS_DIR=str(blocker / "metrics"))
    assert result.returncode != 0
    assert "(supervisor.E013) METRICS_DIR=" in result.stderr
    assert "cannot be created" in result.stderr
