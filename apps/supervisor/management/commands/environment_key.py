"""manage.py environment_key NAME: the APP_ENVIRONMENT_KEYS value of environment NAME.

Run it where the master secrets are (the supervisor's APP_MESSAGE_SECRETS). It prints one key
per secret, in the same order (the first signs, all verify), comma-separated on one line:

    APP_ENVIRONMENT_KEYS=$(python manage.py environment_key env_a)

An environment holding only its own keys cannot sign as another one. Run it again after each
step of a secret rotation (workers/signing.py) and give the environment the new value.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.supervisor.validators import ENV_NAME_RE
from workers.signing import environment_keys_value


class Command(BaseCommand):
    help = (
        "Print environment NAME's message keys (APP_ENVIRONMENT_KEYS), derived from this "
        "process's APP_MESSAGE_SECRETS."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="the environment's ENVIRONMENT_NAME")

    def handle(self, *args, name: str, **options):
        if not ENV_NAME_RE.fullmatch(name):
            raise CommandError(
                f"{name!r} is not an environment name (1-48 lower-case letters, digits or _, "
                "starting with a letter)",
                returncode=2,
            )
        secrets = settings.APP_MESSAGE_SECRETS
        if not secrets:
            raise CommandError(
                "APP_MESSAGE_SECRETS is not set here: run this where the supervisor's "
                "settings are (e.g. ENV_FILE=.cluster.env)",
                returncode=2,
            )
        self.stdout.write(environment_keys_value(secrets, name))
