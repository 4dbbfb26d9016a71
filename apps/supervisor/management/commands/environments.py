"""python manage.py environments list"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from apps.supervisor import selectors
from apps.supervisor.management.commands._output import emit


class Command(BaseCommand):
    help = "Registered environments and their liveness."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        listing = sub.add_parser("list", help="list environments")
        listing.add_argument("--json", action="store_true")

    def handle(self, *args, action: str, json: bool, **options):
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
