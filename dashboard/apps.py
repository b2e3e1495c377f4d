from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """The end customer's own usage dashboard: usage, top-ups, upgrades, invoices."""

    name = "dashboard"
    verbose_name = "Customer dashboard"
