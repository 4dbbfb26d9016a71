"""Prepare local mode for `make run`: the local environment, a superuser and the demo app."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from apps.supervisor import services
from apps.supervisor.models import Application, StartMode


class Command(BaseCommand):
    help = "Create the local environment, a supervisor superuser and a running `demo` app."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options):
        services.environment_ensure_local()
        users = get_user_model()._default_manager
        if users.filter(username=username).exists():
            self.stdout.write(
                f"Supervisor superuser '{username}' exists (password unchanged; "
                f"reset it with: manage.py changepassword {username})."
            )
        else:
            password = secrets.token_urlsafe(12)
            users.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"Supervisor superuser: {username} / {password}")
        if not Application.objects.filter(name="demo").exists():
            services.application_create(
                name="demo", title="Demo", start_mode=StartMode.WITH_SUPERVISOR
            )
        outcome = services.application_start(
            application=Application.objects.get(name="demo"), actor="make run"
        )
        if outcome.install and outcome.install.admin_password:
            self.stdout.write(
                f"Demo app superuser: {outcome.install.admin_username} / "
                f"{outcome.install.admin_password}"
            )
        for env, error in outcome.failed.items():
            self.stderr.write(f"demo@{env} failed to start: {error}")
