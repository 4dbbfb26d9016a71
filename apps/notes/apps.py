from django.apps import AppConfig


class NotesConfig(AppConfig):
    """Example tenant module: every sub-application gets its own notes."""

    name = "apps.notes"
    label = "notes"
    verbose_name = "Notes"

    def ready(self) -> None:
        from apps.notes import signals  # noqa: F401 - connects the live-update signals
