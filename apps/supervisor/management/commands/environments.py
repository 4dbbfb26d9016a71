"""python manage.py environments list"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.supervisor import selectors, services
from apps.supervisor.management.commands._output import emit, fail


class Command(BaseCommand):
    help = "Registered environments and their liveness."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = sub.add_parser("list", help="list environments")
        listing.add_argument("--json", action="store_true")
        purge = sub.add_parser("purge", help="forget offline environments not seen for a while")
        purge.add_argument(
            "--older-than",
            type=int,
            default=None,
            metavar="SECONDS",
            help="default: ENVIRONMENT_PURGE_AFTER",
        )
        purge.add_argument("--json", action="store_true")

    def handle(self, *args, action: str, json: bool, **options):
        if action == "purge":
            older = options["older_than"]
            older = settings.ENVIRONMENT_PURGE_AFTER if older is None else older
            if older <= 0:
                raise fail("--older-than must be a positive number of seconds")
            purged = services.environments_purge(older_than=older)
            emit(self, [{"name": n, "purged": True} for n in purged], ["name", "purged"], json)
            return
        rows = [
            {
                "name": e.name,
                "status": selectors.environment_state(e),
                "url": e.url,
                "proxy_url": e.proxy_url,
                "version": e.version,
                "last_heartbeat_at": e.last_heartbeat_at.isoformat()
                if e.last_heartbeat_at
                else None,
            }
            for e in selectors.environment_list()
        ]
        emit(self, rows, ["name", "status", "version", "url", "last_heartbeat_at"], json)
