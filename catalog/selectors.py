"""Reads of the catalog for pages and API answers."""

from dataclasses import dataclass, field

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from moneyed.l10n import format_money

from core.text import money_text, quantity_text

from .models import (
    Enforcement,
    Feature,
    FeatureKind,
    Plan,
    PlanEntitlement,
    PlanInterval,
    PlanStatus,
    Reset,
    TopUpPack,
)


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


# --- the plan editor and the plan comparison (pages) ---------------------------------------

# The catalog imports nothing from customers; the editor still has to say how many subscribers
# a change reaches. It reads them through the reverse relations customers declares on Plan and
# Feature ("subscriptions", "overrides"), by name, without importing the customers app.
_CURRENT_SUBSCRIPTION = ["active", "past_due"]  # customers.models.SUBSCRIPTION_CURRENT


def plan_list_for_editor() -> QuerySet[Plan]:
    """Every plan with `entitlement_count` and `subscriber_count` (active subscriptions)."""
    entitlements = (
        PlanEntitlement.objects.filter(plan=OuterRef("pk"))
        .order_by()
        .values("plan")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Plan.objects.annotate(
        entitlement_count=Coalesce(Subquery(entitlements), 0),
        subscriber_count=Count(
            "subscriptions",
            filter=Q(subscriptions__status__in=_CURRENT_SUBSCRIPTION),
            distinct=True,
        ),
    ).order_by("rank", "name")


@dataclass(frozen=True)
class Reach:
    """Who a change to one of a plan's entitlements reaches, now: the plan's active subscribers
    (`subscribers`), of whom `overridden` keep their own terms for that feature."""

    subscribers: int
    overridden: int = 0

    @property
    def affected(self) -> int:
        return self.subscribers - self.overridden


def plan_change_reach(*, plan: Plan, feature: Feature | None = None) -> Reach:
    """How many active subscribers a change to `plan` (to its `feature`) applies to at once."""
    subscriptions = plan.subscriptions.filter(status__in=_CURRENT_SUBSCRIPTION)
    total = subscriptions.count()
    if feature is None or total == 0:
        return Reach(subscribers=total)
    now = timezone.now()
    overridden = (
        subscriptions.filter(
            Q(customer__overrides__feature=feature),
            Q(customer__overrides__starts_at__isnull=True)
            | Q(customer__overrides__starts_at__lte=now),
            Q(customer__overrides__ends_at__isnull=True) | Q(customer__overrides__ends_at__gt=now),
        )
        .values("customer")
        .distinct()
        .count()
    )
    return Reach(subscribers=total, overridden=overridden)


def features_addable(*, plan: Plan) -> QuerySet[Feature]:
    """Features the plan does not include yet, by name."""
    return Feature.objects.exclude(plan_entitlements__plan=plan).order_by("name")


def plan_is_upgrade(current: Plan, plan: Plan) -> bool:
    """Whether moving from `current` to `plan` is an upgrade: a higher rank (DESIGN.md). An
    upgrade applies at once with proration; any other change waits for the period end."""
    return plan.rank > current.rank


def price_text(plan: Plan) -> str:
    amount = format_money(plan.price, locale="en_US")
    return f"{amount} / {'year' if plan.interval == PlanInterval.YEAR else 'month'}"


_RESET_WORDS = {
    Reset.MONTH: "a month",
    Reset.WEEK: "a week",
    Reset.DAY: "a day",
    Reset.NEVER: "in total",
}


def _per(reset: str, interval: str) -> str:
    if reset == Reset.BILLING_PERIOD:
        return "a year" if interval == PlanInterval.YEAR else "a month"
    return _RESET_WORDS.get(reset, "")


def entitlement_summary(entitlement, *, interval: str = PlanInterval.MONTH) -> str:
    """What an entitlement gives in a few words, as a customer reads it: `100 GB a month`,
    `Unlimited`, `Included`, `priority`. Works for plan entitlements and overrides alike."""
    feature = entitlement.feature
    if feature.kind == FeatureKind.BOOLEAN:
        return "Included" if entitlement.enabled else "Not included"
    if feature.kind == FeatureKind.CONFIG:
        return entitlement.value
    if entitlement.unlimited:
        return f"Unlimited {feature.unit}".strip()
    text = f"{quantity_text(entitlement.limit, feature.unit)} {_per(entitlement.reset, interval)}"
    if feature.aggregation == "latest" and entitlement.reset in (Reset.BILLING_PERIOD, Reset.NEVER):
        text = quantity_text(entitlement.limit, feature.unit)  # a level: "100 GB", not "a month"
    return text.strip()


def entitlement_overage_text(entitlement) -> str:
    """`then $0.10 per GB` for a soft limit with a price; `` otherwise."""
    if entitlement.feature.kind != FeatureKind.METERED or entitlement.unlimited:
        return ""
    if entitlement.enforcement != Enforcement.SOFT:
        return ""
    if entitlement.overage_price is None:
        return "no hard cap"
    return f"then {money_text(entitlement.overage_price)} per {entitlement.feature.unit or 'unit'}"


@dataclass(frozen=True)
class ComparisonCell:
    plan_id: int
    text: str
    included: bool
    note: str = ""


@dataclass(frozen=True)
class ComparisonRow:
    feature: Feature
    cells: list[ComparisonCell] = field(default_factory=list)


_KIND_ORDER = {FeatureKind.METERED: 0, FeatureKind.CONFIG: 1, FeatureKind.BOOLEAN: 2}


def plan_comparison(plans) -> list[ComparisonRow]:
    """Rows of a side-by-side comparison of `plans` (in the order given): one per feature that
    any of them includes (allowances first, then settings, then gates, each by name), with one
    cell per plan as an end customer reads it. Two queries."""
    plans = list(plans)
    rows_by_plan: dict[int, dict[int, PlanEntitlement]] = {plan.pk: {} for plan in plans}
    features: dict[int, Feature] = {}
    for entitlement in PlanEntitlement.objects.filter(plan__in=plans).select_related("feature"):
        rows_by_plan[entitlement.plan_id][entitlement.feature_id] = entitlement
        features[entitlement.feature_id] = entitlement.feature
    ordered = sorted(features.values(), key=lambda f: (_KIND_ORDER.get(f.kind, 9), f.name))
    rows = []
    for feature in ordered:
        cells = []
        for plan in plans:
            entitlement = rows_by_plan[plan.pk].get(feature.pk)
            if entitlement is None:
                cells.append(ComparisonCell(plan_id=plan.pk, text="—", included=False))
                continue
            included = (
                entitlement.enabled if feature.kind == FeatureKind.BOOLEAN else True
            ) and not (
                feature.kind == FeatureKind.METERED
                and not entitlement.unlimited
                and not entitlement.limit
            )
            cells.append(
                ComparisonCell(
                    plan_id=plan.pk,
                    text=entitlement_summary(entitlement, interval=plan.interval),
                    included=included,
                    note=entitlement_overage_text(entitlement),
                )
            )
        rows.append(ComparisonRow(feature=feature, cells=cells))
    return rows
