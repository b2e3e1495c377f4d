from django.apps import AppConfig


class EntitlementsSiteConfig(AppConfig):
    name = "entitlements_site"
    verbose_name = "Site"

    def ready(self) -> None:
        from . import stored_values  # noqa: F401 (registers its database check)
