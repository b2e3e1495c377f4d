from django.apps import AppConfig


class CustomersConfig(AppConfig):
    name = "customers"
    verbose_name = "Customers"

    def ready(self) -> None:
        # Usage transactions record threshold notifications; the send tasks join their outboxes.
        from . import checks, notifications, tasks  # noqa: F401 (checks: registers its own)
        from .engine import ledger

        ledger.on_usage_recorded(notifications.thresholds_record)

        # catalog never imports customers, so customers listens to the catalog's entitlements.
        from django.db.models.signals import post_delete, post_save, pre_save

        from catalog.models import Feature, Plan, PlanEntitlement, PlanVersion

        from .models import Customer, EntitlementOverride, Grant, Subscription

        for model in (PlanEntitlement, EntitlementOverride, Grant):
            uid = f"customers.webhooks.{model._meta.label}"
            post_save.connect(entitlement_saved, sender=model, dispatch_uid=uid + ".saved")
            post_delete.connect(entitlement_deleted, sender=model, dispatch_uid=uid + ".deleted")

        # The engine caches a customer's subscription and overrides per process, keyed on the
        # customer's state version: any change to them bumps it.
        for model in (Customer, Subscription, EntitlementOverride):
            uid = f"customers.state.{model._meta.label}"
            post_save.connect(customer_state_changed, sender=model, dispatch_uid=uid + ".saved")
            post_delete.connect(customer_state_changed, sender=model, dispatch_uid=uid + ".del")

        # Usage counters are kept for the window kinds in use: a kind comes into use before
        # whatever uses it is saved, in the same transaction (usage.counted_windows_ensure).
        for model in (PlanEntitlement, EntitlementOverride):
            uid = f"customers.counted.{model._meta.label}"
            pre_save.connect(entitlement_counting, sender=model, dispatch_uid=uid)
        uid = "customers.counted.feature"
        pre_save.connect(feature_counting, sender=Feature, dispatch_uid=uid + ".before")
        post_save.connect(feature_created_counting, sender=Feature, dispatch_uid=uid + ".after")

        # The engine's PostgreSQL functions follow the code: (re)created after every migrate.
        from django.db.models.signals import post_migrate

        post_migrate.connect(functions_create, sender=self, dispatch_uid="customers.functions")

        # The catalog's plan versions reach subscribers through this port (catalog never
        # imports customers).
        from catalog.subscribers import provide

        from .plan_subscribers import PlanSubscribers

        provide(PlanSubscribers())

        # The usage snapshots mirrored in Redis hold grants and the catalog's version.
        uid = "customers.snapshots.grant"
        post_save.connect(grant_changed, sender=Grant, dispatch_uid=uid + ".saved")
        post_delete.connect(grant_changed, sender=Grant, dispatch_uid=uid + ".del")
        for model in (Feature, Plan, PlanVersion, PlanEntitlement):
            uid = f"customers.snapshots.{model._meta.label}"
            post_save.connect(catalog_changed, sender=model, dispatch_uid=uid + ".saved")
            post_delete.connect(catalog_changed, sender=model, dispatch_uid=uid + ".del")


def functions_create(sender, using="default", **kwargs) -> None:
    from django.db import connections

    from .engine.sql import postgresql

    if connections[using].vendor == "postgresql":
        postgresql.functions_create(connections[using])


def _in_a_draft(instance) -> bool:
    """A draft version's entitlement applies to nobody: no webhook until it is published."""
    from catalog.models import PlanVersion, VersionStatus

    version_id = getattr(instance, "version_id", None)
    draft = VersionStatus.DRAFT
    return bool(version_id) and PlanVersion.objects.filter(pk=version_id, status=draft).exists()


def entitlement_saved(sender, instance, created=False, raw=False, **kwargs) -> None:
    """`entitlement.updated` webhooks for a saved plan entitlement, override or grant."""
    if raw or _in_a_draft(instance):  # loaddata; a draft
        return
    from . import webhooks

    webhooks.entitlement_updated_record(
        instance=instance, action="created" if created else "updated"
    )


def entitlement_deleted(sender, instance, **kwargs) -> None:
    if _in_a_draft(instance):
        return
    from . import webhooks

    webhooks.entitlement_updated_record(instance=instance, action="deleted")


def customer_state_changed(sender, instance, raw=False, **kwargs) -> None:
    if raw:
        return
    from .services import customer_version_bump

    customer_version_bump(
        instance.pk if sender._meta.model_name == "customer" else instance.customer_id
    )


def entitlement_counting(sender, instance, **kwargs) -> None:
    """A plan entitlement or override about to be saved: its reset kind is counted first."""
    from catalog.models import Feature, FeatureKind

    from .usage import counted_windows_ensure

    feature = Feature.objects.filter(pk=instance.feature_id).first()
    if feature is not None and feature.kind == FeatureKind.METERED:
        counted_windows_ensure(feature=feature, kinds=[instance.reset])


def feature_created_counting(sender, instance, created=False, **kwargs) -> None:
    if created:
        feature_counting(sender, instance, created=True)


def feature_counting(sender, instance, created=False, **kwargs) -> None:
    """A feature about to be saved (or just created): a `latest` one counts its lifetime
    window (its level's fallback), and one becoming metered every kind its entitlements use."""
    from catalog.models import Aggregation, Feature, FeatureKind, PlanEntitlement, Reset

    if instance.kind != FeatureKind.METERED:
        return
    if not created and not Feature.objects.filter(pk=instance.pk).exists():
        return  # about to be created (with its id given): done once it exists

    from .models import EntitlementOverride
    from .usage import counted_windows_ensure

    kinds = set()
    if instance.aggregation == Aggregation.LATEST:
        kinds.add(Reset.NEVER)
    if not created:
        for model in (PlanEntitlement, EntitlementOverride):
            kinds |= set(model.objects.filter(feature=instance).values_list("reset", flat=True))
    counted_windows_ensure(feature=instance, kinds=kinds)


def grant_changed(sender, instance, raw=False, **kwargs) -> None:
    if raw:
        return
    from . import snapshots

    snapshots.changed([instance.customer_id])


def catalog_changed(sender, raw=False, **kwargs) -> None:
    if raw:
        return
    from . import snapshots

    snapshots.changed(None)
