"""Reads of the catalog for pages and API answers."""

from django.db.models import Count, Q, QuerySet

from .models import Feature, Plan, PlanEntitlement, PlanStatus, TopUpPack


def feature_get(*, key: str) -> Feature | None:
    return Feature.objects.filter(key=key).first()


def plan_list(*, public_only: bool = False) -> QuerySet[Plan]:
    plans = Plan.objects.annotate(entitlement_count=Count("entitlements"))
    if public_only:
        plans = plans.filter(status=PlanStatus.ACTIVE, public=True)
    return plans.order_by("rank", "name")


def plan_entitlements(*, plan: Plan) -> QuerySet[PlanEntitlement]:
    return plan.entitlements.select_related("feature").order_by("feature__name")


def topup_packs_available(*, plan: Plan | None, feature: Feature | None = None):
    """Active packs offered on `plan` (a pack without plans is offered on every plan)."""
    packs = TopUpPack.objects.filter(active=True).select_related("feature")
    if plan is not None:
        packs = packs.filter(Q(plans=plan) | Q(plans__isnull=True)).distinct()
    if feature is not None:
        packs = packs.filter(feature=feature)
    return packs.order_by("feature__name", "quantity")
