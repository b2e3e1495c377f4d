"""Everything that writes to the catalog. Each service validates (full_clean) inside a transaction
and raises django.core.exceptions.ValidationError with a message per field on bad input."""

import time
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Max, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from core.errors import Conflict, InvalidInput

from . import selectors
from .models import (
    ENTITLEMENT_VALUE_NAMES,
    CatalogVersion,
    Feature,
    Plan,
    PlanEntitlement,
    PlanStatus,
    PlanVersion,
    TopUpPack,
    VersionStatus,
)
from .subscribers import subscribers


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
    """Creates a plan with its version 1 (published, at the plan's price) holding
    `entitlements`."""
    plan = Plan(**fields)
    plan.full_clean()
    plan.save()
    plan_current_version_sync(plan=plan)
    for values in entitlements or []:
        plan_add_entitlement(plan=plan, **values)
    return plan


@transaction.atomic
def plan_update(*, plan: Plan, **fields: Any) -> Plan:
    """Updates a plan in place. A new price is its published version's price too: every
    subscriber on that version pays it from their next period (DESIGN.md "Catalog")."""
    plan = Plan.objects.select_for_update().get(pk=plan.pk)
    _assign(plan, fields)
    plan.full_clean()
    plan.save()
    plan_current_version_sync(plan=plan)
    return plan


@transaction.atomic
def plan_current_version_sync(*, plan: Plan) -> PlanVersion:
    """Gives a plan that has no version yet its version 1, published, and the published
    version the plan's price (the plan's own price is what new subscribers pay). The services
    above call it; so does the admin, which saves a plan as a form."""
    version = selectors.plan_version_current(plan=plan)
    if version is None:
        version = PlanVersion(
            plan=plan,
            number=1,
            status=VersionStatus.PUBLISHED,
            price=plan.price,
            published_at=timezone.now(),
        )
    elif version.price == plan.price:
        return version
    version.price = plan.price
    version.full_clean()
    version.save()
    return version


def _editable(version: PlanVersion) -> None:
    """A superseded version is what grandfathered subscribers were promised: it never changes.
    The published one may be edited in place (applies at once), a draft freely."""
    if version.status == VersionStatus.SUPERSEDED:
        raise Conflict(
            f"Version {version.number} of {version.plan.key!r} is superseded; its subscribers "
            "keep it as it is.",
            code="version_not_draft",
        )


@transaction.atomic
def plan_add_entitlement(
    *, plan: Plan, feature: Feature, version: PlanVersion | None = None, **values: Any
) -> PlanEntitlement:
    """Adds a feature to a version of a plan (default: the published one, which applies at once
    to its subscribers). One entitlement per version and feature: a second raises
    ValidationError; a superseded version raises Conflict."""
    version = version or selectors.plan_version_current(plan=plan)
    if version is None:
        version = plan_current_version_sync(plan=plan)
    _editable(version)
    entitlement = PlanEntitlement(plan=plan, version=version, feature=feature, **values)
    entitlement.full_clean()
    entitlement.save()
    return entitlement


@transaction.atomic
def plan_entitlement_update(*, entitlement: PlanEntitlement, **values: Any) -> PlanEntitlement:
    """Changes one entitlement of a draft or of the published version (at once for its
    subscribers); a superseded version raises Conflict."""
    entitlement = (
        PlanEntitlement.objects.select_for_update()
        .select_related("version__plan")
        .get(pk=entitlement.pk)
    )
    _editable(entitlement.version)
    values.pop("plan", None)
    values.pop("version", None)
    values.pop("feature", None)
    _assign(entitlement, values)
    entitlement.full_clean()
    entitlement.save()
    return entitlement


@transaction.atomic
def plan_entitlement_remove(*, entitlement: PlanEntitlement) -> None:
    _editable(entitlement.version)
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
def plan_set_entitlements(
    *, plan: Plan, entitlements: list[dict[str, Any]], version: PlanVersion | None = None
) -> None:
    """Makes the entitlements of a version of the plan (default: the published one, at once
    for its subscribers) exactly `entitlements` (each with a `feature`): replaces those it has
    (fields not given take their defaults), adds the new ones, removes the rest."""
    version = version or selectors.plan_version_current(plan=plan)
    _editable(version)
    current = {e.feature_id: e for e in version.entitlements.select_for_update()}
    defaults = {
        f.name: f.get_default()
        for f in PlanEntitlement._meta.concrete_fields
        if f.name not in ("id", "plan", "version", "feature") and not f.name.endswith("_currency")
    }
    wanted = set()
    for values in entitlements:
        values = {**defaults, **values}
        feature = values.pop("feature")
        wanted.add(feature.pk)
        if feature.pk in current:
            plan_entitlement_update(entitlement=current[feature.pk], **values)
        else:
            plan_add_entitlement(plan=plan, version=version, feature=feature, **values)
    for feature_id, entitlement in current.items():
        if feature_id not in wanted:
            plan_entitlement_remove(entitlement=entitlement)


