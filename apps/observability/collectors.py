"""Gauges read from the database at scrape time (nothing to keep in step between processes).

Supervisor (and local mode): apps by environment and display status, environments by
liveness. Environment: the apps it hosts, by status. A database that cannot be read makes
`appsupervisor_collector_up{collector=...}` 0 instead of failing the whole scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily, Metric

import supervisor_project
from apps.observability.metrics import PREFIX

log = logging.getLogger("apps.observability")


def _up(collector: str, ok: bool) -> GaugeMetricFamily:
    up = GaugeMetricFamily(
        f"{PREFIX}_collector_up",
        "1 when the collector could read its database at this scrape, else 0.",
        labels=["collector"],
    )
    up.add_metric([collector], 1.0 if ok else 0.0)
    return up


def _info() -> GaugeMetricFamily:
    info = GaugeMetricFamily(
        f"{PREFIX}_info",
        "This process: its mode, version and environment name (value 1).",
        labels=["mode", "version", "environment"],
    )
    info.add_metric(
        [settings.APP_MODE, supervisor_project.__version__, settings.ENVIRONMENT_NAME], 1.0
    )
    return info


class SupervisorCollector:
    """Deployments by (environment, display status) and environments by liveness."""

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}_apps", "", labels=["environment", "status"])
        yield GaugeMetricFamily(f"{PREFIX}_environments", "", labels=["state"])
        yield _up("supervisor", True)
        yield _info()

    def collect(self) -> Iterator[Metric]:
        from apps.supervisor.selectors import status_counts

        try:
            apps, environments = status_counts()
        except Exception:
            log.exception("metrics: could not read the supervisor database")
            yield _up("supervisor", False)
            yield _info()
            return
        gauge = GaugeMetricFamily(
            f"{PREFIX}_apps",
            "Apps on each environment by the status an operator sees (commanding and "
            "unknown are derived).",
            labels=["environment", "status"],
        )
        for (environment, status), count in sorted(apps.items()):
            gauge.add_metric([environment, status], count)
        yield gauge
        envs = GaugeMetricFamily(
            f"{PREFIX}_environments",
            "Environments by liveness (online, stale, offline; judged by heartbeat age).",
            labels=["state"],
        )
        for state, count in sorted(environments.items()):
            envs.add_metric([state], count)
        yield envs
        yield _up("supervisor", True)
        yield _info()


class EnvironmentCollector:
    """What this environment hosts, by status (its own database: never the supervisor's)."""

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(f"{PREFIX}_hosted_apps", "", labels=["environment", "status"])
        yield _up("environment", True)
        yield _info()

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self.counts()
        except Exception:
            log.exception("metrics: could not read this environment's database")
            yield _up("environment", False)
            yield _info()
            return
        gauge = GaugeMetricFamily(
            f"{PREFIX}_hosted_apps",
            "Apps this environment hosts, by their status here.",
            labels=["environment", "status"],
        )
        for status, count in sorted(counts.items()):
            gauge.add_metric([settings.ENVIRONMENT_NAME, status], count)
        yield gauge
        yield _up("environment", True)
        yield _info()

    @staticmethod
    def counts() -> dict[str, int]:
        from apps.runtime.models import HostedApp
        from workers.messages import STATUSES

        counts = dict.fromkeys(STATUSES, 0)
        for row in HostedApp.objects.order_by().values("status").annotate(n=Count("id")):
            counts[row["status"]] = counts.get(row["status"], 0) + row["n"]
        return counts


def mode_collectors() -> list[object]:
    """The database gauges of this process's role."""
    if settings.APP_MODE == "worker":
        return [EnvironmentCollector()]
    return [SupervisorCollector()]
