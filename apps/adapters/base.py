"""The three seams between modes (as in the anchor): discovery, process and command.

Only the factories in apps/adapters/__init__.py look at APP_*_ADAPTER settings; everything
else asks an adapter. Nothing outside this package branches on the mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from apps.runtime.runtime import InstallResult, Reporter
from apps.runtime.spec import AppSpec


@dataclass(frozen=True)
class DeploymentRoute:
    environment: str
    desired: str
    status: str  # the display status (derived: may be commanding or unknown)
    error: str = ""
    never_commanded: bool = False  # no start or stop was ever asked for here
    proxy_url: str = ""  # where the supervisor forwards requests for this environment


@dataclass(frozen=True)
class AppRoute:
    """What the gateway needs to route a request for one app."""

    spec: AppSpec
    start_mode: str
    deployments: tuple[DeploymentRoute, ...] = field(default_factory=tuple)

    def on(self, environment: str) -> DeploymentRoute | None:
        for deployment in self.deployments:
            if deployment.environment == environment:
                return deployment
        return None


class DiscoveryAdapter(Protocol):
    """Where app configuration, the environment registry and statuses are read from."""

    def route(self, name: str) -> AppRoute | None: ...

    def route_for_domain(self, host: str) -> AppRoute | None: ...

    def request_start(self, name: str, *, actor: str) -> None:
        """Ask the control plane to start an app (an "on first visit" app's first request)."""
        ...

    def startup(self) -> None:
        """Work a server does once when it comes up (heal interrupted starts, autostart)."""
        ...


class ProcessAdapter(Protocol):
    """Runs app commands on an environment: here (local) or by sending them (remote)."""

    def start(
        self, spec: AppSpec, *, environment: str, command_id: str, report: Reporter
    ) -> InstallResult: ...

    def stop(
        self, spec: AppSpec, *, environment: str, command_id: str, report: Reporter
    ) -> None: ...

    def remove(self, spec: AppSpec, *, environment: str, drop_database: bool) -> None: ...

    def create(self, spec: AppSpec, *, environment: str) -> None: ...

    def forget(self, name: str, *, environment: str) -> None: ...