# --- plan versions (DESIGN.md "Plan versions") ------------------------------------------------

EXISTING_KEEP = "keep"
EXISTING_MIGRATE = "migrate"


def _entitlements_copy(source: PlanVersion, target: PlanVersion) -> None:
    for row in source.entitlements.select_related("feature").order_by("pk"):
        values = {name: getattr(row, name) for name in ENTITLEMENT_VALUE_NAMES}
        plan_add_entitlement(plan=target.plan, version=target, feature=row.feature, **values)


@transaction.atomic
def plan_version_draft_create(*, plan: Plan) -> PlanVersion:
    """A draft copy of the published version (price and entitlements), numbered after the
    last. Locks the plan row, so two requests cannot both make one; a second draft raises
    Conflict `draft_exists`."""
    plan = Plan.objects.select_for_update().get(pk=plan.pk)
    current = selectors.plan_version_current(plan=plan) or plan_current_version_sync(plan=plan)
    draft = selectors.plan_version_draft(plan=plan)
    if draft is not None:
        raise Conflict(
            f"{plan.key!r} already has a draft: version {draft.number}.",
            code="draft_exists",
            details={"version": draft.number},
        )
    last = plan.versions.aggregate(n=Max("number"))["n"] or 0
    draft = PlanVersion(plan=plan, number=last + 1, status=VersionStatus.DRAFT, price=current.price)
    draft.full_clean()
    draft.save()
    _entitlements_copy(current, draft)
    return draft


def _draft_only(version: PlanVersion, doing: str) -> None:
    if not version.is_draft:
        raise Conflict(
            f"Version {version.number} of {version.plan.key!r} is {version.status}: only a "
            f"draft can be {doing}.",
            code="version_not_draft",
        )


@transaction.atomic
def plan_version_update(
    *, version: PlanVersion, price=None, entitlements: list[dict[str, Any]] | None = None
) -> PlanVersion:
    """Edits a draft: its price and, if given, its whole set of entitlements. A published or
    superseded version raises Conflict `version_not_draft`; a price in another currency than
    the plan's raises InvalidInput."""
    version = PlanVersion.objects.select_for_update().select_related("plan").get(pk=version.pk)
    _draft_only(version, "edited")
    if price is not None:
        if str(price.currency) != str(version.plan.price.currency):
            raise InvalidInput(
                f"{version.plan.key!r} is priced in {version.plan.price.currency}.",
                code="currency_mismatch",
                details={"price": [f"Use {version.plan.price.currency}."]},
            )
        version.price = price
        version.full_clean()
        version.save()
    if entitlements is not None:
        plan_set_entitlements(plan=version.plan, version=version, entitlements=entitlements)
    return version


@transaction.atomic
def plan_version_publish(*, version: PlanVersion, existing: str) -> int:
    """Publishes a draft: new subscribers get it, and the plan's price becomes its price. With
    `keep` the current subscribers stay on their versions (grandfathered); with `migrate` they
    all move to it now, their prices changing from their next period. Both leave history rows
    (the versions', and with `migrate` each subscription's). Locks the plan row. Answers how
    many subscribers moved. A non-draft raises Conflict `version_not_draft`."""
    if existing not in (EXISTING_KEEP, EXISTING_MIGRATE):
        raise InvalidInput(
            "Say what happens to current subscribers: keep or migrate.",
            details={"existing": ['"keep" or "migrate".']},
        )
    plan = Plan.objects.select_for_update().get(pk=version.plan_id)
    version = PlanVersion.objects.select_for_update().get(pk=version.pk)
    _draft_only(version, "published")
    current = selectors.plan_version_current(plan=plan)
    if current is not None:
        current.status = VersionStatus.SUPERSEDED
        current.save(update_fields=["status", "updated_at"])
    version.status = VersionStatus.PUBLISHED
    version.published_at = timezone.now()
    version.full_clean()
    version.save()
    if plan.price != version.price:
        plan.price = version.price
        plan.full_clean()
        plan.save()
    if existing == EXISTING_MIGRATE:
        return subscribers().migrate(version=version)
    return 0


@transaction.atomic
def plan_duplicate(*, version: PlanVersion, key: str, name: str) -> Plan:
    """A new plan, in draft, from a version of another: its price, interval, rank and
    entitlements, as its version 1. A key already taken raises ValidationError."""
    source = version.plan
    plan = plan_create(
        key=key,
        name=name,
        description=source.description,
        price=version.price,
        interval=source.interval,
        status=PlanStatus.DRAFT,
        public=source.public,
        rank=source.rank,
    )
    _entitlements_copy(version, selectors.plan_version_current(plan=plan))
    return plan


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
