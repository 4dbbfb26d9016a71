"""Local adapters: the control plane and the runtime in this process (APP_MODE=local)."""

from __future__ import annotations

import contextvars
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from apps.adapters.base import AppRoute
from apps.runtime import runtime
from apps.runtime.runtime import InstallResult, Reporter
from apps.runtime.spec import AppSpec

log = logging.getLogger(__name__)


class LocalDiscoveryAdapter:
    """Reads the control plane's own database."""

    def route(self, name: str) -> AppRoute | None:
        from apps.supervisor import selectors

        return selectors.application_route(name=name)

    def route_for_domain(self, host: str) -> AppRoute | None:
        from apps.supervisor import selectors

        return selectors.application_route(custom_domain=host)

    def request_start(self, name: str, *, actor: str) -> None:
        from apps.supervisor import services

        services.application_start_by_name(name=name, actor=actor, wait=False)

    def startup(self) -> None:
        from apps.supervisor import services

        runtime.InitialPassword.prepare()  # this process installs apps: passwords ready
        services.supervisor_startup()

    def publish(self, name: str, config: dict | None) -> None:
        """Local mode keeps no config cache: this process reads the database itself."""

    def publish_many(self, configs: dict[str, dict]) -> None:
        """Nothing to write in local mode."""


class LocalProcessAdapter:
    """Runs the runtime in this process."""

    def start(
        self, spec: AppSpec, *, environment: str, command_id: str, report: Reporter
    ) -> InstallResult:
        result = runtime.start(spec, report, report_running=False)
        report("running", "serving", credentials=result.credentials)
        return result

    def stop(self, spec: AppSpec, *, environment: str, command_id: str, report: Reporter) -> None:
        runtime.stop(spec.name)
        report("stopped", "stopped")

    def remove(self, spec: AppSpec, *, environment: str, drop_database: bool) -> None:
        runtime.remove(spec, drop_database=drop_database)

    def forget(self, name: str, *, environment: str) -> None:
        runtime.stop(name)

    def create(self, spec: AppSpec, *, environment: str) -> None:
        """Nothing to prepare in-process: the first start provisions."""


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def background(fn, /, *args, **kwargs) -> None:
    """Run fn off the request thread (ASGI runs all sync views on one thread)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="app-commands")
    # In the caller's context: the log fields it bound (command id, app) go along.
    context = contextvars.copy_context()
    future = _executor.submit(context.run, _closing_connections, fn, *args, **kwargs)
    future.add_done_callback(_log_failure)


def _closing_connections(fn, /, *args, **kwargs):
    """An idle pool thread must not hold database connections (nor block a DROP DATABASE)."""
    from django.db import connections

    try:
        return fn(*args, **kwargs)
    finally:
        connections.close_all()


def _log_failure(future) -> None:
    if (exc := future.exception()) is not None:
        log.error("background app command failed: %s", exc, exc_info=exc)
