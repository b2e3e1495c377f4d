from django.apps import AppConfig


class EntitlementsSiteConfig(AppConfig):
    name = "entitlements_site"
    verbose_name = "Site"
