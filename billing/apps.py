from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self) -> None:
        # Paying an invoice records its receipt; the send task joins the emails' outbox.
        from . import tasks  # noqa: F401
