"""Create the supervisor superuser of `make cluster` (prints a generated password once)."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a supervisor superuser `admin` with a generated password unless one exists."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options):
        users = get_user_model()._default_manager
        if users.filter(username=username).exists():
            self.stdout.write(f"superuser {username} exists; reset: manage.py changepassword")
            return
        password = secrets.token_urlsafe(12)
        users.create_superuser(username=username, email="", password=password)
        self.stdout.write(f"superuser {username} / {password}")
