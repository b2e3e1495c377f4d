"""Everything that writes to the catalog. Each service validates (full_clean) inside a transaction
and raises django.core.exceptions.ValidationError with a message per field on bad input."""

import time
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest

from .models import CatalogVersion, Feature, Plan, PlanEntitlement, TopUpPack


def _assign(obj, fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        setattr(obj, name, value)


@transaction.atomic
def feature_create(**fields: Any) -> Feature:
    feature = Feature(**fields)
    feature.full_clean()
    feature.save()
    return feature


@transaction.atomic
def feature_update(*, feature: Feature, **fields: Any) -> Feature:
    """Updates a feature. Its key is immutable (ValidationError); its kind is too once plans use
    it, since their values were validated for that kind."""
    feature = Feature.objects.select_for_update().get(pk=feature.pk)
    _assign(feature, fields)
    if "kind" in fields and feature.plan_entitlements.exists():
        stored_kind = Feature.objects.filter(pk=feature.pk).values_list("kind", flat=True).get()
        if stored_kind != feature.kind:
            raise ValidationError(
                {"kind": "The kind of a feature that plans include cannot change."}
            )
    feature.full_clean()
    feature.save()
    return feature


@transaction.atomic
def plan_create(*, entitlements: list[dict[str, Any]] | None = None, **fields: Any) -> Plan:
    plan = Plan(**fields)
    plan.full_clean()
    plan.save()
    for values in entitlements or []:
        plan_add_entitlement(plan=plan, **values)
    return plan


@transaction.atomic
def plan_update(*, plan: Plan, **fields: Any) -> Plan:
    plan = Plan.objects.select_for_update().get(pk=plan.pk)
    _assign(plan, fields)
    plan.full_clean()
    plan.save()
    return plan


@transaction.atomic
def plan_add_entitlement(*, plan: Plan, feature: Feature, **values: Any) -> PlanEntitlement:
    """Adds a feature to a plan; applies at once to every subscriber (DESIGN.md). One entitlement
    per plan and feature: a second raises ValidationError."""
    entitlement = PlanEntitlement(plan=plan, feature=feature, **values)
    entitlement.full_clean()
    entitlement.save()
    return entitlement


@transaction.atomic
def plan_entitlement_update(*, entitlement: PlanEntitlement, **values: Any) -> PlanEntitlement:
    entitlement = PlanEntitlement.objects.select_for_update().get(pk=entitlement.pk)
    values.pop("plan", None)
    values.pop("feature", None)
    _assign(entitlement, values)
    entitlement.full_clean()
    entitlement.save()
    return entitlement


@transaction.atomic
def plan_entitlement_remove(*, entitlement: PlanEntitlement) -> None:
    entitlement.delete()


@transaction.atomic
def topup_pack_create(*, plans: list[Plan] | None = None, **fields: Any) -> TopUpPack:
    pack = TopUpPack(**fields)
    pack.full_clean()
    pack.save()
    if plans:
        pack.plans.set(plans)
    return pack


@transaction.atomic
def topup_pack_update(*, pack: TopUpPack, plans: list[Plan] | None = None, **fields) -> TopUpPack:
    pack = TopUpPack.objects.select_for_update().get(pk=pack.pk)
    _assign(pack, fields)
    pack.full_clean()
    pack.save()
    if plans is not None:
        pack.plans.set(plans)
    return pack


@transaction.atomic
def plan_set_entitlements(*, plan: Plan, entitlements: list[dict[str, Any]]) -> None:
    """Makes the plan's entitlements exactly `entitlements` (each with a `feature`): replaces
    those it has (fields not given take their defaults), adds the new ones, removes the rest.
    Applies at once to every subscriber."""
    current = {e.feature_id: e for e in plan.entitlements.select_for_update()}
    defaults = {
        f.name: f.get_default()
        for f in PlanEntitlement._meta.concrete_fields
        if f.name not in ("id", "plan", "feature") and not f.name.endswith("_currency")
    }
    wanted = set()
    for values in entitlements:
        values = {**defaults, **values}
        feature = values.pop("feature")
        wanted.add(feature.pk)
        if feature.pk in current:
            plan_entitlement_update(entitlement=current[feature.pk], **values)
        else:
            plan_add_entitlement(plan=plan, feature=feature, **values)
    for feature_id, entitlement in current.items():
        if feature_id not in wanted:
            plan_entitlement_remove(entitlement=entitlement)


def catalog_version_bump() -> None:
    """Marks every cached copy of the catalog out of date (in the caller's transaction, so
    the new version and the change become visible together)."""
    if not CatalogVersion.objects.filter(pk=1).update(version=version_next("version")):
        CatalogVersion.objects.get_or_create(pk=1, defaults={"version": _microseconds()})


def version_next(field: str) -> Greatest:
    """A version number for a cache key that is never given out twice: the next number, or
    the current microsecond if that is larger. A transaction that bumped a version and then
    rolled back may have let a process cache what it read under the new number (a read inside
    that transaction); the next change that commits must not carry that number again."""
    return Greatest(F(field) + 1, Value(_microseconds()))


def _microseconds() -> int:
    return time.time_ns() // 1000
