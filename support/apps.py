from django.apps import AppConfig


class SupportConfig(AppConfig):
    """Pages for support agents: customer lookup and the actions support takes."""

    name = "support"
    verbose_name = "Support pages"
