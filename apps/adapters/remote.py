"""Remote adapters: the supervisor sends commands and writes the config cache; an
environment reads the cache and its own hosting record (APP_MODE=supervisor | worker)."""

from __future__ import annotations

import logging
import time
import uuid

from django.conf import settings

from apps.adapters import transport
from apps.adapters.base import AppRoute, DeploymentRoute
from apps.adapters.local import LocalDiscoveryAdapter
from apps.runtime.runtime import AppRuntimeError, Reporter
from apps.runtime.spec import AppSpec
from workers import messages

log = logging.getLogger(__name__)


class SupervisorDiscoveryAdapter(LocalDiscoveryAdapter):
    """The supervisor reads its own database and keeps the config cache written."""

    def startup(self) -> None:
        from apps.supervisor import services

        try:
            services.config_cache_refresh()
        except Exception as exc:  # Redis down at start: the periodic refresh catches up
            log.warning("could not fill the config cache at start-up: %s", exc)

    def publish(self, name: str, config: dict | None) -> None:
        try:
            if config is None:
                transport.config_delete(name)
            else:
                transport.config_write(name, config)
        except Exception as exc:  # the periodic refresh rewrites it
            log.warning("config cache write for %s failed: %s", name, exc)

    def publish_many(self, configs: dict[str, dict]) -> None:
        transport.config_write_many(configs)


class RemoteProcessAdapter:
    """Sends commands to an environment's queue; its reports come back as messages."""

    def _send(
        self, action: str, app: str, environment: str, command_id: str, drop_database: bool = False
    ) -> None:
        message = {
            "v": messages.VERSION,
            "type": "command",
            "id": command_id,
            "app": app,
            "env": environment,
            "action": action,
            "drop_database": drop_database,
            "sent_at": time.time(),
        }
        messages.decode(message)  # never send what the other side would refuse
        try:
            transport.publish(
                "workers.tasks.env_command", message, to=transport.env_queue(environment)
            )
        except Exception as exc:
            raise AppRuntimeError(f"could not send {action} to {environment}: {exc}") from exc

    def start(self, spec: AppSpec, *, environment: str, command_id: str, report: Reporter):
        self._send("start", spec.name, environment, command_id)
        return None  # the outcome arrives as reports

    def stop(self, spec: AppSpec, *, environment: str, command_id: str, report: Reporter) -> None:
        self._send("stop", spec.name, environment, command_id)

    def remove(self, spec: AppSpec, *, environment: str, drop_database: bool) -> None:
        self._send("remove", spec.name, environment, str(uuid.uuid4()), drop_database)

    def create(self, spec: AppSpec, *, environment: str) -> None:
        """Let the environment know the app (it can then route a first visit to a start)."""
        self._send("create", spec.name, environment, str(uuid.uuid4()))

    def forget(self, name: str, *, environment: str) -> None:
        self._send("remove", name, environment, str(uuid.uuid4()))

    def ping(self, environment: str) -> str:
        command_id = str(uuid.uuid4())
        self._send("ping", "", environment, command_id)
        return command_id


class EnvironmentDiscoveryAdapter:
    """An environment routes by what it hosts (its own database), and asks the supervisor
    to start an app it does not host yet but that the config cache places here."""

    def route(self, name: str) -> AppRoute | None:
        from apps.runtime.models import HostedApp

        hosted = HostedApp.objects.filter(name=name).first()
        if hosted is not None:
            return AppRoute(
                spec=AppSpec.from_dict(hosted.spec),
                start_mode=hosted.start_mode,
                deployments=(
                    DeploymentRoute(
                        environment=settings.ENVIRONMENT_NAME,
                        desired=hosted.desired,
                        status=hosted.status,
                        error=hosted.detail if hosted.status == "error" else "",
                        never_commanded=not hosted.command_id,
                    ),
                ),
            )
        try:
            config = transport.config_read(name)
        except Exception:
            return None
        if not config or settings.ENVIRONMENT_NAME not in config.get("environments", []):
            return None
        return AppRoute(
            spec=AppSpec.from_dict(config["spec"]),
            start_mode=config.get("start_mode", "on_first_visit"),
            deployments=(
                DeploymentRoute(
                    environment=settings.ENVIRONMENT_NAME,
                    desired="stopped",
                    status="stopped",
                    never_commanded=True,
                ),
            ),
        )

    def route_for_domain(self, host: str) -> AppRoute | None:
        return None

    def request_start(self, name: str, *, actor: str) -> None:
        from workers.tasks import send_to_supervisor

        send_to_supervisor({"env": settings.ENVIRONMENT_NAME, "app": name}, kind="start_request")

    def startup(self) -> None:
        """Nothing: run_environment registers and beats."""

    def publish(self, name: str, config: dict | None) -> None:
        raise AppRuntimeError("an environment does not write the config cache")

    def publish_many(self, configs: dict[str, dict]) -> None:
        raise AppRuntimeError("an environment does not write the config cache")
