from django.apps import AppConfig


class CustomersConfig(AppConfig):
    name = "customers"
    verbose_name = "Customers"

    def ready(self) -> None:
        # catalog never imports customers, so customers listens to the catalog's entitlements.
        from django.db.models.signals import post_delete, post_save

        from catalog.models import PlanEntitlement

        from .models import EntitlementOverride, Grant

        for model in (PlanEntitlement, EntitlementOverride, Grant):
            uid = f"customers.webhooks.{model._meta.label}"
            post_save.connect(entitlement_saved, sender=model, dispatch_uid=uid + ".saved")
            post_delete.connect(entitlement_deleted, sender=model, dispatch_uid=uid + ".deleted")


def entitlement_saved(sender, instance, created=False, raw=False, **kwargs) -> None:
    """`entitlement.updated` webhooks for a saved plan entitlement, override or grant."""
    if raw:  # loaddata
        return
    from . import webhooks

    webhooks.entitlement_updated_record(
        instance=instance, action="created" if created else "updated"
    )


def entitlement_deleted(sender, instance, **kwargs) -> None:
    from . import webhooks

    webhooks.entitlement_updated_record(instance=instance, action="deleted")
