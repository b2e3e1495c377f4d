from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "API keys"

    def ready(self) -> None:
        from . import stored_values  # noqa: F401 (registers its database check)
