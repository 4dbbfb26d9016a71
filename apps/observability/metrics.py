"""Prometheus metrics: what other code records, and what /metrics exposes.

Recording (cheap: a dictionary lookup and a write to a memory-mapped file; never raises):

    command_finished(action, result, seconds)  a command's answer arrived (or it expired)
    proxy_request(status, seconds)             the supervisor's proxy answered a request
    message_rejected(reason)                   a queue message was refused (workers.messages)

Labels are short tokens ([a-z0-9_.-], at most 40 characters): anything else is counted as
"other", so a bad caller cannot grow the number of series without bound.

Counters and histograms are shared by the processes of one role through prometheus_client's
multiprocess mode (see multiprocess.py for the files and their clean-up). Gauges of apps,
hosted apps and environments are read from the database at scrape time (collectors.py).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from apps.observability.multiprocess import Store

log = logging.getLogger("apps.observability")

PREFIX = "appsupervisor"
_LABEL = re.compile(r"^[a-z0-9_.-]{1,40}$")
_CACHE_LIMIT = 1000

# Commands take from milliseconds (stop, ping) to minutes (install of a big app).
COMMAND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
PROXY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def label(value: object) -> str:
    text = str(value).strip().lower()
    return text if _LABEL.fullmatch(text) else "other"


class _Instruments:
    def __init__(self) -> None:
        # registry=None: these are read back from the files, never from a process registry.
        self.commands = Counter(
            f"{PREFIX}_commands",
            "Commands finished, by action and result (ok, error, timeout, ...).",
            ["action", "result"],
            registry=None,
        )
        self.command_seconds = Histogram(
            f"{PREFIX}_command_duration_seconds",
            "Time from sending a command to its final answer, by action and result.",
            ["action", "result"],
            buckets=COMMAND_BUCKETS,
            registry=None,
        )
        self.proxy_requests = Counter(
            f"{PREFIX}_proxy_requests",
            "Requests the supervisor's proxy answered, by HTTP status.",
            ["status"],
            registry=None,
        )
        self.proxy_seconds = Histogram(
            f"{PREFIX}_proxy_request_duration_seconds",
            "Time the supervisor's proxy took to answer (until the response started).",
            buckets=PROXY_BUCKETS,
            registry=None,
        )
        self.proxy_resent = Counter(
            f"{PREFIX}_proxy_resent",
            "Body-less GET/HEAD/OPTIONS the proxy sent again because a kept connection to an "
            "environment closed before answering.",
            registry=None,
        )
        self.messages_rejected = Counter(
            f"{PREFIX}_messages_rejected",
            "Queue messages refused as malformed or misrouted, by reason.",
            ["reason"],
            registry=None,
        )
        # Label children by their raw arguments: the hot path skips labels() and its lock.
        self.command_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.proxy_children: dict[int, Any] = {}
        self.rejected_children: dict[str, Any] = {}


_lock = threading.Lock()
_store: Store | None = None
_instruments: _Instruments | None = None
_failures_logged: set[str] = set()


def store() -> Store | None:
    """This process's place in the metrics directory (None if it could not be set up)."""
    _get()
    return _store


def _get() -> _Instruments:
    instruments = _instruments
    if instruments is None:
        instruments = _setup()
    return instruments


def _setup() -> _Instruments:
    global _store, _instruments
    with _lock:
        if _instruments is not None:
            return _instruments
        candidate = Store(settings.METRICS_DIR)
        try:
            candidate.start()
        except OSError as exc:
            # The system check supervisor.E013 stops start-up when METRICS_DIR is not
            # writable; getting here means it changed since. Count in this process only.
            log.error(
                "metrics directory %s unusable (%s): counting in-process", candidate.directory, exc
            )
            # Not the class prometheus_client chose at import: an inherited
            # PROMETHEUS_MULTIPROC_DIR would make it write files named by bare pids.
            values.ValueClass = values.MutexValue
        else:
            _store = candidate
            # Chosen before any metric exists: every value of this process is file-backed.
            values.ValueClass = values.MultiProcessValue(candidate.identifier)
        _instruments = _Instruments()
        return _instruments


def _failed(where: str) -> None:
    if where not in _failures_logged:
        _failures_logged.add(where)
        log.exception("recording metric %s failed (logged once)", where)


def command_finished(action: str, result: str, seconds: float) -> None:
    """A command got its final answer (`result`: ok, error, timeout, ...) after `seconds`."""
    try:
        m = _get()
        pair = m.command_children.get((action, result))
        if pair is None:
            labels = (label(action), label(result))
            pair = (m.commands.labels(*labels), m.command_seconds.labels(*labels))
            if len(m.command_children) < _CACHE_LIMIT:
                m.command_children[(action, result)] = pair
        pair[0].inc()
        pair[1].observe(max(0.0, float(seconds)))
    except Exception:
        _failed("command_finished")


def proxy_request(status: int, seconds: float) -> None:
    """The proxy answered one request with HTTP `status` after `seconds`."""
    try:
        m = _get()
        child = m.proxy_children.get(status)
        if child is None:
            child = m.proxy_requests.labels(label(int(status)))
            if len(m.proxy_children) < _CACHE_LIMIT:
                m.proxy_children[status] = child
        child.inc()
        m.proxy_seconds.observe(max(0.0, float(seconds)))
    except Exception:
        _failed("proxy_request")


def proxy_resent() -> None:
    """The proxy sent a request again on a new connection (see gateway.upstream)."""
    try:
        _get().proxy_resent.inc()
    except Exception:
        _failed("proxy_resent")


def message_rejected(reason: str) -> None:
    """A queue message was refused; `reason` is a short token such as "bad_version"."""
    try:
        m = _get()
        child = m.rejected_children.get(reason)
        if child is None:
            child = m.messages_rejected.labels(label(reason))
            if len(m.rejected_children) < _CACHE_LIMIT:
                m.rejected_children[reason] = child
        child.inc()
    except Exception:
        _failed("message_rejected")


def scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: every process's counters, the database gauges, this
    process's own process metrics."""
    from apps.observability.collectors import mode_collectors

    _get()
    registry = CollectorRegistry()
    if _store is not None:
        registry.register(_store.collector())
    else:  # counting in-process (see _setup): expose what this process has
        for metric in (
            _instruments.commands,
            _instruments.command_seconds,
            _instruments.proxy_requests,
            _instruments.proxy_seconds,
            _instruments.proxy_resent,
            _instruments.messages_rejected,
        ):
            registry.register(metric)
    for collector in mode_collectors():
        registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
