from django.apps import AppConfig


class SupervisorConfig(AppConfig):
    name = "apps.supervisor"
    label = "supervisor"
    verbose_name = "App supervisor"

    def ready(self) -> None:
        from apps.supervisor import checks  # noqa: F401 - registers the system checks
