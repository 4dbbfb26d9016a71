"""Celery: the command transport of multi-environment mode (configured from CELERY_*)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supervisor_project.settings")

app = Celery("supervisor_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
