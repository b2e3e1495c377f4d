from django.apps import AppConfig


class EntitlementsSiteConfig(AppConfig):
    """The site: settings, URLs, the Celery app, auth pages and the demo data command."""

    name = "entitlements_site"
    verbose_name = "Site"
