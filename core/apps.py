from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "API keys"

    def ready(self) -> None:
        from . import postgres, stored_values  # noqa: F401 (stored_values: its database check)

        postgres.connect()
