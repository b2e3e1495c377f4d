from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "catalog"
    verbose_name = "Catalog"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from .models import Feature, Plan, PlanEntitlement, PlanVersion

        # Caches of the catalog (the engine's) are keyed on its version: any change bumps it
        # (a plan version's publishing too).
        for model in (Feature, Plan, PlanVersion, PlanEntitlement):
            uid = f"catalog.version.{model._meta.label}"
            post_save.connect(catalog_changed, sender=model, dispatch_uid=uid + ".saved")
            post_delete.connect(catalog_changed, sender=model, dispatch_uid=uid + ".deleted")


def catalog_changed(sender, **kwargs) -> None:
    from .services import catalog_version_bump

    catalog_version_bump()
